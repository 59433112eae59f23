"""Raspberry Pi OS userlands for real: the wheel installed and run in Debian bookworm
arm64 and armhf chroots under qemu-user, the way the README tells a Pi user to.

    sudo .venv/bin/python benchmarks/pi_check.py            # or: sudo make pi-check
    sudo .venv/bin/python benchmarks/pi_check.py --fresh    # rebuild the cached userlands
    .venv/bin/python benchmarks/pi_check.py --only armhf --work DIR

For each userland (arm64: 64-bit Pi OS on a Pi 3/4/5/Zero 2; armhf: 32-bit, ARMv7):
bootstraps it from Debian's packages with mmdebstrap (cached under
~/.cache/edgernn-pi-check, or --work DIR), checks the apt packages the README names,
makes a venv and pip-installs the runtime-only wheel built from this checkout (arm64:
numpy, onnxruntime and pyserial from PyPI; armhf: `--system-site-packages` over Debian's
python3-numpy and python3-serial, `pip install --no-deps`), then runs `edgernn info`,
`edgernn run --csv` on a float and an int8 (dynamic) model with every backend and
compares the forecasts with the x86 run of the same file (|a-b| <= 1e-5 + 1e-5|b|), a
live `edgernn run --port` over a pty fed by `edgernn emulate` inside the chroot, a
state-file resume (the resumed forecasts equal an unbroken replay on x86), a live run
with the detector and the online head on a recorded binary wire, scored in C by the live
loop and again on the Python path (the same JSON lines, byte for byte), and the C
step compiled by the userland's own gcc (an ELF of that architecture, its NEON
instructions counted with the userland's objdump). It also shows what `gcc
-march=native` resolves to on each Pi's CPU (a /proc/cpuinfo of that CPU bind-mounted
into the chroot; qemu-user 7.2 passes /proc/cpuinfo through for ARM guests) and, where
qemu's TCG plugin API is available, counts guest instructions per C step.

Nothing here times anything as Pi speed: qemu is an emulator. Timings in the table
are how long each step took under emulation on this machine.

Needs root (chroot, mounts, binfmt_misc) and: mmdebstrap, qemu-user-static (for the
binfmt handlers; qemu-user for the instruction counts), gcc; installed with apt-get
when missing. Foreign binaries run through binfmt_misc handlers with the F flag:
when none is registered this script mounts binfmt_misc if needed and registers
`edgernn-qemu-aarch64` / `edgernn-qemu-arm` itself (from qemu-user-static's
/usr/lib/binfmt.d files), and removes them and every mount it made on exit.
Writes benchmarks/results/pi_check.json. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "pi_check.json"
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
TOL = 1e-5
HOST_APT = {"mmdebstrap": "mmdebstrap", "qemu-aarch64-static": "qemu-user-static",
            "qemu-arm-static": "qemu-user-static", "qemu-aarch64": "qemu-user",
            "gcc": "gcc"}  # fmt: skip
VENV = "/opt/edgernn/venv"
# the models run everywhere: float32, float16 weights, int8 (dynamic: onnxruntime's ops)
MODELS = [("float", None), ("fp16", "fp16"), ("int8", "dynamic")]

USERLANDS = {
    "arm64": {
        "qemu": "aarch64",
        "elf_machine": 0xB7,
        # README, 64-bit Pi OS: python3-venv, gcc (the C step compiles at load),
        # python3-dev (its one-call fast path)
        "apt": ["python3", "python3-venv", "gcc", "python3-dev", "libc6-dev", "ca-certificates"],
        "venv": f"python3 -m venv {VENV}",
        "pip": f"{VENV}/bin/pip install /pi-check/WHEEL",
        "backends": ["auto", "c", "numpy", "onnxruntime"],
        "neon": r"fmla\s+v[0-9]+\.4s",
    },
    "armhf": {
        "qemu": "arm",
        "elf_machine": 0x28,
        # README, 32-bit Pi OS: Debian's numpy and pyserial (no armv7 wheels on PyPI)
        "apt": [
            "python3",
            "python3-venv",
            "python3-numpy",
            "python3-serial",
            "gcc",
            "python3-dev",
            "libc6-dev",
            "ca-certificates",
        ],  # fmt: skip
        "venv": f"python3 -m venv --system-site-packages {VENV}",
        "pip": f"{VENV}/bin/pip install --no-deps /pi-check/WHEEL",
        "backends": ["auto", "c", "numpy", "onnxruntime"],
        "neon": r"vfma\.f32\s+q[0-9]+",
    },
}

# /proc/cpuinfo of each Pi's CPU (as its kernel prints it: 64-bit kernel for arm64, the
# 32-bit (v7l) kernel for armhf), to see what `gcc -march=native` picks there.
_A64 = "fp asimd evtstrm crc32 cpuid"
_A32 = "half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32"
BOARDS = {
    "arm64": [("Pi 3 / Zero 2 (Cortex-A53)", "0xd03", _A64, 8),
              ("Pi 4 (Cortex-A72)", "0xd08", _A64, 8),
              ("Pi 5 (Cortex-A76)", "0xd0b", _A64 + " atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp", 8)],  # noqa: E501
    "armhf": [("Pi 2 (Cortex-A7)", "0xc07", _A32.replace(" crc32", ""), 7),
              ("Pi 3 / Zero 2 (Cortex-A53)", "0xd03", _A32, 7),
              ("Pi 4 (Cortex-A72)", "0xd08", _A32, 7)],
}  # fmt: skip


def cpuinfo(part: str, features: str, arch: int, bits: int) -> str:
    name = "" if bits == 64 else "model name\t: ARMv7 Processor rev 4 (v7l)\n"
    core = (f"processor\t: {{i}}\n{name}BogoMIPS\t: 108.00\nFeatures\t: {features}\n"
            f"CPU implementer\t: 0x41\nCPU architecture: {arch}\nCPU variant\t: 0x0\n"
            f"CPU part\t: {part}\nCPU revision\t: 4\n\n")  # fmt: skip
    return "".join(core.format(i=i) for i in range(4)) + "Hardware\t: BCM2835\n"


# ------------------------------------------------------------------------------------
# host plumbing: prerequisites, binfmt, mounts (all undone on exit)

_cleanup: list = []  # (description, callable), undone last-first


def undo_all() -> None:
    while _cleanup:
        what, fn = _cleanup.pop()
        try:
            fn()
        except Exception as e:  # keep undoing the rest
            print(f"pi-check: cleanup of {what} failed: {e}", file=sys.stderr)


def sh(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def need_root() -> None:
    if os.geteuid() != 0:
        sys.exit("pi-check: needs root (chroot, mounts, binfmt_misc): run it with sudo, e.g. "
                 "`sudo make pi-check`. It also needs mmdebstrap, qemu-user-static, qemu-user "
                 "and gcc (installed with apt-get when missing).")  # fmt: skip


def prerequisites() -> None:
    missing = sorted({pkg for tool, pkg in HOST_APT.items() if shutil.which(tool) is None})
    if not missing:
        return
    print(f"pi-check: installing {' '.join(missing)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *missing]):
        p = sh(cmd, env=env)
        if p.returncode:
            sys.exit(f"pi-check: {' '.join(cmd)} failed:\n{p.stderr[-2000:]}")


BINFMT = Path("/proc/sys/fs/binfmt_misc")


def binfmt(qemu: str) -> str:
    """Make sure ELF binaries of `qemu`'s architecture run through a binfmt handler with
    the F flag (the interpreter opened at registration, so it works inside a chroot)."""
    if not (BINFMT / "register").exists():
        p = sh(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
        if p.returncode:
            sys.exit(f"pi-check: cannot mount binfmt_misc: {p.stderr.strip()}")
        print("pi-check: mounted binfmt_misc (unmounted again on exit)")
        _cleanup.append(("binfmt_misc mount", lambda: sh(["umount", str(BINFMT)])))
    conf = Path(f"/usr/lib/binfmt.d/qemu-{qemu}.conf").read_text().strip()
    magic = conf.split(":")[4].replace("\\x", "")
    for entry in BINFMT.iterdir():
        if entry.name in ("register", "status"):
            continue
        try:
            text = entry.read_text()
        except OSError:
            continue
        flags = re.search(r"^flags: (\w*)", text, re.M)
        if ("enabled" in text and f"magic {magic}" in text and flags
                and "F" in flags.group(1)):  # fmt: skip
            return f"binfmt handler {entry.name} (already registered, F flag)"
    name = f"edgernn-qemu-{qemu}"
    line = conf.replace(f":qemu-{qemu}:", f":{name}:", 1)
    if (BINFMT / name).exists():  # left by a killed run: replace it
        (BINFMT / name).write_text("-1")
    (BINFMT / "register").write_text(line)
    _cleanup.append((f"binfmt {name}", lambda: (BINFMT / name).write_text("-1")))
    return f"registered binfmt handler {name} (F flag; removed on exit)"


def mount(args: list[str], target: Path) -> None:
    p = sh(["mount", *args, str(target)])
    if p.returncode:
        raise RuntimeError(f"mount {' '.join(args)} {target}: {p.stderr.strip()}")

    def umount():
        if sh(["umount", str(target)]).returncode:
            sh(["umount", "-l", str(target)])

    _cleanup.append((f"mount {target}", umount))


def unmount_last(target: Path) -> None:
    for i in range(len(_cleanup) - 1, -1, -1):
        if _cleanup[i][0] == f"mount {target}":
            _cleanup.pop(i)[1]()
            return


# ------------------------------------------------------------------------------------
# the userlands


def rootfs(work: Path, arch: str, fresh: bool) -> tuple[Path, str]:
    spec = USERLANDS[arch]
    root = work / f"{SUITE}-{arch}"
    stamp = {"suite": SUITE, "mirror": MIRROR, "arch": arch, "packages": spec["apt"]}
    stamp_file = work / f"{SUITE}-{arch}.json"
    if root.is_dir() and not fresh and stamp_file.exists():
        if json.loads(stamp_file.read_text()) == stamp:
            return root, "cached"
    tmp = work / f"{SUITE}-{arch}.tmp"
    for d in (root, tmp):
        if d.exists():
            shutil.rmtree(d)
    cmd = ["mmdebstrap", "--variant=apt", f"--arch={arch}", f"--include={','.join(spec['apt'])}",
           SUITE, str(tmp), MIRROR]  # fmt: skip
    print(f"pi-check: {' '.join(cmd)}", flush=True)
    p = sh(cmd)
    if p.returncode:
        raise RuntimeError(f"mmdebstrap failed: {p.stderr[-1500:]}")
    tmp.rename(root)
    stamp_file.write_text(json.dumps(stamp))
    return root, "built"


class Chroot:
    def __init__(self, root: Path):
        self.root = root

    def __enter__(self):
        r = self.root
        mount(["-t", "proc", "proc"], r / "proc")
        # No /sys: the host's (x86) CPU topology there makes onnxruntime's cpuinfo crash
        # under qemu-aarch64 (SIGSEGV on load); without it onnxruntime warns and runs.
        mount(["--bind", "/dev"], r / "dev")
        mount(["--bind", "/dev/pts"], r / "dev/pts")
        resolv = r / "etc/resolv.conf"
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        shutil.copy("/etc/resolv.conf", resolv)  # pip needs DNS
        return self

    def __exit__(self, *exc):
        for sub in ("dev/pts", "dev", "proc"):
            unmount_last(self.root / sub)

    def run(self, cmd: str, timeout: float = 900, env: dict | None = None):
        """(rc, stdout, stderr, seconds) of `sh -c cmd` inside the userland."""
        base = {"HOME": "/root", "LANG": "C.UTF-8", "PATH": f"{VENV}/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_DEFAULT_TIMEOUT": "180",
                "PIP_CERT": "/pi-check/ca-certificates.crt", "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip # noqa: E501
        envs = [f"{k}={v}" for k, v in {**base, **(env or {})}.items()]
        t0 = time.monotonic()
        try:
            p = sh(["chroot", str(self.root), "/usr/bin/env", "-i", *envs, "sh", "-c", cmd],
                   timeout=timeout)  # fmt: skip
            return p.returncode, p.stdout, p.stderr, time.monotonic() - t0
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            return 124, out, f"timed out after {timeout:.0f} s", time.monotonic() - t0


# ------------------------------------------------------------------------------------
# x86 side: models, input, reference outputs, the wheel


def host_edgernn(*args: str) -> subprocess.CompletedProcess:
    return sh([sys.executable, "-m", "edgernn", *args], cwd=REPO)


def prepare(stage: Path) -> dict:
    """The wheel, a float and an int8 model, an input CSV and the x86 outputs."""
    import torch

    from edgernn.export.onnx_export import export_onnx
    from edgernn.firmware_bridge.emulator import Emulator
    from edgernn.train.model import Forecaster, ModelConfig

    if stage.exists():
        shutil.rmtree(stage)
    (stage / "ref").mkdir(parents=True)
    # Built from a copy of the checkout: an in-tree build leaves build/ behind, whose
    # stale files a later in-tree build would ship (as tests/test_packaging.py does).
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "*.egg-info", "__pycache__"))  # fmt: skip
        p = sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "-q", "-w", str(stage), str(src)])  # fmt: skip
    wheels = list(stage.glob("edgernn-*.whl"))
    if p.returncode or len(wheels) != 1:
        raise RuntimeError(f"building the wheel failed: {p.stderr[-1500:]}")
    torch.manual_seed(0)
    names = Emulator(channels=4, rate=1.0).names  # so `emulate --like` streams these
    net = Forecaster(ModelConfig(n_channels=4, cell="lstm", hidden=32, channels=names))
    net.set_normalisation(np.full(4, 30.0), np.full(4, 10.0))
    export_onnx(net, stage / "float.onnx")
    for name, mode in MODELS[1:]:
        q = host_edgernn("quantize", str(stage / "float.onnx"), "-o", str(stage / f"{name}.onnx"),
                         "--mode", mode)  # fmt: skip
        if q.returncode:
            raise RuntimeError(f"edgernn quantize --mode {mode} failed: {q.stderr[-800:]}")
    rng = np.random.default_rng(0)
    t = np.arange(2000)[:, None]
    x = 30 + 10 * np.sin(t / 25 + np.arange(4)) + rng.normal(0, 1, (2000, 4))
    with open(stage / "in.csv", "w") as f:
        f.write(",".join(names) + "\n")
        f.writelines(",".join(f"{v:.4f}" for v in row) + "\n" for row in x)
    write_detector_wire(stage / "wire.bin", x[:DETECTOR_SAMPLES], names)
    refs = {}
    for m, _ in MODELS:
        out = stage / "ref" / f"{m}.csv"
        r = host_edgernn("run", str(stage / f"{m}.onnx"), "--csv", str(stage / "in.csv"),
                         "-o", str(out))  # fmt: skip
        if r.returncode:
            raise RuntimeError(f"x86 run of {m} failed: {r.stderr[-800:]}")
        from edgernn.runtime import Model

        refs[m] = {"backend": Model(str(stage / f"{m}.onnx")).backend, "path": out}
    shutil.copy(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt",
                stage / "ca-certificates.crt")  # fmt: skip
    return {"wheel": wheels[0].name, "names": names, "refs": refs}


DETECTOR_SAMPLES = 700  # the detector run's binary wire: a hello, then these samples


def write_detector_wire(path: Path, x: np.ndarray, names: list[str]) -> None:
    """A device's binary stream of `x` at 100 Hz, one sample a frame, with three spikes
    for the detector to flag (its events go through Python, the rest is scored in C)."""
    from edgernn.firmware_bridge import protocol as P

    x = x.astype(np.float32)
    for row in (450, 520, 600):
        x[row, row % x.shape[1]] += 80.0
    frames = [P.encode_hello(1, 100.0, names)]
    frames += [P.encode_data(seq, seq * 10_000, x[seq]) for seq in range(len(x))]
    path.write_bytes(b"".join(frames))


def forecast_columns(path: Path) -> np.ndarray:
    with open(path) as f:
        header = f.readline().strip().split(",")
    cols = [i for i, h in enumerate(header) if h.endswith("_forecast")]
    return np.loadtxt(path, delimiter=",", skiprows=1, usecols=cols, ndmin=2)


def compare(path: Path, ref: Path) -> tuple[bool, str]:
    a, b = forecast_columns(path), forecast_columns(ref)
    if a.shape != b.shape:
        return False, f"shape {a.shape} vs x86 {b.shape}"
    err = np.abs(a - b)
    worst = float(np.max(err / (1 + np.abs(b))))
    ok = bool(np.all(err <= TOL + TOL * np.abs(b)))
    return ok, f"{a.shape[0]} rows, max |diff| {err.max():.2e} ({worst:.1e} scaled) vs x86"


def elf_machine(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(20)
    return int.from_bytes(head[18:20], "little") if head[:4] == b"\x7fELF" else -1


# the live serial part, run by the userland's python (stdlib only)
PTY_SCRIPT = r"""
import json, os, signal, subprocess, sys, time
M, W = "/pi-check/float.onnx", "/pi-check/out"
def wait_lines(path, n, proc, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path) and open(path).read().count("\n") >= n:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False
def start(out, summary):
    return subprocess.Popen(["edgernn", "run", M, "--port", port, "--no-detector",
        "--state-file", W + "/state.json", "--state-interval", "0.5", "--status-interval", "0",
        "--summary-json", summary, "-o", out], stderr=subprocess.PIPE, text=True)
emu = subprocess.Popen(["edgernn", "emulate", "--like", M, "--rate", "100", "--seed", "1"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
port = emu.stdout.readline().strip()
res = {"port": port}
try:
    t0 = time.monotonic()
    run1 = start(W + "/pty1.jsonl", W + "/s1.json")
    res["lines1"] = wait_lines(W + "/pty1.jsonl", 300, run1)
    res["first_forecast_s"] = time.monotonic() - t0
    run1.send_signal(signal.SIGTERM)
    res["rc1"], res["err1"] = run1.wait(60), run1.stderr.read()
    run2 = start(W + "/pty2.jsonl", W + "/s2.json")
    res["lines2"] = wait_lines(W + "/pty2.jsonl", 200, run2)
    run2.send_signal(signal.SIGINT)
    res["rc2"], res["err2"] = run2.wait(60), run2.stderr.read()
finally:
    emu.send_signal(signal.SIGINT)
    try:
        emu.wait(30)
    except subprocess.TimeoutExpired:
        emu.kill()
print(json.dumps(res))
"""


# the live serial run with the detector and the online head (scored in C by the live
# loop, runtime/livescore.py) against the same run on the Python path, same bytes in
DETECTOR_SCRIPT = r"""
import json, os, select, subprocess, time, tty
from edgernn.firmware_bridge.emulator import wait_until_read
M, W = "/pi-check/float.onnx", "/pi-check/out"
frames = open("/pi-check/wire.bin", "rb").read().split(b"\0")[:-1]
from edgernn.runtime.adapt import _head_library
from edgernn.runtime.cstep import fastcall_module
module = fastcall_module()  # what the C path needs: the extension, the compiled kernel
res = {"c_scorer": bool(module is not None and hasattr(module, "scorer_new")
                        and _head_library() is not None)}
for tag, extra in (("c", {}), ("python", {"EDGERNN_NO_FAST_LIVE": "1"})):
    master, slave = os.openpty()
    tty.setraw(slave)
    port = os.ttyname(slave)
    os.close(slave)
    run = subprocess.Popen(["edgernn", "run", M, "--port", port, "--no-reconnect",
        "--alarm-every", "200", "--status-interval", "0", "--summary-json",
        W + "/det-" + tag + ".json", "-o", W + "/det-" + tag + ".jsonl"],
        env={**os.environ, **extra}, stderr=subprocess.PIPE, text=True)
    poller = select.poll()
    poller.register(master, select.POLLOUT)
    end = time.monotonic() + 300
    while poller.poll(20)[0][1] & select.POLLHUP and time.monotonic() < end:
        pass  # until the run opens the port
    time.sleep(1.0)  # pyserial flushes its input just after opening (slowly, under qemu)
    for frame in frames:
        os.write(master, frame + b"\0")
        time.sleep(0.002)
    wait_until_read(port, timeout=120)
    os.close(master)  # an unplug: the run ends (--no-reconnect)
    res["rc_" + tag] = run.wait(300)
    res["err_" + tag] = run.stderr.read()[-400:]
print(json.dumps(res))
"""


def replay(model_path: Path, records: list[dict], names: list[str]) -> np.ndarray:
    """Forecasts an unbroken Monitor on x86 makes from the recorded inputs (resetting and
    filling where the records say the live run did)."""
    from edgernn.runtime.model import Model
    from edgernn.runtime.monitor import Monitor

    mon = Monitor(Model(str(model_path)))
    out = []
    for r in records:
        if r.get("reset"):
            mon.reset()
        elif r.get("gap"):
            for _ in range(r["gap"]):
                mon.process(mon.last_forecast, imputed=True)
        out.append(mon.process(np.array([r[c] for c in names], np.float32))["forecast"])
    return np.array(out)


# ------------------------------------------------------------------------------------
# the checks


class Table:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, userland, step, status, seconds, detail):
        row = {"userland": userland, "step": step, "status": status,
               "seconds": round(seconds, 1), "detail": detail}  # fmt: skip
        self.rows.append(row)
        print(f"  {status:<5} {step:<34} {seconds:7.1f} s  {detail}", flush=True)


def one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "").strip()[:200]


def check_userland(arch: str, root: Path, prep: dict, stage: Path, table: Table) -> None:
    spec = USERLANDS[arch]
    dest = root / "pi-check"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(stage, dest)
    (dest / "out").mkdir()
    u = arch
    with Chroot(root) as ch:
        # apt: what the README tells a Pi user to install
        pk = " ".join(spec["apt"])
        rc, out, err, s = ch.run(
            f"dpkg-query -W {pk} >/dev/null 2>&1 || (apt-get update -q && "
            f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {pk}) >/dev/null && "
            "python3 --version && gcc --version | head -1 && "
            "dpkg-query -W -f='${Package} ${Version}\\n' python3-numpy python3-serial 2>/dev/null"
            "; true"
        )  # fmt: skip
        table.add(
            u,
            "apt packages",
            "PASS" if rc == 0 else "FAIL",
            s,
            "; ".join(out.split("\n")[:4]).strip("; ") if rc == 0 else one_line(err),
        )
        # venv + wheel
        pip = spec["pip"].replace("WHEEL", prep["wheel"])
        rc, out, err, s = ch.run(f"rm -rf /opt/edgernn && {spec['venv']} && {pip} -q && "
                                 f"{VENV}/bin/pip list 2>/dev/null | grep -iE "
                                 "'^(edgernn|numpy|onnxruntime|pyserial) '")  # fmt: skip
        versions = ", ".join(" ".join(ln.split()) for ln in out.splitlines())
        how = "pip install --no-deps, Debian's numpy: " if "--no-deps" in pip else "PyPI: "
        table.add(u, "venv + pip install the wheel", "PASS" if rc == 0 else "FAIL", s,
                  how + versions if rc == 0 else one_line(err))  # fmt: skip
        if rc:
            return
        # import and info
        rc, out, err, s = ch.run(
            "python -c 'import importlib.util as u, edgernn.runtime, edgernn.firmware_bridge; "
            "print(\"onnxruntime\", \"installed\" if u.find_spec(\"onnxruntime\") else "
            "\"absent\")' && edgernn --version"
        )  # fmt: skip
        table.add(
            u,
            "import edgernn.runtime, --version",
            "PASS" if rc == 0 else "FAIL",
            s,
            "; ".join(out.split("\n")).strip("; ") if rc == 0 else one_line(err),
        )
        for m, _ in MODELS:
            rc, out, err, s = ch.run(f"edgernn info /pi-check/{m}.onnx")
            lines = [" ".join(ln.split()) for ln in out.splitlines()
                     if ln.split()[:1] in (["cell"], ["quantized"])]  # fmt: skip
            status = ("PASS" if rc == 0 else "NO" if rc == 1
                      and one_line(err).startswith("edgernn: error:") else "FAIL")  # fmt: skip
            table.add(
                u,
                f"edgernn info {m}",
                status,
                s,
                "; ".join(lines) if rc == 0 else one_line(err).replace("/pi-check/", ""),
            )
        # the systemd unit, environment file and logrotate rule shipped in the wheel
        rc, out, err, s = ch.run("rm -rf /tmp/deploy && edgernn deploy --to /tmp/deploy >/dev/null"
                                 " && ls /tmp/deploy")  # fmt: skip
        table.add(u, "edgernn deploy (systemd unit)", "PASS" if rc == 0 else "FAIL", s,
                  " ".join(out.split()) if rc == 0 else one_line(err))  # fmt: skip
        # what auto picks
        for m, _ in MODELS:
            rc, out, err, s = ch.run(
                "python -c 'import sys; from edgernn.runtime import Model; "
                f"m = Model(\"/pi-check/{m}.onnx\"); print(m.backend, \"|\", m.fallback_reason)'"
            )  # fmt: skip
            table.add(u, f"--backend auto picks ({m})", "INFO" if rc == 0 else "NO", s,
                      out.strip() if rc == 0 else one_line(err))  # fmt: skip
        # run --csv, every backend, against x86
        for m, _ in MODELS:
            for b in spec["backends"]:
                out_file = f"/pi-check/out/{m}-{b}.csv"
                rc, out, err, s = ch.run(f"edgernn run /pi-check/{m}.onnx --csv /pi-check/in.csv "
                                         f"--backend {b} -o {out_file}")  # fmt: skip
                name = f"run --csv {m} --backend {b}"
                if rc == 0:
                    ok, detail = compare(root / out_file.lstrip("/"), prep["refs"][m]["path"])
                    # (its µs/sample is qemu's, not a Pi's: left out)
                    rows = re.sub(r" \([\d.]+ us/sample\)", "", one_line(err))
                    detail += f" ({prep['refs'][m]['backend']}); {rows}"
                    table.add(u, name, "PASS" if ok else "FAIL", s, detail)
                elif rc == 1 and one_line(err).startswith("edgernn: error:"):
                    # a clean one-line refusal: this backend cannot run this model here
                    table.add(u, name, "NO", s, one_line(err).replace("/pi-check/", ""))
                else:
                    table.add(u, name, "FAIL", s, f"rc {rc}: {one_line(err)}")
        # the C step compiled by this userland's gcc, in a fresh cache
        rc, out, err, s = ch.run(
            "rm -rf /tmp/cc && EDGERNN_CACHE_DIR=/tmp/cc edgernn run /pi-check/float.onnx "
            "--csv /pi-check/in.csv --backend c -o /pi-check/out/c-fresh.csv && "
            # the step library among the cache's (the fast-call extension, the detector
            # kernel are there too): the one that defines edgernn_step
            "rm -f /pi-check/out/step.so && for f in /tmp/cc/cstep/step_*.so; do "
            "nm -D \"$f\" | grep -q ' T edgernn_step$' && cp \"$f\" /pi-check/out/step.so; "
            "done; test -f /pi-check/out/step.so && "
            "objdump -d /pi-check/out/step.so > /pi-check/out/step.dis && gcc --version | head -1"
        )  # fmt: skip
        if rc == 0:
            lib = root / "pi-check/out/step.so"
            neon = len(re.findall(spec["neon"], (root / "pi-check/out/step.dis").read_text()))
            machine = elf_machine(lib)
            ok = machine == spec["elf_machine"]
            table.add(u, "C step compiled by its gcc", "PASS" if ok else "FAIL", s,
                      f"{out.splitlines()[-1]}: {lib.stat().st_size} B ELF e_machine "
                      f"0x{machine:x}, {neon} NEON FMA ({spec['neon']}); qemu shows gcc no ARM "
                      "CPU in /proc/cpuinfo, so -march=native is gcc's default here (rows "
                      "below: each Pi's CPU)")  # fmt: skip
        else:
            table.add(u, "C step compiled by its gcc", "FAIL", s, one_line(err))
        # -march=native on each Pi's CPU (a /proc/cpuinfo of that CPU bind-mounted in)
        for board, part, features, archv in BOARDS[arch]:
            fake = root / "pi-check" / f"cpuinfo-{part}"
            fake.write_text(cpuinfo(part, features, archv, 64 if arch == "arm64" else 32))
            mount(["--bind", str(fake)], root / "proc/cpuinfo")
            try:
                rc, out, err, s = ch.run(
                    "echo march=$(gcc -march=native -### -x c -c /dev/null -o /dev/null 2>&1 | "
                    "grep -oE -- '\"-m(arch|cpu)=[^\"]*' | grep -v native | tr -d '\"' | head -1); "
                    "echo neon=$(gcc -O3 -march=native -dM -E -x c /dev/null 2>/dev/null | "
                    "grep -c '__ARM_NEON '); "
                    "echo error=$(gcc -O3 -march=native -x c -c /dev/null -o /dev/null 2>&1 | "
                    "head -1); rm -rf /tmp/cn; "
                    "echo backend=$(EDGERNN_CACHE_DIR=/tmp/cn python -c 'from edgernn.runtime "
                    "import Model; print(Model(\"/pi-check/float.onnx\").backend)'); "
                    "echo fma=$(objdump -d /tmp/cn/cstep/step_*.so | "
                    f"grep -cE '{spec['neon']}')"
                )  # fmt: skip
            finally:
                unmount_last(root / "proc/cpuinfo")
            f = dict(ln.split("=", 1) for ln in out.splitlines() if "=" in ln)
            detail = (
                f"gcc -march=native -> {f.get('march', '').strip() or '(dropped)'}, "
                f"__ARM_NEON {'yes' if f.get('neon') == '1' else 'no'}"
                + (f" ({f['error'][:80]})" if f.get("error") else "")
                + f"; edgernn's C step ({f.get('backend')}): {f.get('fma')} NEON FMA"
            )
            table.add(u, f"native flags: {board}", "INFO", s, detail)
        # run --port over a pty fed by `edgernn emulate`, then a state-file resume
        (dest / "pty_check.py").write_text(PTY_SCRIPT)
        rc, out, err, s = ch.run("python /pi-check/pty_check.py", timeout=600)
        try:
            res = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            table.add(u, "run --port (pty from emulate)", "FAIL", s, f"rc {rc}: {one_line(err)}")
            return
        recs = []
        for n in (1, 2):
            path = root / f"pi-check/out/pty{n}.jsonl"
            recs.append([json.loads(ln) for ln in path.read_text().splitlines()]
                        if path.exists() else [])  # fmt: skip
        s1 = root / "pi-check/out/s1.json"
        summary = json.loads(s1.read_text()) if s1.exists() else {}
        ok1 = bool(
            res.get("rc1") == 0
            and res.get("lines1")
            and len(recs[0]) >= 300
            and summary.get("unaccounted") == 0
            and summary.get("rejected") == 0
        )
        counters = {k: summary.get(k) for k in ("samples", "forecasts", "rejected", "missing", "unaccounted")
                    if k in summary}  # fmt: skip
        table.add(u, "run --port (pty from emulate)", "PASS" if ok1 else "FAIL", s,
                  f"{len(recs[0])} forecasts over {res.get('port')}, SIGTERM -> rc "
                  f"{res.get('rc1')}; {counters or one_line(res.get('err1', ''))}")  # fmt: skip
        both = recs[0] + recs[1]
        resumed = "resumed stream state from" in res.get("err2", "")
        detail = f"rc {res.get('rc2')}, {len(recs[1])} more forecasts"
        ok2 = bool(res.get("rc2") == 0 and resumed and recs[1])
        if ok2:
            got = np.array([[r["forecast"][c] for c in prep["names"]] for r in both])
            want = replay(stage / "float.onnx", both, prep["names"])
            err_ = np.abs(got - want)
            ok2 = bool(np.all(err_ <= 1e-4 + 1e-5 * np.abs(want)))
            restart = [
                ln for ln in res["err2"].splitlines() if "restarted" in ln or "resumed" in ln
            ]
            detail += (f"; {' / '.join(x.strip() for x in restart)[:220]}; both runs vs an "
                       f"unbroken x86 replay: max |diff| {err_.max():.1e}")  # fmt: skip
        else:
            detail += f"; {one_line(res.get('err2', ''))}"
        table.add(u, "state-file resume", "PASS" if ok2 else "FAIL", 0.0, detail)
        check_detector_live(ch, root, u, table)


def check_detector_live(ch, root: Path, u: str, table: Table) -> None:
    """run --port with the detector and the online head, scored in the C loop, against
    the Python path (EDGERNN_NO_FAST_LIVE=1) on the same bytes: the same lines."""
    step = "run --port, detector: C = Python"
    (root / "pi-check" / "det_check.py").write_text(DETECTOR_SCRIPT)
    rc, out, err, s = ch.run("python /pi-check/det_check.py", timeout=900)
    try:
        res = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        table.add(u, step, "FAIL", s, f"rc {rc}: {one_line(err)}")
        return
    lines, sums = {}, {}
    for tag in ("c", "python"):
        path, summary = (root / f"pi-check/out/det-{tag}.{ext}" for ext in ("jsonl", "json"))
        lines[tag] = path.read_bytes() if path.exists() else b""
        sums[tag] = json.loads(summary.read_text()) if summary.exists() else {}
    n = lines["c"].count(b"\n")
    flagged = lines["c"].count(b'"anomaly":1')
    ok = bool(
        res.get("c_scorer") and res.get("rc_c") == 0 and res.get("rc_python") == 0
        and n == DETECTOR_SAMPLES and lines["c"] == lines["python"]
        and b'"score":' in lines["c"] and flagged > 0
        and sums["c"].get("unaccounted") == 0 and sums["python"].get("unaccounted") == 0
    )  # fmt: skip
    detail = (f"C scorer built: {res.get('c_scorer')}; {n} lines, byte for byte the same: "
              f"{lines['c'] == lines['python']}, "
              f"{flagged} flagged, unaccounted {sums['c'].get('unaccounted')} / "
              f"{sums['python'].get('unaccounted')}")  # fmt: skip
    if not ok:
        detail += f"; rc {res.get('rc_c')} / {res.get('rc_python')}: {one_line(res.get('err_c', ''))}"
    table.add(u, step, "PASS" if ok else "FAIL", s, detail)


# ------------------------------------------------------------------------------------
# instructions per C step under qemu's TCG plugin API (counts, not speed)

PLUGIN = r"""
#include <stdint.h>
#include <stdio.h>
#include <stddef.h>
/* The few declarations of QEMU's stable plugin API (qemu-plugin.h, version 1) that an
   instruction counter needs: Debian's qemu-user supports plugins but ships no header. */
typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
typedef struct qemu_info_t qemu_info_t;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t,
    void (*)(qemu_plugin_id_t, struct qemu_plugin_tb *));
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *, enum qemu_plugin_op,
    void *, uint64_t);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, void *), void *);
__attribute__((visibility("default"))) int qemu_plugin_version = 1;
static uint64_t count;
static void trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &count,
                                             qemu_plugin_tb_n_insns(tb));
}
static void done(qemu_plugin_id_t id, void *p) { fprintf(stderr, "insns %llu\n",
                                                         (unsigned long long)count); }
__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    qemu_plugin_register_vcpu_tb_trans_cb(id, trans);
    qemu_plugin_register_atexit_cb(id, done, NULL);
    return 0;
}
"""

HARNESS = r"""
#include <stdlib.h>
static float P[NPARAMS] __attribute__((aligned(64)));
static float X[C], Y[C], S0[NSTATE], S1[NSTATE];
static float scratch[NSCRATCH] __attribute__((aligned(64)));
int main(int argc, char **argv) {
    long steps = atol(argv[1]);
    for (long i = 0; i < NPARAMS; i++) P[i] = 0.01f * (float)((i * 7919) % 201 - 100) / 100.0f;
    for (int i = 0; i < C; i++) X[i] = 30.0f + i;
    ctx_t ctx = {1, P, X, Y, {S0, S1}, scratch};
    int cur = 0;
    for (long t = 0; t < steps; t++) { if (edgernn_step(&ctx, cur)) return 1; cur ^= 1; }
    return Y[0] != Y[0];
}
"""

# what `-O3 -march=native` resolves to on each Pi (gcc 12, see the "native flags" rows)
COUNT_TARGETS = [
    ("64-bit, Pi 3 / Zero 2 / 4: -march=armv8-a+crc", "aarch64-linux-gnu-gcc",
     ["-march=armv8-a+crc"], "qemu-aarch64"),
    ("64-bit, Pi 5: -march=armv8.2-a+fp16+rcpc+dotprod", "aarch64-linux-gnu-gcc",
     ["-march=armv8.2-a+fp16+rcpc+dotprod"], "qemu-aarch64"),
    ("32-bit, Pi 3 / Zero 2 / 4: -march=armv8-a+crc+simd", "arm-linux-gnueabihf-gcc",
     ["-march=armv8-a+crc+simd"], "qemu-arm"),
    ("32-bit, Pi 2: -march=armv7ve+simd", "arm-linux-gnueabihf-gcc", ["-march=armv7ve+simd"],
     "qemu-arm"),
    ("32-bit, no NEON: Debian armhf defaults (armv7-a+fp)", "arm-linux-gnueabihf-gcc", [],
     "qemu-arm"),
    ("32-bit, Pi Zero / 1: -march=armv6 -mfpu=vfp (VFP only)", "arm-linux-gnueabihf-gcc",
     ["-march=armv6", "-mfpu=vfp", "-marm"], "qemu-arm"),
]  # fmt: skip


def instruction_counts(tmp: Path) -> dict:
    from edgernn.runtime import csource
    from edgernn.runtime.numpy_backend import N_STATE, Layer, Network

    qemu = shutil.which("qemu-aarch64")
    if qemu is None or shutil.which("gcc") is None:
        return {"available": False, "why": "qemu-user (dynamic) or gcc missing"}
    plugin = tmp / "libinsn.so"
    (tmp / "insn.c").write_text(PLUGIN)
    p = sh(["gcc", "-O2", "-shared", "-fPIC", "-o", str(plugin), str(tmp / "insn.c")])
    if p.returncode:
        return {"available": False, "why": f"building the plugin failed: {one_line(p.stderr)}"}
    rng = np.random.default_rng(0)
    h, c = 32, 4
    w = rng.standard_normal((c + h, 4 * h)).astype(np.float32)
    net = Network(cell="lstm", nonlinearity="tanh", hidden=h,
                  layers=[Layer(w, np.zeros(4 * h, np.float32), h)],
                  mean=np.zeros(c, np.float32), std=np.ones(c, np.float32),
                  head_weight=np.ones((h, c), np.float32), head_bias=np.zeros(c, np.float32),
                  residual=True)  # fmt: skip
    n_params = int(csource.pack_params(net).size)
    defines = (f"#define NPARAMS {n_params}\n#define NSTATE ({N_STATE['lstm']} * 1 * 1 * {h})\n"
               f"#define NSCRATCH {csource.scratch_size(net)}\n")  # fmt: skip
    src = tmp / "count.c"
    src.write_text(csource.generate_source(net) + "\n" + defines + HARNESS)
    rows = []
    for name, cc, flags, emu in COUNT_TARGETS:
        if shutil.which(cc) is None or shutil.which(emu) is None:
            rows.append({"target": name, "skipped": f"{cc} or {emu} missing"})
            continue
        exe = tmp / f"count-{len(rows)}"
        extra = ["-mfloat-abi=hard"] if cc.startswith("arm") else []
        b = sh([cc, "-O3", *flags, *extra, "-static", "-o", str(exe), str(src)])
        if b.returncode:
            rows.append({"target": name, "skipped": one_line(b.stderr)})
            continue
        counts = []
        for steps in (1000, 2000):
            r = sh([emu, "-plugin", str(plugin), str(exe), str(steps)], timeout=300)
            m = re.search(r"insns (\d+)", r.stderr)
            if r.returncode or not m:
                return {
                    "available": False,
                    "why": f"qemu plugin did not load: {one_line(r.stderr) or r.returncode}",
                }
            counts.append(int(m.group(1)))
        rows.append({"target": name, "flags": " ".join(["-O3", *flags, *extra]),
                     "instructions_per_step": round((counts[1] - counts[0]) / 1000)})  # fmt: skip
    return {"available": True, "model": "LSTM-32, 4 channels, batch 1 (edgernn_step)",
            "how": "qemu-user -plugin (a 30-line TCG instruction counter), 2000 minus 1000 "
                   "steps, / 1000", "rows": rows}  # fmt: skip


# ------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path,
                    default=Path(os.path.expanduser("~/.cache/edgernn-pi-check")),
                    help="where the userlands are built and cached "
                         "(default ~/.cache/edgernn-pi-check)")  # fmt: skip
    ap.add_argument("--fresh", action="store_true", help="rebuild the cached userlands")
    ap.add_argument("--only", choices=sorted(USERLANDS), action="append",
                    help="check only this userland (repeatable)")  # fmt: skip
    ap.add_argument("--json", type=Path, default=RESULTS, help=f"results file ({RESULTS})")
    args = ap.parse_args()
    need_root()
    t_start = time.monotonic()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))  # through the finally below
    table = Table()
    timing: dict = {}
    info: dict = {"host": f"{platform.machine()}, {platform.python_version()}",
                  "suite": SUITE}  # fmt: skip
    try:
        prerequisites()
        args.work.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        stage = args.work / "stage"
        prep = prepare(stage)
        timing["x86 models + wheel + reference runs"] = round(time.monotonic() - t0, 1)
        info["wheel"] = prep["wheel"]
        info["x86 backends"] = {m: r["backend"] for m, r in prep["refs"].items()}
        for arch in args.only or sorted(USERLANDS):
            print(f"\n== {SUITE} {arch}", flush=True)
            info[f"{arch} binfmt"] = binfmt(USERLANDS[arch]["qemu"])
            print(f"pi-check: {info[f'{arch} binfmt']}")
            t0 = time.monotonic()
            try:
                root, how = rootfs(args.work, arch, args.fresh)
            except RuntimeError as e:
                table.add(arch, "bootstrap (mmdebstrap)", "FAIL", time.monotonic() - t0, str(e))
                continue
            timing[f"{arch} userland ({how})"] = round(time.monotonic() - t0, 1)
            table.add(arch, f"userland {how}", "PASS", time.monotonic() - t0, str(root))
            t0 = time.monotonic()
            try:
                check_userland(arch, root, prep, stage, table)
            except RuntimeError as e:
                table.add(arch, "chroot", "FAIL", time.monotonic() - t0, str(e))
            timing[f"{arch} checks"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            counts = instruction_counts(Path(tmp))
        timing["instruction counts"] = round(time.monotonic() - t0, 1)
    finally:
        undo_all()
    timing["total"] = round(time.monotonic() - t_start, 1)
    print("\n| userland | step | result | s | detail |\n|---|---|---|---:|---|")
    for r in table.rows:
        print(f"| {r['userland']} | {r['step']} | {r['status']} | {r['seconds']} | "
              f"{r['detail']} |")  # fmt: skip
    if counts.get("available"):
        print(f"\nInstructions per C step under qemu ({counts['model']}; counts, not speed):")
        for r in counts["rows"]:
            print(f"  {r['target']:<58} {r.get('instructions_per_step', r.get('skipped'))}")
    else:
        print(f"\nInstruction counts: not available ({counts.get('why')})")
    print(f"\ntiming (s): {json.dumps(timing)}")
    failed = [r for r in table.rows if r["status"] == "FAIL"]
    result = {"command": "sudo make pi-check", "info": info, "rows": table.rows,
              "instruction_counts": counts, "timing_s": timing,
              "passed": not failed}  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"pi-check: {'FAIL' if failed else 'PASS'} ({len(failed)} failed; NO = a clean "
          f"refusal by design, INFO = informational); wrote {args.json}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
