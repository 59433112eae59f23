"""Audit findings in the firmware bridge and `edgernn evaluate`: bad paths and values
are one-line errors before any work, no user file is clobbered, every emitted sample
is delivered, and failed writes are reported instead of tracebacks or silence."""

from __future__ import annotations

import argparse
import errno
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import ROOT, run_cli, write_csv
from conftest import parse_run_args as parse

from edgernn.errors import EdgernnError, InputError
from edgernn.firmware_bridge import commands, live
from edgernn.firmware_bridge.emulator import Emulator, Faults
from edgernn.firmware_bridge.live import (
    LiveRun,
    StateFile,
    model_fingerprint,
    run_serial,
    write_atomic,
)
from edgernn.runtime.model import Model
from edgernn.runtime.monitor import Monitor

NAMES = ["ch0", "ch1", "ch2"]  # the conftest models' channels


@pytest.fixture(scope="module")
def model_path(exported_models) -> str:
    return exported_models[("lstm", 1)][1]


@pytest.fixture(scope="module")
def model(model_path) -> Model:
    return Model(model_path)


def short_stream(samples: int = 50) -> Emulator:
    """An emulator that sends `samples` samples to the first reader, then hangs up."""
    emu = Emulator(rate=500, channels=3, names=NAMES, duration=samples / 500).start()

    def hang_up():
        emu.join()
        emu.drain()
        emu.unplug()

    threading.Thread(target=hang_up, daemon=True).start()
    return emu


# -- emulate --link -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["file", "dir", "missing folder"])
def test_link_never_replaces_a_file_or_folder(tmp_path, kind):
    target = tmp_path / {"file": "victim.csv", "dir": "adir", "missing folder": "no/p"}[kind]
    if kind == "file":
        target.write_text("precious\n")
    elif kind == "dir":
        target.mkdir()
    with pytest.raises(InputError, match="--link"):
        Emulator(link=str(target))
    if kind == "file":
        assert target.read_text() == "precious\n"
    assert kind != "dir" or target.is_dir()
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_link_over_an_old_link_is_replaced_and_removed_at_close(tmp_path):
    link = tmp_path / "pty"
    link.symlink_to("/nonexistent")
    emu = Emulator(link=str(link))
    assert os.readlink(link) == emu._pts
    emu.close()
    assert not os.path.lexists(link)


def test_emulate_link_to_a_file_is_a_one_line_error(tmp_path):
    victim = tmp_path / "victim.csv"
    victim.write_text("precious\n")
    r = run_cli("emulate", "--link", str(victim), timeout=30)
    assert r.returncode == 1 and victim.read_text() == "precious\n"
    assert r.stderr.strip().splitlines() == [
        f"edgernn: error: --link {victim} is an existing file; give a new path (or an old link)"
    ]


# -- emulate: the last frames reach the reader ------------------------------------------
def test_emulate_delivers_every_sample_it_reports_sent(model, model_path, tmp_path):
    link = str(tmp_path / "pty1")
    emulate = subprocess.Popen(
        [sys.executable, "-m", "edgernn", "emulate", "--like", model_path, "--rate", "200",
         "--duration", "0.5", "--link", link],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert emulate.stdout.readline().strip() == link
        summary = tmp_path / "s.json"
        args = parse("--port", link, "--no-reconnect", "--summary-json", str(summary), "-o",
                     str(tmp_path / "o.jsonl"))  # fmt: skip
        assert run_serial(args, model) == 0
        err = emulate.communicate(timeout=20)[1]
    finally:
        emulate.kill()
    assert "sent 100 of 100 samples" in err and "had not read" not in err
    assert json.loads(summary.read_text())["forecasts"] == 100


# -- emulate: values -------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [["--rate", "inf"], ["--rate", "nan"], ["--duration", "-1"], ["--duration", "nan"],
     ["--names", "a,a"], ["--names", ","]],
)  # fmt: skip
def test_emulate_bad_values_are_usage_errors(argv, capsys):
    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers())
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["emulate", *argv])
    assert e.value.code == 2
    assert f"argument {argv[0]}:" in capsys.readouterr().err


def test_emulator_and_faults_refuse_non_finite_values():
    with pytest.raises(InputError):
        Emulator(rate=float("inf"))
    for spec in ("reboot=nan", "disconnect=-1", "down=inf"):
        with pytest.raises(InputError, match="seconds"):
            Faults.parse(spec)


# -- run --port: --summary-json ----------------------------------------------------------
def test_write_atomic_leaves_no_temp_file_on_failure(tmp_path):
    target = tmp_path / "adir"
    target.mkdir()
    with pytest.raises(OSError):
        write_atomic(str(target), "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]


@pytest.mark.parametrize("where", ["adir", "nodir/x.json", "afile/x.json"])
@pytest.mark.parametrize("flag", ["--summary-json", "--state-file"])
def test_unwritable_outputs_fail_before_the_run(model, tmp_path, flag, where):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("")
    stop = threading.Event()
    stop.set()  # were the path not checked first, the run would end at once and then fail
    with pytest.raises(InputError, match=flag):
        run_serial(parse("--port", "loop://", flag, str(tmp_path / where)), model, stop=stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]


def _disk_full(path, text, tmp=None):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_summary_write_failure_at_the_end_is_a_one_line_error(model, tmp_path, monkeypatch):
    monkeypatch.setattr(live, "write_atomic", _disk_full)
    emu = short_stream()
    args = parse("--port", emu.path, "--no-reconnect", "--summary-json", str(tmp_path / "s.json"),
                 "-o", str(tmp_path / "o.jsonl"))  # fmt: skip
    with pytest.raises(EdgernnError, match="cannot write --summary-json .*No space left"):
        run_serial(args, model)
    emu.stop()


# -- run --port: --state-file ------------------------------------------------------------
def test_state_never_saved_is_reported_and_fails_the_run(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(live, "write_atomic", _disk_full)
    emu = short_stream()
    state = tmp_path / "state.json"
    args = parse("--port", emu.path, "--no-reconnect", "--state-file", str(state), "-o",
                 str(tmp_path / "o.jsonl"))  # fmt: skip
    with pytest.raises(EdgernnError, match="No space left.*never saved"):
        run_serial(args, model)
    emu.stop()
    err = capsys.readouterr().err
    assert f"state: saved to {state} (0 saves, 1 failed; last: cannot save state" in err


@pytest.mark.parametrize("damage", ["shape", "nan"])
def test_unusable_state_file_does_not_claim_a_resume(model, tmp_path, capsys, damage):
    mon = Monitor(model)
    mon.process(np.ones(3, np.float32))
    doc = mon.state_dict()
    for k, v in doc["model_state"].items():
        doc["model_state"][k] = (
            [[1.0, 2.0]] if damage == "shape" else np.full(np.shape(v), np.nan).tolist()
        )
    state = tmp_path / "state.json"
    sf = StateFile(str(state), model_fingerprint(model.path))
    state.write_text(sf._document(doc, 1))
    run = LiveRun(parse("--port", "loop://", "--state-file", str(state)), model)
    run.writer.close()
    err = capsys.readouterr().err
    assert "unusable" in err and "starting cold" in err
    assert "resumed" not in err


# -- evaluate ------------------------------------------------------------------------
@pytest.fixture
def labelled(tmp_path):
    rng = np.random.default_rng(0)
    values = np.column_stack([rng.standard_normal((60, 2)), np.zeros(60)])
    for d in ("A", "B"):
        (tmp_path / d).mkdir()
        write_csv(tmp_path / d / "lab.csv", values, names=("a", "b", "anomaly"), time_col=False)
    return tmp_path


def _evaluate(capsys, *argv):
    from edgernn.cli import main

    rc = main(["evaluate", "--train-rows", "30", "--epochs", "1", *argv])
    return rc, capsys.readouterr().err.strip().splitlines()


def test_evaluate_refuses_clashing_outputs_before_any_work(labelled, capsys):
    a, b, out = labelled / "A/lab.csv", labelled / "B/lab.csv", labelled / "evdup"
    rc, err = _evaluate(capsys, str(a), str(b), "--out", str(out))
    assert rc == 1 and not out.exists()
    assert err == [f"edgernn: error: {a} and {b} would both write {out}/lab_pred.csv; "
                   "rename one or evaluate them separately"]  # fmt: skip


def test_evaluate_refuses_a_file_given_twice(labelled, capsys):
    a = str(labelled / "A/lab.csv")
    assert _evaluate(capsys, a, a) == (1, [f"edgernn: error: {a} is given twice"])


def test_evaluate_refuses_out_that_is_a_file(labelled, capsys):
    afile = labelled / "afile"
    afile.write_text("keep\n")
    rc, err = _evaluate(capsys, str(labelled / "A/lab.csv"), "--out", str(afile))
    assert (rc, err) == (1, [f"edgernn: error: --out {afile} is not a folder"])
    assert afile.read_text() == "keep\n"


def test_evaluate_refuses_the_label_as_a_model_input(labelled, capsys):
    rc, err = _evaluate(capsys, str(labelled / "A/lab.csv"), "--channels", "a,anomaly")
    assert rc == 1 and len(err) == 1 and "label column 'anomaly'" in err[0]
