"""Audit fixes in export and train: damaged checkpoints give one-line errors, a failed
export or quantization keeps the file already at the output path, quantize never
writes over its input through a link, a fresh run drops a stale train_state.pt, and a
refused opset prints nothing on stdout."""

import json
import os

import numpy as np
import pytest
from conftest import make_model

from edgernn.cli import main
from edgernn.errors import ExportError, InputError, ModelFormatError
from edgernn.export.onnx_export import export_onnx
from edgernn.export.quantize import quantize_model
from edgernn.export.run import load_forecaster
from edgernn.train.checkpoint import CHECKPOINT, META_KEY, save_checkpoint

OLD = b"the model that was here before"


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A checkpoint of a small random GRU, written as training writes it: (dir, weights, meta)."""
    model = make_model("gru", hidden=8)
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    meta = {"model": model.config.to_dict(), "metrics": {}}
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(str(run), weights, meta)
    return str(run), weights, meta


def _raw_checkpoint(run_dir, weights, meta) -> str:
    """A checkpoint saved with np.savez directly, as a hand-edited one would be."""
    os.makedirs(run_dir, exist_ok=True)
    np.savez(os.path.join(run_dir, CHECKPOINT), **weights, **{META_KEY: np.array(meta)})
    return str(run_dir)


def _without(d, key):
    return {k: v for k, v in d.items() if k != key}


DAMAGE = {  # name: (weights, meta) -> (weights, __meta__ text)
    "no head.bias": lambda w, m: (_without(w, "head.bias"), json.dumps(m)),
    "misshaped weight": lambda w, m: ({**w, "head.weight": np.zeros((5, 5))}, json.dumps(m)),
    "no model entry": lambda w, m: (w, json.dumps(_without(m, "model"))),
    "hidden -1": lambda w, m: (w, json.dumps({**m, "model": {**m["model"], "hidden": -1}})),
    "meta is a list": lambda w, m: (w, json.dumps([1, 2])),
    "meta is not json": lambda w, m: (w, "{"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_a_one_line_error(good_run, tmp_path, damage):
    _, weights, meta = good_run
    run = _raw_checkpoint(tmp_path / "run", *DAMAGE[damage](weights, meta))
    with pytest.raises(ModelFormatError, match="not a usable edgernn checkpoint") as err:
        load_forecaster(run)
    assert "\n" not in str(err.value)


def test_a_truncated_checkpoint_is_a_one_line_cli_error(good_run, tmp_path, capsys):
    with open(os.path.join(good_run[0], CHECKPOINT), "rb") as fh:
        head = fh.read(1000)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / CHECKPOINT).write_bytes(head)
    assert main(["export", str(tmp_path / "bad"), "-o", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edgernn: error: ") and "not a usable edgernn checkpoint" in err
    assert err.count("\n") == 1


def test_a_failed_export_keeps_the_file_at_the_output_path(tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(OLD)
    with pytest.raises(ExportError, match="parity check failed"):
        export_onnx(make_model("gru", hidden=8), out, tolerance=-1.0)  # no graph passes
    assert out.read_bytes() == OLD
    assert (tmp_path / "m.onnx.failed").exists()
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.failed"]  # no temporaries


def test_a_failed_quantization_keeps_the_file_at_the_output_path(exported_models, tmp_path):
    _, src = exported_models[("gru", 1)]
    dst = tmp_path / "q.onnx"
    dst.write_bytes(OLD)
    with pytest.raises(ExportError, match="deviates by"):
        quantize_model(src, dst, mode="fp16", max_deviation=1e-12)
    assert dst.read_bytes() == OLD
    assert sorted(os.listdir(tmp_path)) == ["q.onnx", "q.onnx.failed"]


def test_quantize_refuses_an_output_linked_to_its_input(exported_models, tmp_path):
    _, src = exported_models[("gru", 1)]
    before = open(src, "rb").read()
    link = tmp_path / "link.onnx"
    link.symlink_to(src)
    with pytest.raises(InputError, match="is the input model"):
        quantize_model(src, link, mode="fp16")
    assert open(src, "rb").read() == before


def test_a_fresh_esn_run_drops_a_stale_train_state(synthetic_csv, tmp_path):
    from edgernn.train.config import TrainConfig
    from edgernn.train.fit import train_files
    from edgernn.train.resume import state_path

    run = tmp_path / "run"
    run.mkdir()
    with open(state_path(str(run)), "wb") as fh:
        fh.write(b"left by an earlier GRU run")
    cfg = TrainConfig(cell="esn", hidden=8, progress=False)
    train_files([synthetic_csv], cfg, str(run), log=lambda msg: None)
    assert (run / CHECKPOINT).exists() and not os.path.exists(state_path(str(run)))


def test_a_refused_opset_prints_nothing_on_stdout(tmp_path, capfd):
    with pytest.raises(ExportError, match="refused"):
        export_onnx(make_model("gru", hidden=8), tmp_path / "m.onnx", opset=99)
    assert capfd.readouterr().out == ""
