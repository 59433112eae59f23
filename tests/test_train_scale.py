"""Training at scale on one machine: directories/globs of logs read lazily through the
cache, streaming statistics, --resume equal to an uninterrupted run, GPU paths."""

import os

import numpy as np
import pytest
import torch
from conftest import run_cli, synthetic_signal, write_csv

from edgernn.cli import main
from edgernn.errors import DataError
from edgernn.train import TrainConfig, train_files
from edgernn.train import bptt as bptt_module
from edgernn.train import data as data_module
from edgernn.train.checkpoint import load_checkpoint
from edgernn.train.logs import expand_paths, load_logs
from edgernn.train.resume import load_train_state

QUICK = dict(hidden=12, window=24, burn_in=4, batch_size=8, steps_per_epoch=6, progress=False)


def _quiet(msg):
    pass


@pytest.fixture
def log_tree(tmp_path):
    """Logs from three devices in two folders, plus a non-CSV file to be ignored."""
    for dev, n, seed in (("dev1", 500, 1), ("dev2", 420, 2)):
        os.makedirs(tmp_path / "logs" / dev)
        write_csv(tmp_path / "logs" / dev / f"{dev}-jan.csv", synthetic_signal(n, seed=seed))
    write_csv(tmp_path / "logs" / "dev2" / "dev2-feb.csv", synthetic_signal(380, seed=3))
    (tmp_path / "logs" / "notes.txt").write_text("not a log\n")
    return tmp_path / "logs"


# ------------------------------------------------------------------------ lazy logs
def test_directories_and_globs_expand_sorted_without_duplicates(log_tree):
    files = expand_paths([str(log_tree)])
    assert [os.path.basename(f) for f in files] == ["dev1-jan.csv", "dev2-feb.csv", "dev2-jan.csv"]
    globbed = expand_paths([str(log_tree / "*" / "*-jan.csv"), files[0]])
    assert globbed == [files[0], files[2]]  # the repeated file is trained on once
    with pytest.raises(DataError, match="matches no files"):
        expand_paths([str(log_tree / "*.parquet")])
    os.makedirs(log_tree / "empty")
    with pytest.raises(DataError, match="no .csv files"):
        expand_paths([str(log_tree / "empty")])


def test_logs_are_memory_mapped_from_a_cache_that_notices_edits(log_tree, tmp_path):
    cache = str(tmp_path / "cache")
    logs = load_logs([str(log_tree)], cache)
    assert all(isinstance(log.values, np.memmap) for log in logs)
    assert logs[0].values.dtype == np.float32 and logs[0].values.shape == (500, 3)
    np.testing.assert_allclose(logs[0].values, synthetic_signal(500, seed=1), atol=1e-5)
    assert len(os.listdir(cache)) == 6  # .npy + .json per file

    edited = synthetic_signal(450, seed=9)
    write_csv(log_tree / "dev1" / "dev1-jan.csv", edited)
    os.utime(log_tree / "dev1" / "dev1-jan.csv", ns=(1, 1))  # a different mtime, for sure
    again = load_logs([str(log_tree)], cache)
    assert again[0].values.shape == (450, 3)  # parsed again, not the stale cache entry
    np.testing.assert_allclose(again[0].values, edited, atol=1e-5)


def test_streaming_statistics_equal_the_whole_array_ones(monkeypatch):
    monkeypatch.setattr(data_module, "STATS_CHUNK", 7)  # many uneven chunks
    rng = np.random.default_rng(0)
    parts = [rng.normal(50.0, 3.0, (n, 2)).astype(np.float32) for n in (30, 5, 64)]
    mean, std = data_module.normalisation(parts)
    whole = np.concatenate(parts).astype(np.float64)
    np.testing.assert_allclose(mean, whole.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(std, whole.std(axis=0), rtol=1e-5)


def test_training_on_a_directory_equals_training_on_its_files(log_tree, tmp_path):
    cfg = TrainConfig(cell="gru", bptt="tbptt", epochs=1, **QUICK)
    a = train_files([str(log_tree)], cfg, str(tmp_path / "a"), log=_quiet)
    b = train_files(expand_paths([str(log_tree)]), cfg, str(tmp_path / "b"), log=_quiet)
    assert a.meta["files"] == b.meta["files"] and len(a.meta["files"]) == 3
    for k in a.weights:
        np.testing.assert_array_equal(a.weights[k], b.weights[k])
    assert os.path.isdir(tmp_path / "a" / "cache")
    assert a.metrics["validation_rows"] == (100 - 1) + (84 - 1) + (76 - 1)


def test_validation_errors_are_subsampled_evenly_when_there_are_many(log_tree, tmp_path):
    logs = load_logs([str(log_tree)], str(tmp_path / "cache"))
    data = data_module.split_tables(logs, 0.2, 1)
    persistence = lambda xn: xn  # noqa: E731  a forecast that is the current sample
    full = data_module.validation_summary(data, persistence, 1, max_errors=10**6)
    sub = data_module.validation_summary(data, persistence, 1, max_errors=50)
    assert full[0] == sub[0] and full[2] == sub[2] == 257  # metrics use every row
    assert len(full[3]) == 257 and len(sub[3]) == 43  # every 6th row: ceil(257 / 6)
    np.testing.assert_array_equal(sub[3], full[3][::6])
    np.testing.assert_allclose(full[0]["rmse"], full[1]["rmse"])  # model == persistence here


# --------------------------------------------------------------------------- resume
RESUME_CASES = {
    "window-dropout": dict(cell="lstm", layers=2, dropout=0.2, **QUICK),
    "tbptt-cosine": dict(cell="gru", bptt="tbptt", schedule="cosine", **dict(QUICK, window=48)),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_resume_after_an_interruption_equals_the_uninterrupted_run(
    log_tree, tmp_path, monkeypatch, case
):
    cfg = TrainConfig(epochs=4, patience=10, **RESUME_CASES[case])
    whole = train_files([str(log_tree)], cfg, str(tmp_path / "whole"), log=_quiet)

    real_epoch, calls = bptt_module.Trainer.train_epoch, []

    def dies_in_epoch_3(self, on_refresh):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a kill during the third epoch
        return real_epoch(self, on_refresh)

    monkeypatch.setattr(bptt_module.Trainer, "train_epoch", dies_in_epoch_3)
    run = str(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        train_files([str(log_tree)], cfg, run, log=_quiet)
    assert load_train_state(run)["epoch"] == 2
    assert not os.path.exists(os.path.join(run, "checkpoint.npz"))
    monkeypatch.setattr(bptt_module.Trainer, "train_epoch", real_epoch)

    resumed = train_files([str(log_tree)], cfg, run, log=_quiet, resume=True)
    for k in whole.weights:
        np.testing.assert_array_equal(resumed.weights[k], whole.weights[k], err_msg=k)

    def losses(r):  # the history less its timings
        return [(h["epoch"], h["train_mse"], h["val_rmse"]) for h in r.metrics["history"]]

    assert losses(resumed) == losses(whole) and len(losses(whole)) == 4
    assert resumed.meta["hardware"]["resumed_after_epoch"] == 2


def test_cli_resume_keeps_the_runs_settings_and_refuses_changes(log_tree, tmp_path, capsys):
    run = str(tmp_path / "run")
    quick = ["--hidden", "10", "--window", "20", "--steps-per-epoch", "4", "--no-progress"]
    assert (
        main(["train", str(log_tree), "--out", run, "--cell", "gru", "--epochs", "1", *quick]) == 0
    )
    # no data, no flags but --epochs: the saved files and settings (gru, hidden 10) go on
    assert main(["train", "--resume", run, "--epochs", "2"]) == 0
    err = capsys.readouterr().err
    assert "resuming after epoch 1 of 2" in err and "trained 2 epochs" in err
    _, meta, _ = load_checkpoint(run)
    assert meta["model"]["cell"] == "gru" and meta["model"]["hidden"] == 10
    assert [h["epoch"] for h in meta["metrics"]["history"]] == [1, 2]

    assert main(["train", "--resume", run, "--hidden", "32"]) == 1
    assert "cannot resume with --hidden 32: the run was trained with 10" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 1
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["train", "--resume", run, "--out", str(tmp_path / "elsewhere")]) == 1
    assert main(["train", "--out", run]) == 1
    assert "give the data" in capsys.readouterr().err


# ----------------------------------------------------------------------- processes
def test_esn_on_a_non_zero_rank_leaves_the_work_to_rank_0(log_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run = train_files([str(log_tree)], TrainConfig(cell="esn", hidden=20), str(tmp_path / "r"),
                      log=_quiet)  # fmt: skip
    assert run.metrics == {} and not os.path.exists(tmp_path / "r")


def test_single_process_training_needs_no_process_group(log_tree, tmp_path):
    import torch.distributed as dist

    run = train_files([str(log_tree)], TrainConfig(cell="rnn", epochs=1, **QUICK),
                      str(tmp_path / "r"), log=_quiet)  # fmt: skip
    assert not dist.is_initialized()
    assert run.meta["hardware"] == {"device": "cpu", "processes": 1, "amp": "off",
                                    "resumed_after_epoch": None}  # fmt: skip
    assert run.metrics["history"][0]["samples_per_s"] > 0


# ----------------------------------------------------------------------------- GPU
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


@needs_gpu
@pytest.mark.parametrize("amp", ["auto", "fp16", "off"])
def test_gpu_training_with_mixed_precision(log_tree, tmp_path, amp):
    cfg = TrainConfig(cell="lstm", epochs=3, device="cuda", amp=amp, **dict(QUICK, hidden=32))
    run = train_files([str(log_tree)], cfg, str(tmp_path / "r"), log=_quiet)
    expected = {"auto": "bfloat16" if torch.cuda.is_bf16_supported() else "float16",
                "fp16": "float16", "off": "off"}[amp]  # fmt: skip
    assert run.meta["hardware"]["device"] == "cuda" and run.meta["hardware"]["amp"] == expected
    assert all(np.isfinite(w).all() for w in run.weights.values())
    assert run.metrics["model"]["rmse"] < run.metrics["persistence"]["rmse"]
    print(f"GPU amp={amp}: {run.metrics['history'][-1]['samples_per_s']:.0f} samples/s")


def test_esn_on_a_directory_trains_without_torch(log_tree, tmp_path):
    proc = run_cli("train", str(log_tree), "--out", str(tmp_path / "r"), "--cell", "esn",
                   "--hidden", "20", pre="import sys\nsys.modules['torch'] = None")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "data: 3 file(s)" in proc.stderr and (tmp_path / "r" / "checkpoint.npz").exists()
