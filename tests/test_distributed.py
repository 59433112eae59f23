"""`torchrun --nproc_per_node=2 -m edgernn train ...` on CPU (gloo): DDP keeps the ranks'
weights identical, rank 0 alone prints and writes, and splitting the global batch over
two processes takes the same optimisation steps as one process."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import synthetic_signal, write_csv

from edgernn.train import TrainConfig, train_files

ARGS = ["--cell", "lstm", "--hidden", "10", "--window", "20", "--burn-in", "4",
        "--batch-size", "7", "--steps-per-epoch", "5", "--epochs", "2", "--seed", "3"]  # fmt: skip


def _torchrun(*args, env_extra=None, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "edgernn", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    for i, n in enumerate((420, 360, 300)):  # three files: ranks parse and validate shares
        write_csv(d / f"dev{i}.csv", synthetic_signal(n, seed=i))
    proc = _torchrun("train", str(d / "dev*.csv"), "--out", str(d / "run"), "--no-progress", *ARGS,
                     env_extra={"EDGERNN_DUMP_WEIGHTS": str(d / "dump")})  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return d, proc


def test_both_ranks_end_with_identical_weights(two_rank_run):
    d, _ = two_rank_run
    r0, r1 = np.load(d / "dump" / "rank0.npz"), np.load(d / "dump" / "rank1.npz")
    assert sorted(r0.files) == sorted(r1.files) and "rnn.weight_hh_l0" in r0.files
    for k in r0.files:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)


def test_rank_0_alone_writes_one_checkpoint_and_prints(two_rank_run):
    d, proc = two_rank_run
    run_files = sorted(f for f in os.listdir(d / "run") if f != "cache")
    assert run_files == ["checkpoint.npz", "metrics.json", "train_state.pt"]  # no temporaries
    assert proc.stderr.count("wrote ") == 1 and proc.stderr.count("data: 3 file(s)") == 1
    assert "x 2 processes" in proc.stderr and "Traceback" not in proc.stderr
    from edgernn.train.checkpoint import load_checkpoint

    weights, meta, _ = load_checkpoint(str(d / "run"))
    assert meta["hardware"]["processes"] == 2 and len(meta["files"]) == 3
    r0 = np.load(d / "dump" / "rank0.npz")
    for k in r0.files:
        np.testing.assert_array_equal(weights[k], r0[k])


def test_two_processes_take_the_steps_of_one(two_rank_run, tmp_path):
    """Same seed, same global batch of 7 windows (4 + 3 per rank): the same weights as a
    single process, up to float rounding of the all-reduce."""
    d, _ = two_rank_run
    keys = ("cell", "hidden", "window", "burn_in", "batch_size", "steps_per_epoch", "epochs",
            "seed")  # fmt: skip
    values = ["lstm", 10, 20, 4, 7, 5, 2, 3]
    cfg = TrainConfig(progress=False, **dict(zip(keys, values)))
    files = sorted(str(p) for p in d.glob("dev*.csv"))
    one = train_files(files, cfg, str(tmp_path / "one"), log=lambda m: None)
    r0 = np.load(d / "dump" / "rank0.npz")
    for k in r0.files:
        np.testing.assert_allclose(r0[k], one.weights[k], atol=2e-5, err_msg=k)


def test_a_data_error_is_reported_once_without_traceback(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,oops\n")
    proc = _torchrun("train", str(bad), "--out", str(tmp_path / "run"), "--no-progress", *ARGS)
    assert proc.returncode != 0
    assert proc.stderr.count("edgernn: error:") == 1, proc.stderr
    assert "'oops' is not a finite number" in proc.stderr
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


@pytest.mark.parametrize("mode", ["window", "tbptt"])
def test_rank_shares_partition_the_global_batch(tmp_path, mode):
    """Each rank's batches are its slice (rank::world) of the one-process batches, with the
    same count and the global loss denominator, so the all-reduced gradient is the same."""
    from edgernn.train.bptt import tbptt_batches, window_batches
    from edgernn.train.data import split_tables
    from edgernn.train.distributed import Dist
    from edgernn.train.logs import load_logs

    files = [write_csv(tmp_path / f"f{i}.csv", synthetic_signal(n, seed=i))
             for i, n in enumerate((300, 260))]  # fmt: skip
    data = split_tables(load_logs(files, str(tmp_path / "cache")), 0.2, 1)
    cfg = TrainConfig(bptt=mode, window=16, burn_in=3, batch_size=5, steps_per_epoch=4)
    make = window_batches if mode == "window" else tbptt_batches

    def batches(rank, world):
        rng = np.random.default_rng(0)
        return list(make(cfg, data, rng, Dist(rank=rank, world=world)))

    whole, shares = batches(0, 1), [batches(r, 2) for r in range(2)]
    assert len(whole) >= 4 and all(len(s) == len(whole) for s in shares)
    for i, b in enumerate(whole):
        for r, share in enumerate(shares):
            np.testing.assert_array_equal(share[i].x, b.x[r::2])
            np.testing.assert_array_equal(share[i].y, b.y[r::2])
            assert share[i].denom == b.denom and share[i].new_sequence == b.new_sequence
        assert shares[0][i].x.shape[0] + shares[1][i].x.shape[0] == b.x.shape[0]
