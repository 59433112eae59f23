"""Restart soak: `edgernn run --port -o FILE --state-file ...` killed and restarted.

One emulator streams the whole time; the run is stopped N times, alternately with
SIGTERM (a clean systemd stop) and SIGKILL (a crash, an OOM kill), and started again
on the same output and state file. Checks, and prints as JSON:

- the output is never truncated: every record of every run is still in it (a killed
  run may leave one partial last line, which stays on its own line);
- every restart reports what it missed: the gap between the saved state's next
  sequence number and the first sample of the new run; after a clean stop that equals
  the samples the output lacks, after a kill it also counts those since the last save;
- a second run on the same files is refused while the first holds them.

    python benchmarks/restart_soak.py [--cycles 20] [--rate 500]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

MISSED = re.compile(r"restarted: (\d+|no) samples missed while down")


def _count(found) -> int | None:
    if found is None:
        return None
    return 0 if found.group(1) == "no" else int(found.group(1))


def _last_with_data(bounds: list[int], k: int) -> int:
    """The last run before run k that wrote records: its stop decides what the state
    file knew (a run that saw nothing saves the position it resumed from)."""
    j = k - 1
    while j > 0 and bounds[j + 1] == bounds[j]:
        j -= 1
    return j


def edgernn(*argv: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgernn", *argv], text=True, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "restart_soak.json"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    from conftest import make_model

    from edgernn.export.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as folder:
        model = os.path.join(folder, "m.onnx")
        export_onnx(make_model("lstm", 1, 16, channels=3), model)
        emu = edgernn("emulate", "--rate", str(args.rate), "--like", model,
                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
        port = emu.stdout.readline().strip()
        out, state = os.path.join(folder, "out.jsonl"), os.path.join(folder, "state.json")
        cmd = ["run", model, "--port", port, "-o", out, "--state-file", state,
               "--state-interval", "0.5", "--status-interval", "0"]  # fmt: skip
        cycles, refused = [], None
        try:
            for i in range(args.cycles):
                run = edgernn(*cmd, stderr=subprocess.PIPE)
                time.sleep(rng.uniform(2.0, 4.0))  # start-up (~1 s) plus some data
                if i == 1:  # a second run on the same files, while this one holds them
                    second = subprocess.run([sys.executable, "-m", "edgernn", *cmd],
                                            capture_output=True, text=True, timeout=60)  # fmt: skip
                    refused = second.returncode == 1 and "in use" in second.stderr
                how = signal.SIGTERM if i % 2 else signal.SIGKILL
                run.send_signal(how)
                err = run.communicate(timeout=30)[1]
                found = MISSED.search(err)
                with open(out, "rb") as f:
                    ends = f.read().count(b"\n")  # records so far: where this run ended
                restart = next((ln for ln in err.splitlines() if "restarted:" in ln), "")
                cycles.append({"stop": how.name, "lines_at_stop": ends, "note": restart[9:],
                               "stderr": err[-600:],
                               "missed_reported": _count(found)})  # fmt: skip
        finally:
            emu.send_signal(signal.SIGINT)
            emu.communicate(timeout=30)
        with open(out, "rb") as f:
            lines = f.read().split(b"\n")
    records, partial = [], 0
    for line in lines:
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            partial += 1
    seqs = [r["seq"] for r in records]
    # Each run's records end where the file stood when it was stopped.
    checks, bounds = [], [0] + [c["lines_at_stop"] for c in cycles]
    gaps = []
    for k in range(1, len(cycles)):
        last, first = bounds[k] - 1, bounds[k]
        if not 0 <= last < first < len(seqs) or bounds[k + 1] == first:
            continue  # a run killed before its first sample: nothing to check
        gap = seqs[first] - seqs[last] - 1  # samples the output lacks across this restart
        gaps.append(gap)
        c = cycles[k]
        c["gap_in_output"] = gap
        if c["missed_reported"] is None:
            checks.append(False)
        elif cycles[_last_with_data(bounds, k)]["stop"] == "SIGTERM":
            checks.append(c["missed_reported"] == gap)  # saved at exit: exact
        else:
            checks.append(c["missed_reported"] >= gap)  # also counts since the last save
    summary = {
        "cycles": len(cycles),
        "records": len(records),
        "partial_lines": partial,
        "seq_span": (seqs[-1] - seqs[0] + 1) if seqs else 0,
        "missed_in_output": sum(gaps),
        "missed_reported": sum(c["missed_reported"] or 0 for c in cycles),
        "restarts_checked": len(checks),
        "restart_reports_consistent": all(checks) and len(checks) > 0,
        "second_run_refused": refused,
        "per_cycle": cycles,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_cycle"}, indent=2))
    good = summary["restart_reports_consistent"] and refused and not partial
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
