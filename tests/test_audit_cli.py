"""User-facing failures found by the CLI audit: each is one `edgernn: error:` line
(exit 1) or a usage error (exit 2), never a traceback or silently lost data."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import make_model

from edgernn.cli import main

CHANNELS = ("ch0", "ch1", "ch2")  # make_model's channel names


def write_rows(path, rows) -> str:
    with open(path, "w") as fh:
        fh.write(",".join(CHANNELS) + "\n")
        fh.writelines(",".join(map(str, r)) + "\n" for r in rows)
    return str(path)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from edgernn.export.onnx_export import export_onnx

    path = str(tmp_path_factory.mktemp("audit") / "gru.onnx")
    export_onnx(make_model("gru", 1, hidden=8), path)
    return path


@pytest.fixture
def data_csv(tmp_path):
    return write_rows(tmp_path / "in.csv", [(i, 50 + i % 7, -i % 5) for i in range(40)])


def one_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    line = [ln for ln in err.splitlines() if ln.startswith("edgernn: error:")]
    assert len(line) == 1, err
    for needle in needles:
        assert needle in line[0], err
    return line[0]


# -- 1. OSError from any subcommand ------------------------------------------------
def test_train_out_is_a_file(tmp_path, data_csv, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["train", data_csv, "--out", str(afile), "--cell", "esn"]) == 1
    one_error(capsys, "afile", "Not a directory")


def test_export_out_is_a_directory(tmp_path, capsys):
    data = write_rows(tmp_path / "d.csv", [(i % 9, i % 7, i % 5) for i in range(200)])
    run = str(tmp_path / "run")
    assert main(["train", data, "--out", run, "--cell", "esn", "--hidden", "8"]) == 0
    capsys.readouterr()
    assert main(["export", run, "-o", str(tmp_path)]) == 1
    one_error(capsys, str(tmp_path), "Is a directory")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_run_out_on_full_disk_names_the_file(tmp_path, model_path, data_csv, capsys):
    full = tmp_path / "full.csv"
    full.symlink_to("/dev/full")
    assert main(["run", model_path, "--csv", data_csv, "-o", str(full)]) == 1
    one_error(capsys, "full.csv", "No space left on device")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("cmd", [["run", "--csv"], ["info"]])
def test_stdout_on_full_disk(model_path, data_csv, cmd):
    argv = [cmd[0], model_path] + ([cmd[1], data_csv] if len(cmd) > 1 else [])
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "edgernn", *argv], stdout=full, stderr=subprocess.PIPE,
            text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("edgernn: error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], proc.stderr


# -- 2. output = input -------------------------------------------------------------
@pytest.mark.parametrize("via_link", [False, True])
def test_run_refuses_to_overwrite_its_input(tmp_path, model_path, data_csv, capsys, via_link):
    before = open(data_csv).read()
    out = data_csv
    if via_link:
        out = str(tmp_path / "link.csv")
        os.symlink(data_csv, out)
    assert main(["run", model_path, "--csv", data_csv, "-o", out]) == 1
    one_error(capsys, "input file")
    assert open(data_csv).read() == before


# -- 3. demo flags -----------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--rate", "0"], "--rate"),
        (["--train-rows", "10"], "--train-rows"),
        (["--live-rows", "0"], "--live-rows"),
        (["--live-rows", "-5"], "--live-rows"),
    ],
)
def test_demo_rejects_bad_flags(tmp_path, capsys, flags, needle):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(tmp_path / "d"), *flags])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_demo_out_is_a_file(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["demo", "--out", str(afile)]) == 1
    one_error(capsys, "afile", "not a directory")


# -- 4. values beyond float32 --------------------------------------------------------
def test_run_value_beyond_float32(tmp_path, model_path, capsys):
    path = write_rows(tmp_path / "big.csv", [(1, 2, 3), (1e39, 0, 0), (4, 5, 6)])
    assert main(["run", model_path, "--csv", path]) == 1
    one_error(capsys, "big.csv", "row 3", "'ch0'", "out of float32 range")

    out = tmp_path / "out.csv"
    assert main(["run", model_path, "--csv", path, "--skip-bad-rows", "-o", str(out)]) == 0
    assert "1 skipped" in capsys.readouterr().err
    rows = out.read_text().splitlines()[1:]
    assert len(rows) == 3 and rows[1].strip(",") == "" and "inf" not in out.read_text()


def test_train_value_beyond_float32(tmp_path, capsys):
    rows = [(i % 9, i % 7, -1e39 if i == 30 else i % 5) for i in range(200)]
    path = write_rows(tmp_path / "big.csv", rows)
    assert main(["train", path, "--out", str(tmp_path / "r"), "--cell", "esn"]) == 1
    one_error(capsys, "row 32", "'ch2'", "out of float32 range")


# -- 5. hand-edited metadata ---------------------------------------------------------
@pytest.mark.parametrize(
    "key, value, needle",
    [("horizon", "0", "horizon"), ("channels", '["ch0", "ch0", "ch2"]', "duplicate channel")],
)
def test_bad_metadata(tmp_path, model_path, data_csv, capsys, key, value, needle):
    import onnx

    proto = onnx.load(model_path)
    for p in proto.metadata_props:
        if p.key == key:
            p.value = value
    bad = str(tmp_path / "bad.onnx")
    onnx.save(proto, bad)
    assert main(["run", bad, "--csv", data_csv]) == 1
    one_error(capsys, "bad.onnx", needle)
