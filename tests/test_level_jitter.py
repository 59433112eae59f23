"""Shifted training windows (--level-jitter): each window, input and target, moves as a
whole; lanes keep one shift for a whole pass; a forecaster trained so follows a level
regime it never saw in training; auto shifts one-channel forecasters only; where it
cannot apply it is refused, not ignored."""

import numpy as np
import pytest
from conftest import load_benchmark, synthetic_signal, write_csv

from edgernn.cli import main
from edgernn.train import TrainConfig, train_files
from edgernn.train.bptt import tbptt_batches, window_batches
from edgernn.train.config import LEVEL_JITTER_AUTO, level_jitter_for
from edgernn.train.data import split_tables
from edgernn.train.distributed import Dist

QUICK = dict(hidden=16, epochs=4, window=32, burn_in=4, batch_size=16, progress=False)


class _Table:
    def __init__(self, path, values):
        self.path, self.values, self.channels = path, values.astype(np.float32), ["a", "b", "c"]


def _data():
    return split_tables([_Table("f.csv", synthetic_signal(1500))], 0.2, horizon=1)


def _first(batches):
    return next(iter(batches))


def test_each_window_moves_as_a_whole_input_and_target_alike():
    data, ctx = _data(), Dist()
    plain = _first(window_batches(TrainConfig(level_jitter=0.0, **QUICK), data,
                                  np.random.default_rng(0), ctx))  # fmt: skip
    moved = _first(window_batches(TrainConfig(level_jitter=0.5, **QUICK), data,
                                  np.random.default_rng(0), ctx))  # fmt: skip
    shift = moved.x - plain.x  # (B, W, C): the same windows, drawn first
    np.testing.assert_allclose(
        shift, np.broadcast_to(shift[:, :1], shift.shape), atol=1e-5
    )  # constant along time
    np.testing.assert_allclose(moved.y - plain.y, shift, atol=1e-5)  # the target moves too
    assert 0.3 < shift[:, 0].std() < 0.8  # ~N(0, 0.5) training stds, per window and channel


def test_a_lane_keeps_one_shift_for_its_whole_pass():
    data, ctx = _data(), Dist()
    cfg = dict(QUICK, bptt="tbptt", window=16)
    plain = list(tbptt_batches(TrainConfig(level_jitter=0.0, **cfg), data,
                               np.random.default_rng(0), ctx))  # fmt: skip
    moved = list(tbptt_batches(TrainConfig(level_jitter=0.5, **cfg), data,
                               np.random.default_rng(0), ctx))  # fmt: skip
    first_pass = [i for i, b in enumerate(plain) if b.new_sequence][:2]
    chunks = range(first_pass[0], first_pass[1])
    shift = moved[chunks[0]].x[:, :1] - plain[chunks[0]].x[:, :1]  # (lanes, 1, C)
    assert np.abs(shift).max() > 0.05
    for i in chunks:
        np.testing.assert_allclose(moved[i].x - plain[i].x, np.broadcast_to(shift, plain[i].x.shape),
                                   atol=1e-5)  # fmt: skip
        np.testing.assert_allclose(moved[i].y - plain[i].y, moved[i].x - plain[i].x, atol=1e-5)


def _protocol():
    return load_benchmark("heldout_protocol")


def _bias_in_a_new_regime(tmp_path, jitter) -> float:
    """The held-out protocol's traffic stream 3 (quantised counts with a new level regime
    every 500 samples): a forecaster trained on its first 15 % with `edgernn train`'s
    defaults at training seed 2, then its mean one-step error over the 120 samples from
    row 2021 on, a regime higher than the training part's, in sds of the training part's
    one-step change."""
    import torch

    from edgernn.train.config import ModelConfig
    from edgernn.train.model import Forecaster

    x, _, _ = _protocol().make_stream("traffic", 3)
    k = int(0.15 * len(x))
    path = write_csv(tmp_path / f"traffic{jitter}.csv", x[:k, None], names=("value",))
    cfg = TrainConfig(seed=2, level_jitter=jitter, epochs=10, progress=False)
    run = train_files([path], cfg, str(tmp_path / f"r{jitter}"), log=lambda m: None)
    net = Forecaster(ModelConfig(**run.meta["model"]))
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in run.weights.items()})
    mean, std = (np.asarray(run.meta["norm"][q], dtype=np.float32) for q in ("mean", "std"))
    with torch.no_grad():
        xn = torch.from_numpy((x[:, None] - mean) / std).float()[None]
        forecast = net.eval().forward_normalised(xn)[0][0, :, 0].numpy() * std[0] + mean[0]
    error = x[2021:2141] - forecast[2020:2140]  # row t's forecast is for t + 1
    return float(error.mean() / np.diff(x[:k]).std())


def test_a_forecaster_trained_on_shifted_windows_follows_a_new_regime(tmp_path):
    # Found on the held-out protocol: without shifted windows this seed's forecaster keeps
    # pulling its forecasts back towards the training part's levels, and the whole regime
    # scored as one long false alarm (120 rows); with them it follows the regime.
    assert TrainConfig().level_jitter == "auto"
    assert abs(_bias_in_a_new_regime(tmp_path, "auto")) < 0.3
    assert _bias_in_a_new_regime(tmp_path, 0.0) > 0.6


def test_auto_shifts_one_channel_only():
    auto = TrainConfig()
    assert level_jitter_for(auto, 1) == LEVEL_JITTER_AUTO > 0
    assert level_jitter_for(auto, 4) == 0.0  # the channels' levels against each other count
    assert level_jitter_for(TrainConfig(level_jitter=0.5), 4) == 0.5  # asked for: applied
    assert level_jitter_for(TrainConfig(cell="esn"), 1) == 0.0  # a ridge readout: none
    assert level_jitter_for(TrainConfig(task="regress", targets=["c"]), 1) == 0.0


@pytest.mark.parametrize("flags", [["--cell", "esn"], ["--task", "regress", "--target", "c"]])
def test_refused_where_it_cannot_apply(tmp_path, capsys, flags):
    path = write_csv(tmp_path / "s.csv", synthetic_signal(300))
    rc = main(["train", path, "--out", str(tmp_path / "r"), "--level-jitter", "0.5", *flags])
    assert rc != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--level-jitter applies to lstm, gru and rnn forecasters" in err[0]


@pytest.mark.parametrize("value", ["-1", "some", "nan"])
def test_a_bad_jitter_is_a_usage_error(tmp_path, capsys, value):
    path = write_csv(tmp_path / "s.csv", synthetic_signal(300))
    with pytest.raises(SystemExit) as e:
        main(["train", path, "--out", str(tmp_path / "r"), "--level-jitter", value])
    assert e.value.code == 2 and "--level-jitter" in capsys.readouterr().err
