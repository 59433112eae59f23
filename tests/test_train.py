"""Training: it learns (beats persistence on held-out data), it is reproducible,
and its checkpoint describes itself."""

import json

import numpy as np
import pytest
from conftest import synthetic_signal, write_csv

from edgernn.errors import DataError
from edgernn.train import TrainConfig, train_files
from edgernn.train.checkpoint import load_checkpoint

QUICK = dict(hidden=16, epochs=4, window=32, burn_in=4, batch_size=16, progress=False)


def _quiet(msg):
    pass


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(cell="lstm", **QUICK),
        TrainConfig(cell="gru", bptt="tbptt", **QUICK),
        TrainConfig(cell="rnn", layers=2, **QUICK),
        TrainConfig(cell="esn", hidden=100),
    ],
    ids=["lstm-window", "gru-tbptt", "rnn-2layer", "esn"],
)
def test_training_beats_persistence_on_held_out_data(tmp_path, synthetic_csv, cfg):
    run = train_files([synthetic_csv], cfg, str(tmp_path / "run"), log=_quiet)
    model, persistence = run.metrics["model"], run.metrics["persistence"]
    assert model["rmse"] < 0.9 * persistence["rmse"], run.metrics
    assert model["r2"] > persistence["r2"]


def test_checkpoint_is_self_describing(tmp_path, synthetic_csv):
    cfg = TrainConfig(cell="gru", **QUICK)
    train_files([synthetic_csv], cfg, str(tmp_path / "run"), log=_quiet)
    weights, meta, val_errors = load_checkpoint(str(tmp_path / "run"))
    assert meta["model"]["cell"] == "gru" and meta["model"]["hidden"] == 16
    assert meta["channels"] == ["a", "b", "c"]
    assert meta["train"] == cfg.to_dict()
    assert len(meta["norm"]["mean"]) == 3 and meta["norm"]["std"][1] > 1.0  # channel b: std ~3.5
    assert set(meta["metrics"]) >= {"model", "persistence"}
    assert len(meta["error_scale"]) == 3 and min(meta["error_scale"]) > 0
    assert val_errors.shape[1] == 3
    assert "rnn.weight_hh_l0" in weights and "head.weight" in weights
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["model"]["rmse"] > 0


def test_normalisation_comes_from_training_part_only(tmp_path):
    values = synthetic_signal(1000)
    values[800:, 1] += 1000.0  # the validation part (last 20 %) is shifted far away
    path = write_csv(tmp_path / "shift.csv", values)
    run = train_files([path], TrainConfig(cell="esn", hidden=20), str(tmp_path / "r"), log=_quiet)
    assert run.meta["norm"]["mean"][1] == pytest.approx(values[:800, 1].mean(), rel=1e-4)


def test_seed_reproducibility(tmp_path, synthetic_csv):
    cfg = TrainConfig(cell="lstm", seed=7, **dict(QUICK, epochs=2))
    a = train_files([synthetic_csv], cfg, str(tmp_path / "a"), log=_quiet)
    b = train_files([synthetic_csv], cfg, str(tmp_path / "b"), log=_quiet)
    for k in a.weights:
        np.testing.assert_array_equal(a.weights[k], b.weights[k])
    c = train_files([synthetic_csv], TrainConfig(cell="lstm", seed=8, **dict(QUICK, epochs=2)),
                    str(tmp_path / "c"), log=_quiet)  # fmt: skip
    assert not np.array_equal(a.weights["head.weight"], c.weights["head.weight"])


def test_several_files_are_independent_sequences(tmp_path):
    files = [write_csv(tmp_path / f"f{i}.csv", synthetic_signal(400, seed=i)) for i in range(3)]
    run = train_files(files, TrainConfig(cell="gru", bptt="tbptt", **QUICK), str(tmp_path / "r"),
                      log=_quiet)  # fmt: skip
    assert run.meta["files"] == files
    assert run.metrics["validation_rows"] == 3 * (80 - 1)  # 20 % of each file, minus horizon


def test_horizon(tmp_path, synthetic_csv):
    cfg = TrainConfig(cell="esn", hidden=100, horizon=5)
    run = train_files([synthetic_csv], cfg, str(tmp_path / "r"), log=_quiet)
    assert run.meta["model"]["horizon"] == 5
    assert run.metrics["model"]["rmse"] < run.metrics["persistence"]["rmse"]


def test_refusals(tmp_path, synthetic_csv):
    from edgernn.train.config import ModelConfig

    with pytest.raises(ValueError, match="not causal"):
        ModelConfig(bidirectional=True)
    tiny = write_csv(tmp_path / "tiny.csv", synthetic_signal(10))
    with pytest.raises(DataError, match="too short"):
        train_files([tiny], TrainConfig(cell="lstm", **QUICK), str(tmp_path / "r"), log=_quiet)
