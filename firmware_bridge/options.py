"""`edgernn run`'s options for live sources (--port, --mqtt), and the names they offer.

Kept apart from the modules that run those sources (live.py, mqtt_run.py, and the
decoder and port they import): building `edgernn run`'s parser must not import them,
since a CSV run needs none of them and a Pi pays each import at every start. The
choices and constants are defined here once; those modules take them from here.
"""

from __future__ import annotations

import argparse

from edgernn.argtypes import int_at_least, non_negative_int, positive_float, positive_int

MODES = ("auto", "text", "binary")  # wire formats (framing.py)
OVERFLOW_POLICIES = ("drop-oldest", "block")  # a full sample queue (port.py)
GAP_POLICIES = ("fill", "reset", "continue")  # missing samples (live.py, runtime/fleet.py)
PASSWORD_ENV = "EDGERNN_MQTT_PASSWORD"  # the broker password, never a flag (mqtt.py)


class PortsAction(argparse.Action):
    """--port, repeatable: the first stays `args.port` (one board, as ever); more go to
    `args.more_ports` and make the run a fleet of boards."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if getattr(namespace, self.dest, None) is None:
            setattr(namespace, self.dest, values)
        else:
            namespace.more_ports = (getattr(namespace, "more_ports", None) or []) + [values]


# -- arguments -------------------------------------------------------------------------
def add_serial_arguments(parser: argparse.ArgumentParser, source_group) -> None:
    """Add --port to `source_group` (mutually exclusive with --csv) and the live-run options."""
    source_group.add_argument(
        "--port",
        metavar="PORT",
        action=PortsAction,  # repeatable: several boards, one stream each, batched
        help="serial device (/dev/ttyACM0, COM3), pyserial URL (socket://host:port, "
        "rfc2217://host:port, loop://) or usb:VID:PID[:SERIAL]; repeat for several boards",
    )
    g = parser.add_argument_group("serial (--port)")
    g.add_argument("--baud", type=int, default=115200, help="baud rate (default 115200)")
    g.add_argument(
        "--mode", choices=MODES, default="auto", help="wire format (default: auto-detect)"
    )
    g.add_argument(
        "--no-reconnect",
        dest="reconnect",
        action="store_false",
        help="end the run (exit 0) when the port goes away instead of reopening it",
    )
    g.add_argument(
        "--reconnect-timeout",
        type=positive_float,
        metavar="S",
        help="give up (exit 1) if the port is not back within S seconds (default: never)",
    )
    g.add_argument(
        "--on-gap",
        choices=GAP_POLICIES,
        default="fill",
        help="missing samples: fill small gaps with forecasts and reset beyond (default), "
        "always reset the state, or continue as if nothing was missing",
    )
    g.add_argument(
        "--gap-fill",
        type=non_negative_int,
        default=4,
        metavar="N",
        help="largest gap filled with forecasts under --on-gap fill (default 4)",
    )
    g.add_argument(
        "--queue-size",
        type=non_negative_int,
        default=4096,
        metavar="N",
        help="samples buffered between reader and inference (default 4096)",
    )
    g.add_argument(
        "--on-overflow",
        choices=OVERFLOW_POLICIES,
        default="drop-oldest",
        help="when inference falls behind a full queue: drop the oldest samples "
        "(counted, handled as a gap; default) or block the reader",
    )
    g.add_argument(
        "--live", action="store_true",
        help="a live terminal view on stderr (rate, latency, score per channel, alerts) "
        "instead of status lines",
    )  # fmt: skip
    g.add_argument("--state-file", metavar="PATH", help="save/resume the stream state (JSON) here")
    g.add_argument(
        "--state-interval",
        type=positive_float,
        default=5.0,
        metavar="S",
        help="seconds between state saves (default 5)",
    )
    g.add_argument(
        "--status-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between status lines on stderr; 0 turns them off (default 5)",
    )
    g.add_argument(
        "--summary-json", metavar="PATH", help="also write the end-of-run counters as JSON"
    )
    g.add_argument(
        "--realtime",
        action="store_true",
        help="ask for real-time scheduling (Linux SCHED_FIFO; needs root or CAP_SYS_NICE): "
        "keeps latency low when other programs load the CPU",
    )


# -- arguments -------------------------------------------------------------------------
def add_mqtt_arguments(parser: argparse.ArgumentParser, source_group) -> None:
    source_group.add_argument(
        "--mqtt", metavar="URL",
        help="subscribe to a broker: mqtt://[USER@]HOST[:PORT]/TOPIC (mqtts:// for TLS); "
        "wildcards name the devices (sensors/+/data: one stream per device; write # as %%23)",
    )  # fmt: skip
    g = parser.add_argument_group("MQTT (--mqtt, --publish)")
    g.add_argument(
        "--publish", metavar="URL",
        help="publish forecasts, alerts and availability to this broker (default with "
        "--mqtt: the broker it subscribes to); with --port: the board-to-broker bridge",
    )  # fmt: skip
    g.add_argument("--no-publish", action="store_true",
                   help="--mqtt: publish nothing (records only to -o)")  # fmt: skip
    g.add_argument("--publish-topic", default="edgernn/{device}/forecast", metavar="TEMPLATE",
                   help="forecast topic; {device} is the device name (default %(default)s)")
    g.add_argument("--alert-topic", default="edgernn/{device}/alert", metavar="TEMPLATE",
                   help="alert events, QoS 1 (default %(default)s); its /state subtopic "
                   "holds ON/OFF, retained")  # fmt: skip
    g.add_argument("--availability-topic", metavar="TOPIC",
                   help="retained online/offline with a last will (default edgernn/CLIENT_ID/"
                   "availability)")  # fmt: skip
    g.add_argument("--publish-every", type=positive_int, default=1, metavar="N",
                   help="publish every N-th forecast of each device (alerts always; default 1)")
    g.add_argument("--ha-discovery", nargs="?", const="homeassistant", metavar="PREFIX",
                   help="Home Assistant MQTT discovery: a score sensor and an alert binary "
                   "sensor per device (prefix default homeassistant)")  # fmt: skip
    g.add_argument("--device-name", metavar="NAME",
                   help="--port --publish: the board's name in topics (default: the port's)")
    g.add_argument("--mqtt-username", metavar="USER")
    g.add_argument("--mqtt-password-file", metavar="FILE",
                   help=f"the password, first line of FILE (or ${PASSWORD_ENV}; never a flag)")
    g.add_argument("--mqtt-password", type=_refuse_password, metavar="-",
                   help="refused: a password on the command line shows in `ps` and shell "
                   "history")  # fmt: skip
    g.add_argument("--mqtt-ca", metavar="FILE", help="CA certificate(s) to verify the broker")
    g.add_argument("--mqtt-cert", metavar="FILE", help="client certificate (with --mqtt-key)")
    g.add_argument("--mqtt-key", metavar="FILE", help="client certificate's private key")
    g.add_argument("--mqtt-client-id", metavar="ID",
                   help="MQTT client id (default edgernn-HOST-HASH: stable, unique per source)")
    g.add_argument("--mqtt-qos", type=int, choices=[0, 1], default=0,
                   help="QoS of the subscription and of forecasts (default 0)")
    g.add_argument("--mqtt-buffer", type=int_at_least(1), default=10000, metavar="N",
                   help="outgoing messages kept while the broker is away (default 10000)")
    g.add_argument("--max-devices", type=positive_int, default=1024, metavar="N",
                   help="devices served at most; others are ignored and reported (default 1024)")
    g.add_argument("--metrics-port", type=non_negative_int, metavar="PORT",
                   help="serve Prometheus metrics on this port (extra: metrics)")
    g.add_argument("--metrics-addr", default="127.0.0.1", metavar="ADDR",
                   help="address for --metrics-port (default 127.0.0.1; 0.0.0.0 for all)")


def _refuse_password(text: str) -> str:
    raise argparse.ArgumentTypeError(
        f"not on the command line (it shows in `ps`): put it in a file for "
        f"--mqtt-password-file or in ${PASSWORD_ENV}"
    )
