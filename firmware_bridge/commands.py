"""CLI commands of the firmware bridge: `edgernn ports` and `edgernn emulate`.

(`edgernn run MODEL --port PORT` is the run command's; see live.py.)
"""

from __future__ import annotations

import argparse
import json
import sys

from edgernn.argtypes import nonempty_csv_list, positive_float
from edgernn.errors import InputError
from edgernn.runtime.liveview import printable

DRAIN_S = 2.0  # at the end, how long the reader gets to take the last frames


def add_commands(sub) -> None:
    p = sub.add_parser(
        "ports",
        help="list serial ports (with USB VID:PID and serial number)",
        description="List serial ports. A board can be named on `edgernn run --port` by its "
        "path or, to survive re-enumeration, as usb:VID:PID[:SERIAL].",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--all", action="store_true",
        help="also list port nodes with no device behind them (e.g. unused /dev/ttyS*)",
    )  # fmt: skip
    p.set_defaults(func=cmd_ports)

    p = sub.add_parser(
        "emulate",
        help="a sensor board on a pseudo-terminal, to try `run --port` without hardware",
        description="Open a pseudo-terminal, print its path, and stream a multi-channel "
        "sensor signal on it the way the edgernn firmware does (text or binary), with "
        "optional injected faults. Streaming starts when a reader opens the port.",
    )
    p.add_argument(
        "--rate", type=positive_float, default=100.0, metavar="HZ", help="samples/s (100)"
    )
    p.add_argument("--channels", type=int, default=3, metavar="N", help="channels (3)")
    p.add_argument("--mode", choices=["binary", "text"], default="binary")
    p.add_argument(
        "--like",
        metavar="MODEL.onnx",
        help="take channel count, names and signal scale from a model's metadata",
    )
    p.add_argument("--names", type=channel_names, help="comma-separated channel names")
    p.add_argument("--named-text", action="store_true", help="text mode: send name:value pairs")
    p.add_argument(
        "--samples-per-frame", type=int, default=1, metavar="S", help="binary: samples per frame"
    )
    p.add_argument(
        "--faults",
        metavar="SPEC",
        help="comma-separated: garbage=P, corrupt=P, drop=P, overrun=P (per-frame "
        "probabilities), reboot=T, disconnect=T (seconds in), down=S",
    )
    p.add_argument(
        "--duration", type=positive_float, metavar="S", help="stop after S seconds of signal"
    )
    p.add_argument("--link", metavar="PATH", help="also make PATH a symlink to the pty")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_emulate)


def channel_names(text: str) -> list[str]:
    names = nonempty_csv_list(text)
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise argparse.ArgumentTypeError(f"duplicate channel names: {', '.join(dups)}")
    return names


def cmd_ports(args) -> int:
    from edgernn.firmware_bridge.port import list_ports

    ports = list_ports(include_empty=args.all)
    if args.json:
        print(json.dumps([_port_dict(p) for p in ports], indent=2))
        return 0
    if not ports:
        hidden = "" if args.all else " (--all also lists port nodes with no device behind them)"
        print(f"no serial ports found{hidden}", file=sys.stderr)
        return 0
    rows = [("DEVICE", "USB ID", "SERIAL", "DESCRIPTION")]
    # USB descriptors are device-supplied text: escaped before they reach the terminal.
    rows += [
        tuple(printable(v) for v in (p.device, p.usb_id, p.serial_number or "", p.description))
        for p in ports
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    return 0


def _port_dict(p) -> dict:
    return {
        "device": p.device,
        "description": p.description,
        "vid": p.vid,
        "pid": p.pid,
        "serial_number": p.serial_number,
        "manufacturer": p.manufacturer,
        "location": p.location,
        "hwid": p.hwid,
    }


def emulator_from_args(args: argparse.Namespace):
    from edgernn.firmware_bridge.emulator import Emulator, Faults

    names = args.names
    channels, mean, std = args.channels, None, None
    if args.like:
        from edgernn.runtime.model import Model

        meta = Model(args.like).meta
        names, channels = list(meta.channels), meta.n_channels
        mean, std = meta.norm_mean, meta.norm_std
    elif names:
        channels = len(names)
    if not 1 <= channels <= 255:
        raise InputError(f"--channels must be in 1..255, got {channels}")
    if not args.rate > 0:
        raise InputError(f"--rate must be > 0, got {args.rate:g}")
    return Emulator(
        rate=args.rate,
        channels=channels,
        mode=args.mode,
        faults=Faults.parse(args.faults),
        samples_per_frame=args.samples_per_frame,
        seed=args.seed,
        names=names,
        link=args.link,
        named_text=args.named_text,
        mean=mean,
        std=std,
        duration=args.duration,
    )


def cmd_emulate(args) -> int:
    emu = emulator_from_args(args)
    print(emu.path, flush=True)  # the first line: what to pass to --port
    print(
        f"edgernn: emulating {len(emu.names)} channels ({', '.join(emu.names)}) at "
        f"{emu.rate:g} Hz, {emu.mode} mode, on {emu.path}; waiting for a reader "
        "(Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )
    unread = ""
    try:
        emu.run()
        # Closing the pty discards what the reader has not taken yet: let it catch up,
        # so "sent" means delivered (or say that it was not).
        if emu.truth.sent and not emu.drain(DRAIN_S):
            unread = f"; the reader had not read everything within {DRAIN_S:g} s of the end"
    except KeyboardInterrupt:
        pass
    finally:
        emu.close()
    t = emu.truth
    print(
        f"edgernn: emulator sent {t.sent} of {t.samples} samples ({t.frames} frames, "
        f"{t.hellos} hellos); faults: {t.garbage} garbage, {t.corrupted} corrupted, "
        f"{t.dropped} dropped, {t.overrun} device-dropped, {t.reboots} reboots, "
        f"{t.disconnects} disconnects ({t.lost_offline} samples lost offline){unread}",
        file=sys.stderr,
    )
    return 0
