"""Outputs and state files of `run --port` across restarts and concurrent runs.

A restart appends to -o (never truncates), the state file records where the device's
stream was so the next run reports what it missed, files are locked against a second
run, and hostile state files are refused at load in one line. Real ptys.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ScriptedDevice
from conftest import parse_run_args as parse

from edgernn.errors import InputError
from edgernn.firmware_bridge import protocol as P
from edgernn.firmware_bridge.live import StateFile, model_fingerprint, run_serial
from edgernn.runtime.filelocks import FileInUse, SidecarLock, open_output
from edgernn.runtime.model import Model
from edgernn.runtime.output import RecordWriter

NAMES = ["ch0", "ch1", "ch2"]


@pytest.fixture(scope="module")
def model(exported_models) -> Model:
    return Model(exported_models[("lstm", 1)][1])


def device(session: int, seqs, channels: int = 3) -> ScriptedDevice:
    """A pty that, once a reader opens it, writes hello(session) + frames seq `seqs`, then
    hangs up."""
    rng = np.random.default_rng(session)
    wire = P.encode_hello(session, 100.0, NAMES[:channels], seq=seqs[0])
    for s in seqs:
        wire += P.encode_data(s, s * 10000, (30 + rng.standard_normal(channels)).astype("f4"))
    return ScriptedDevice(wire, piece=None)


def _run(model, tmp_path, session, seqs, out, *extra):
    dev = device(session, list(seqs))
    summary = tmp_path / "summary.json"
    args = parse("--port", dev.path, "--no-reconnect", "--state-file", str(tmp_path / "st.json"),
                 "-o", str(out), "--summary-json", str(summary), *extra)  # fmt: skip
    assert run_serial(args, model) == 0
    return json.loads(summary.read_text())


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_a_restart_appends_and_reports_what_was_missed_while_down(model, tmp_path, capsys, suffix):
    out = tmp_path / f"out.{suffix}"
    first = _run(model, tmp_path, 7, range(0, 30), out)
    assert first["forecasts"] == 30 and first["missed_while_down"] == 0
    capsys.readouterr()
    second = _run(model, tmp_path, 7, range(40, 70), out)
    err = capsys.readouterr().err
    assert f"appending to {out}" in err
    assert "restarted: 10 samples missed while down (seq 30 to 39)" in err
    assert second["missed_while_down"] == 10 and second["restart_unknown"] == 0
    assert "restart: 10 samples missed while the process was down" in err
    lines = out.read_text().splitlines()
    if suffix == "csv":
        assert "no second CSV header" in err
        assert lines[0].startswith("seq,") and sum(ln.startswith("seq,") for ln in lines) == 1
        seqs = [int(ln.split(",")[0]) for ln in lines[1:]]
    else:
        seqs = [json.loads(ln)["seq"] for ln in lines]
    assert seqs == list(range(30)) + list(range(40, 70))  # the first run's lines all kept
    saved = json.loads((tmp_path / "st.json").read_text())
    assert saved["device"] == {"mode": "binary", "session": 7, "next_seq": 70}

    capsys.readouterr()
    third = _run(model, tmp_path, 8, range(0, 10), out)  # the device rebooted meanwhile
    err = capsys.readouterr().err
    assert "device rebooted while down (session 00000007 -> 00000008): gap unknown" in err
    assert third["restart_unknown"] == 1 and third["missed_while_down"] == 0


def test_a_killed_runs_partial_line_stays_apart_from_the_appended_records(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text('{"seq":1}\n{"seq":2,"ch0":3.')  # kill -9 mid-line
    with RecordWriter(str(out), NAMES, leading=["seq"], fmt="jsonl", append=True) as w:
        w.write({"seq": 3})
    assert out.read_text().splitlines()[1:] == ['{"seq":2,"ch0":3.', '{"seq":3}']


def test_appending_csv_under_another_header_is_refused_and_the_file_kept(tmp_path):
    out = tmp_path / "o.csv"
    out.write_text("time,a,b\n1,2,3\n")
    with pytest.raises(InputError, match="other columns.*choose another file"):
        RecordWriter(str(out), NAMES, leading=["seq"], append=True)
    assert out.read_text() == "time,a,b\n1,2,3\n"


_HOLD = (
    "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
    "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
)


def _holder(path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("which", ["output", "state"])
def test_a_second_run_on_the_same_files_is_refused_and_destroys_nothing(model, tmp_path, which):
    out, state = tmp_path / "o.jsonl", tmp_path / "st.json"
    out.write_text('{"seq":0}\n')
    state.write_text("{}")
    holder = _holder(out if which == "output" else f"{state}.lock")  # another process's run
    try:
        args = parse("--port", "loop://", "--no-reconnect", "-o", str(out),
                     "--state-file", str(state))  # fmt: skip
        flag = "output" if which == "output" else "--state-file"
        with pytest.raises(FileInUse, match=f"^{flag} .* is in use by another edgernn run"):
            run_serial(args, model)
        for mode in (False, True):  # nor can a plain --csv run truncate it
            if which == "output":
                with pytest.raises(FileInUse):
                    open_output(str(out), append=mode)
    finally:
        holder.kill()
        holder.wait()
    assert out.read_text() == '{"seq":0}\n' and state.read_text() == "{}"
    lock = SidecarLock(str(state), "--state-file")  # released with the holder: usable again
    lock.release()


def test_killed_runs_temp_files_are_removed(model, tmp_path):
    for name in ("st.json.tmp", "st.json.tmp4242", "st.json.tmpx"):
        (tmp_path / name).write_text("{")
    _run(model, tmp_path, 3, range(5), tmp_path / "o.jsonl")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "st.json.tmp" not in names and "st.json.tmp4242" not in names
    assert "st.json.tmpx" in names  # not a name edgernn writes: left alone


def _hostile_states(model) -> dict[str, object]:
    layers, hidden = model.meta.layers, model.meta.hidden
    state = {s.input: np.zeros((layers, hidden)).tolist() for s in model.meta.states}
    ok = {"model_state": state, "pending": [], "samples": 1, "imputed": 0}
    return {
        "deep JSON": "[" * 200_000 + "]" * 200_000,
        "top level list": "[1, 2]",
        "monitor list": {"monitor": [1]},
        "model_state list": {"monitor": {**ok, "model_state": [[0.0]]}},
        "pending wrong width": {"monitor": {**ok, "pending": [[1.0, 2.0]] * model.horizon}},
        "pending too many": {"monitor": {**ok, "pending": [[1.0] * 3] * (model.horizon + 5)}},
        "pending nan": {"monitor": {**ok, "pending": [[float("nan")] * 3]}},
        "pending deep": {"monitor": {**ok, "pending": [[[[1.0]]]]}},
        "samples text": {"monitor": {**ok, "samples": "many"}},
        "detector list": {"monitor": {**ok, "detector": [1]}},
        "device junk": {"monitor": ok, "device": {"mode": "binary", "session": -1}},
        "saved_unix text": {"monitor": ok, "saved_unix": "yesterday"},
    }


HOSTILE = ["deep JSON", "top level list", "monitor list", "model_state list",
           "pending wrong width", "pending too many", "pending nan", "pending deep",
           "samples text", "detector list", "device junk", "saved_unix text"]  # fmt: skip


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_state_files_are_one_line_at_load_and_the_run_goes_on(
    model, tmp_path, capsys, case
):
    doc = _hostile_states(model)[case]
    state = tmp_path / "st.json"
    if isinstance(doc, dict):
        full = {"format": 1, "model_sha256": model_fingerprint(model.path), **doc}
        state.write_text(json.dumps(full))
    else:
        state.write_text(doc)
    summary = _run(model, tmp_path, 5, range(40), tmp_path / "o.jsonl")
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert summary["forecasts"] == 40  # past the 9th sample, where a bad pending used to fail
    first = err.splitlines()[0]
    resumed = case in ("device junk", "saved_unix text")  # the stream state itself is fine
    if resumed:
        assert first.startswith("edgernn: resumed stream state")
    else:
        assert "starting cold" in first and "resumed" not in first
    sf = StateFile(str(state), model_fingerprint(model.path))
    assert sf.load()[0]["samples"] == 40 + resumed  # replaced by a good one
