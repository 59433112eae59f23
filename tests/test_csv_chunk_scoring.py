"""run --csv's chunk-level scoring: OnlineHead.run_chunk and Detector.score_rows.

Contract: the chunk forms compute what the piece-by-piece calls compute, bit for bit
(the forecasts, the head's state, the verdicts, the events); run_csv writes the same
bytes and stderr whether the detector is scored through score_rows or the piece-by-piece
path a detector without it takes.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr

import numpy as np
import pytest

from edgernn.runtime import Model
from edgernn.runtime.adapt import OnlineHead
from edgernn.runtime.csvrun import run_csv
from edgernn.runtime.detector import Detector


def _data(n: int, hidden: int, channels: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    X = (np.sin(t / 5.0 + np.arange(channels)) + 0.1 * rng.standard_normal((n, channels)))
    Y = X + 0.2 * rng.standard_normal((n, channels)) + 0.5 * t / n  # a drifting residual
    H = np.tanh(rng.standard_normal((n, hidden)) + X[:, :1])
    w = (rng.random(n) > 0.1).astype(float)
    return X.astype(np.float32), Y.astype(np.float32), H.astype(np.float32), w


def _pieces(head: OnlineHead, X, Y, H, w, sizes) -> np.ndarray:
    """The reference: correct() then learn() piece by piece, pieces cut at the solves."""
    out, t = Y.copy(), 0
    for size in sizes:
        stop = min(t + size, len(X))
        while t < stop:
            b = t + min(head.room, stop - t)
            out[t:b] = head.correct(Y[t:b], H[t:b])
            head.learn(X[t:b], w[t:b])
            t = b
    return out


def _chunks(head: OnlineHead, X, Y, H, w, sizes) -> np.ndarray:
    out, t, cuts, first = Y.copy(), 0, [], head.made
    for size in sizes:
        stop = min(t + size, len(X))

        def weigh(a, b, t=t):
            cuts.append((t + a, t + b))
            return w[t + a : t + b]

        head.run_chunk(out[t:stop], H[t:stop], X[t:stop], weigh)
        t = stop
    # each piece ends at a solve or where its chunk ends
    ends = np.cumsum(sizes)
    assert all((first + b) % head.block == 0 or b in ends or b == len(X) for _, b in cuts)
    return out


@pytest.mark.parametrize("horizon", [1, 3])
@pytest.mark.parametrize("seed", range(3))
def test_run_chunk_equals_correct_and_learn(horizon, seed):
    X, Y, H, w = _data(900, 8, 3, seed)
    rng = np.random.default_rng(10 + seed)
    sizes = [int(s) for s in rng.choice([1, 2, 50, 64, 97, 128, 300], size=40)]
    std = [0.5, 1.0, 2.0]
    want_head = OnlineHead(8, 3, std, horizon=horizon, block=16)
    got_head = OnlineHead(8, 3, std, horizon=horizon, block=16)
    want = _pieces(want_head, X, Y, H, w, sizes)
    got = _chunks(got_head, X, Y, H, w, sizes)
    np.testing.assert_array_equal(got, want)
    assert np.abs(got - Y).max() > 0
    assert got_head.state_dict() == want_head.state_dict()
    stepped = OnlineHead(8, 3, std, horizon=horizon, block=16)  # the live path
    live = [stepped.step(X[t], Y[t], H[t], w[t]) for t in range(len(X))]
    np.testing.assert_array_equal(np.asarray(live, dtype=np.float32), got)


def test_run_chunk_after_a_resumed_state():
    X, Y, H, w = _data(400, 8, 3, 7)
    std = [1.0, 1.0, 1.0]
    whole = OnlineHead(8, 3, std, horizon=2, block=16)
    want = _pieces(whole, X, Y, H, w, [400])
    first = OnlineHead(8, 3, std, horizon=2, block=16)
    got = _chunks(first, X[:123], Y[:123], H[:123], w[:123], [123])
    second = OnlineHead(8, 3, std, horizon=2, block=16)
    second.load_state_dict(first.state_dict())
    rest = _chunks(second, X[123:], Y[123:], H[123:], w[123:], [50, 227])
    np.testing.assert_array_equal(np.concatenate([got, rest]), want)


class _NoRows:
    """The detector without score_rows: run_csv takes its piece-by-piece path."""

    def __init__(self, det: Detector):
        self.det = det

    def score_block(self, *args, **kwargs):
        return self.det.score_block(*args, **kwargs)

    def score_one(self, *args, **kwargs):
        return self.det.score_one(*args, **kwargs)


def _write(path, X, times=None, bad=()):
    with open(path, "w") as fh:
        names = [f"ch{i}" for i in range(X.shape[1])]
        fh.write(",".join((["time"] if times is not None else []) + names) + "\n")
        for i, row in enumerate(X):
            cells = [repr(float(v)) for v in row]
            if i in bad:
                cells[1] = "oops"
            fh.write((f"{times[i]}," if times is not None else "") + ",".join(cells) + "\n")


@pytest.mark.parametrize("timed", [False, True])
@pytest.mark.parametrize("ext", ["csv", "jsonl"])
@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_run_csv_score_rows_equals_the_piece_path(exported_models, tmp_path, timed, ext, backend):
    model = Model(exported_models[("lstm", 1)][1])
    rng = np.random.default_rng(3)
    n = 700
    mean, std = np.asarray(model.meta.norm_mean), np.asarray(model.meta.norm_std)
    X = mean + std * (np.sin(np.arange(n)[:, None] / 6.0 + np.arange(model.n_channels))
                      + 0.1 * rng.standard_normal((n, model.n_channels)))  # fmt: skip
    for at in (200, 350, 351, 352, 500, 640):
        X[at, at % model.n_channels] += 30 * std[at % model.n_channels]
    times = None
    if timed:
        start = np.datetime64("2024-03-01T00:00:00")
        times = [str(start + np.timedelta64(300 * i, "s")).replace("T", " ") for i in range(n)]
        # cells parsed another way, one chunk (97 rows) with pieces of every kind
        times[300] = times[300].replace(" ", "T") + "Z"
        times[330] = "0000-01-01 00:00:00"  # numpy's parse takes it, datetime's does not
    inp = tmp_path / "in.csv"
    _write(inp, X.astype(np.float32), times, bad={5, 77, 401})

    def go(wrap, name):
        det = Detector(channels=model.channels, warmup=60, alarm_every=40, backend=backend)
        out = tmp_path / f"{name}.{ext}"
        with redirect_stderr(io.StringIO()) as err:
            s = run_csv(model, str(inp), str(out), skip_bad=True,
                        detector=_NoRows(det) if wrap else det, chunk_rows=97)  # fmt: skip
        return out.read_bytes(), err.getvalue(), (s.rows, s.forecasts, s.skipped, s.anomalies)

    got, want = go(False, "rows"), go(True, "pieces")
    assert got == want
    assert "opened" in want[1] and want[2][3] > 0


@pytest.mark.parametrize("shape", [(0, 3), (1, 1), (5, 17), (3000, 17)])
def test_float32_repr_lines_suffix_goes_before_each_newline(shape):
    from edgernn.runtime.output import RecordWriter, float32_repr_lines

    rng = np.random.default_rng(shape[0])
    floats = (rng.standard_normal(shape) * 10.0 ** rng.integers(-9, 9, shape)).astype(np.float32)
    if floats.size:
        floats.flat[:: max(1, floats.size // 7)] = np.nan
    cells = rng.integers(0, 10, (shape[0], 2))
    suffix = np.full((shape[0], 4), 44, dtype=np.uint8)
    suffix[:, 1::2] = 48 + cells
    plain = float32_repr_lines(floats).decode().split("\n")[:-1]
    want = "".join(f"{line},{a},{b}\n" for line, (a, b) in zip(plain, cells.tolist()))
    assert float32_repr_lines(floats, suffix).decode() == want
    assert float32_repr_lines(floats, suffix) == float32_repr_lines(floats, suffix.copy())
    # write_block: int cells as an array, one digit each or not, as tuples write them
    for trailing in (cells, cells * 7 - 20):
        texts = []
        for form in (trailing, [tuple(r) for r in trailing.tolist()]):
            out = io.StringIO()
            w = RecordWriter(None, [f"c{i}" for i in range(shape[1])], fmt="csv")
            w._fh = out
            w.write_block(floats, trailing=form, gaps=[0] if shape[0] else [])
            texts.append(out.getvalue())
        assert texts[0] == texts[1]


@pytest.mark.parametrize("seed", range(4))
def test_the_compiled_formatter_writes_numpys_bytes(seed):
    from edgernn.runtime import output

    lib = output._format_kernel()
    if lib is None:
        pytest.skip("no compiled formatter here (no compiler)")
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, 40_000, dtype=np.uint64).astype(np.uint32)
    floats = bits.view(np.float32)  # every exponent, NaNs, infs, subnormals
    floats = np.concatenate([floats, (rng.standard_normal(40_000) * 3).astype(np.float32)])
    cols = 8 + seed
    floats = floats[: floats.size // cols * cols].reshape(-1, cols)
    suffix = np.full((len(floats), 4), 44, dtype=np.uint8)
    suffix[:, 1::2] = 48 + rng.integers(0, 10, (len(floats), 2))
    for s in (None, suffix):
        assert output._repr_lines_c(lib, floats, s) == output._repr_lines_numpy(floats, s)
    assert output.float32_repr_lines(floats) == output._repr_lines_numpy(floats)
