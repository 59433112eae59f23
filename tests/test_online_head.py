"""The online head (runtime/adapt.py): the forecaster's readout learnt on the device.

Contract: the features are the last layer's h on every backend, in run() and step();
chunked and per-sample use give the same forecasts; a saved state resumes exactly;
samples learnt with weight 0 change nothing; on a drifting stream the corrected
forecasts beat the trained ones; bad input is a one-line InputError.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgernn.errors import InputError
from edgernn.runtime import Model, adapt
from edgernn.runtime.adapt import OnlineHead


@pytest.fixture(params=["c", "numpy"])
def products(request, monkeypatch):
    """The head's products by the compiled kernel (where it builds) or numpy's BLAS."""
    if request.param == "numpy":
        monkeypatch.setattr(adapt, "_head_library", lambda: None)
    elif adapt._head_library() is None:
        pytest.skip("no compiled kernel here")
    return request.param


def _stream(model: Model, n: int, seed: int = 0, drift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mean = np.asarray(model.meta.norm_mean)
    std = np.asarray(model.meta.norm_std)
    t = np.arange(n)[:, None]
    x = mean + std * (np.sin(t / 7.0 + np.arange(model.n_channels)) + 0.1 * rng.standard_normal((n, model.n_channels)))
    x += drift * std * t / n  # a slow normal drift of the level
    return x.astype(np.float32)


def _per_sample(head: OnlineHead, X, Y, H, w) -> np.ndarray:
    out = np.empty(Y.shape)
    for t in range(len(X)):
        head.learn(X[t : t + 1], w[t : t + 1])
        out[t] = head.correct(Y[t : t + 1], H[t : t + 1])[0]
    return out


@pytest.mark.parametrize("backend", ["c", "numpy", "onnxruntime"])
@pytest.mark.parametrize("key", [("lstm", 2), ("gru", 1), ("rnn", 1)])
def test_features_are_the_last_layers_h_on_every_backend(exported_models, backend, key):
    torch_model, path = exported_models[key]
    try:
        model = Model(path, backend=backend)
    except Exception as e:  # a backend this machine lacks
        pytest.skip(f"{backend}: {e}")
    X = _stream(model, 40)
    rng = np.random.default_rng(1)
    start = {
        name: rng.uniform(-0.5, 0.5, arr.shape).astype(np.float32)
        for name, arr in model.stream().state.items()
    }  # a random non-zero state
    Y, H = model.stream(state=start).run_features(X)
    stream = model.stream(state=start)
    for t in range(len(X)):
        y = stream.step(X[t])
        np.testing.assert_array_equal(y, Y[t])
        np.testing.assert_array_equal(stream.features(), H[t])
    first = next(iter(stream.state.values()))  # state 0 is h: (layers, hidden)
    np.testing.assert_array_equal(first[-1], H[-1])


def test_chunked_equals_per_sample_and_resumes_exactly(exported_models, products):
    _, path = exported_models[("lstm", 1)]
    model = Model(path)
    X = _stream(model, 700, drift=3.0)
    Y, H = model.stream().run_features(X)
    w = (np.random.default_rng(2).random(len(X)) > 0.1).astype(float)
    whole = _per_sample(OnlineHead.for_model(model), X, Y, H, w)
    # blocks of any size: correct() the block's forecasts, then learn() its samples
    head = OnlineHead.for_model(model)
    chunked, t, rng = np.empty(Y.shape), 0, np.random.default_rng(3)
    while t < len(X):
        n = min(int(rng.integers(1, 80)), len(X) - t, head.room)
        chunked[t : t + n] = head.correct(Y[t : t + n], H[t : t + n])
        head.learn(X[t : t + n], w[t : t + n])
        t += n
    # the block form scores a sample before it is learnt, as the per-sample form: equal
    np.testing.assert_array_equal(chunked, whole)
    assert np.abs(whole - Y).max() > 0  # the correction did something
    for cut in (1, 63, 64, 65, 400):
        first = OnlineHead.for_model(model)
        got = list(_per_sample(first, X[:cut], Y[:cut], H[:cut], w[:cut]))
        second = OnlineHead.for_model(model)
        second.load_state_dict(json.loads(json.dumps(first.state_dict())))
        got += list(_per_sample(second, X[cut:], Y[cut:], H[cut:], w[cut:]))
        np.testing.assert_array_equal(np.array(got), whole)


def test_weight_zero_samples_teach_nothing(exported_models):
    _, path = exported_models[("gru", 1)]
    model = Model(path)
    X = _stream(model, 300)
    Y, H = model.stream().run_features(X)
    w = np.ones(len(X))
    w[100:200] = 0.0
    spoiled = X.copy()
    spoiled[100:200] += 50.0 * np.asarray(model.meta.norm_std, dtype=np.float32)  # a fault
    clean = _per_sample(OnlineHead.for_model(model), X, Y, H, w)
    faulty = _per_sample(OnlineHead.for_model(model), spoiled, Y, H, w)
    np.testing.assert_array_equal(clean, faulty)


def test_online_head_follows_a_drifting_stream(exported_models):
    _, path = exported_models[("lstm", 1)]
    model = Model(path)
    X = _stream(model, 3000, drift=4.0)
    Y, H = model.stream().run_features(X)
    F = _per_sample(OnlineHead.for_model(model), X, Y, H, np.ones(len(X)))
    late = slice(1500, len(X) - 1)
    trained = np.abs(X[1:][late] - Y[:-1][late]).mean()
    online = np.abs(X[1:][late] - F[:-1][late]).mean()
    assert online < 0.75 * trained  # random weights: features that say little


def test_bad_input_is_one_line(exported_models):
    _, path = exported_models[("lstm", 1)]
    model = Model(path)
    head = OnlineHead.for_model(model)
    with pytest.raises(InputError, match="do not match"):
        head.correct(np.zeros((2, model.n_channels)), np.zeros((2, 3)))
    with pytest.raises(InputError, match="were not made"):
        head.learn(np.zeros((5, model.n_channels)))
    with pytest.raises(InputError, match="std"):
        OnlineHead(4, 2, [1.0, 0.0])
    other = OnlineHead(model.meta.hidden, model.n_channels, model.meta.norm_std, block=16)
    with pytest.raises(InputError, match="another model or settings"):
        head.load_state_dict(other.state_dict())
    state = head.state_dict()
    state["A"] = "garbage"
    with pytest.raises(InputError, match="damaged online head state"):
        head.load_state_dict(state)


def test_csv_chunks_equal_the_live_monitor(exported_models, tmp_path):
    """run --csv (chunks of 50 rows, pieces cut at the head's solves) writes the
    forecasts and scores a live Monitor makes sample by sample, online head on."""
    import csv

    from edgernn.runtime.csvrun import run_csv
    from edgernn.runtime.detector import Detector
    from edgernn.runtime.monitor import Monitor

    _, path = exported_models[("lstm", 1)]
    model = Model(path)
    X = _stream(model, 400, drift=3.0)
    X[300:305] += 40.0 * np.asarray(model.meta.norm_std, dtype=np.float32)  # flagged: not learnt
    inp = tmp_path / "in.csv"
    with open(inp, "w") as fh:
        fh.write(",".join(model.channels) + "\n")
        for row in X:
            fh.write(",".join(repr(float(v)) for v in row) + "\n")
    out = tmp_path / "out.csv"
    run_csv(model, str(inp), str(out), detector=Detector(channels=model.channels, warmup=50),
            chunk_rows=50)  # fmt: skip
    rows = list(csv.DictReader(open(out)))
    monitor = Monitor(model, Detector(channels=model.channels, warmup=50))
    assert monitor.head is not None
    live = [monitor.process(x) for x in X]
    got = np.array([[float(r[f"{c}_forecast"]) for c in model.channels] for r in rows])
    want = np.array([r["forecast"] for r in live])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # the CSV's float32 text
    assert [r["anomaly"] for r in rows] == [str(r.get("anomaly") or 0) for r in live]
    assert any(r["anomaly"] == "1" for r in rows[300:306])
    plain = model.stream().run(X)
    assert np.abs(want - plain).max() > 1e-3


def test_step_is_learn_then_correct(exported_models, products):
    _, path = exported_models[("gru", 1)]
    model = Model(path)
    X = _stream(model, 300, drift=2.0)
    Y, H = model.stream().run_features(X)
    w = (np.random.default_rng(4).random(len(X)) > 0.2).astype(float)
    whole = _per_sample(OnlineHead.for_model(model), X, Y, H, w)
    head = OnlineHead.for_model(model)
    stepped = np.array([head.step(X[t], Y[t], H[t], w[t]) for t in range(len(X))])
    np.testing.assert_array_equal(stepped, whole)


def test_learn_weight_skips_flagged_samples():
    from edgernn.runtime.adapt import learn_weight, learn_weights

    assert learn_weight(None) == 1.0  # no verdict: warm-up, no detector
    assert learn_weight({"score": None, "anomaly": 0, "onset": 0}) == 1.0
    assert learn_weight({"score": 3.9, "anomaly": 0, "threshold": 4.0}) == 1.0
    assert learn_weight({"score": 9.0, "anomaly": 1, "threshold": 4.0}) == 0.0
    np.testing.assert_array_equal(learn_weights([True, False, True]), [0.0, 1.0, 0.0])


def test_a_huge_sample_does_not_spoil_the_head(exported_models):
    """A sample near float32's limit (flagged, weight 0) gives an inf residual: it adds
    nothing, and the corrections stay finite."""
    _, path = exported_models[("lstm", 1)]
    model = Model(path)
    X = _stream(model, 300)
    Y, H = model.stream().run_features(X)
    w = np.ones(len(X))
    X[100] = 3e38
    Y[100] = -np.inf  # the model's float32 forecast overflowed: an inf residual
    w[100] = 0.0
    head = OnlineHead.for_model(model)
    F = _per_sample(head, X, Y, H, w)
    assert np.isfinite(head.A).all() and np.isfinite(F[np.arange(len(F)) != 100]).all()


def test_compiled_products_are_the_reference_sums_to_the_bit():
    """kernel.c's head_rows: each sum in order, no fused multiply-add, so a row alone
    and the same row in a block of any size give the same bits; close to BLAS."""
    lib = adapt._head_library()
    if lib is None:
        pytest.skip("no compiled kernel here")
    rng = np.random.default_rng(11)
    for n, d, c in ((1, 33, 8), (64, 33, 8), (7, 65, 3), (64, 129, 1)):
        phi = rng.standard_normal((n, d)) * np.exp(rng.uniform(-20, 20, (n, d)))
        A = rng.standard_normal((d, c)) * np.exp(rng.uniform(-20, 20, (d, c)))
        got = np.empty((n, c))
        lib.edgernn_head_rows(phi.ctypes.data, A.ctypes.data, n, d, c, got.ctypes.data)
        np.testing.assert_array_equal(got, adapt.head_rows_reference(phi, A))
        alone = np.empty((1, c))
        row = np.ascontiguousarray(phi[n // 2 : n // 2 + 1])
        lib.edgernn_head_rows(row.ctypes.data, A.ctypes.data, 1, d, c, alone.ctypes.data)
        np.testing.assert_array_equal(alone[0], got[n // 2])
        scale = np.abs(phi) @ np.abs(A)
        assert (np.abs(got - phi @ A) <= 1e-12 * scale).all()
    # the corrected forecast: float32(base + std * (A^T phi))
    phi, A = rng.standard_normal(33), rng.standard_normal((33, 8))
    std, base = rng.uniform(0.1, 10, 8), rng.standard_normal(8)
    out = np.empty(8, dtype=np.float32)
    lib.edgernn_head_forecast(phi.ctypes.data, A.ctypes.data, std.ctypes.data, base.ctypes.data,
                              33, 8, out.ctypes.data)  # fmt: skip
    corr = adapt.head_rows_reference(phi[None], A)[0]
    corr *= std
    corr += base
    np.testing.assert_array_equal(out, corr.astype(np.float32))


def test_solving_ahead_changes_no_bit_and_resumes(exported_models, products):
    """solve_ahead() after each sample (the live loop's idle time) gives the forecasts,
    sums and state of step() alone, also through a state saved just after it, then
    continued by step() or by the CSV path's run_chunk()."""
    _, path = exported_models[("lstm", 1)]
    model = Model(path)
    X = _stream(model, 400, drift=2.0)
    Y, H = model.stream().run_features(X)
    w = (np.random.default_rng(5).random(len(X)) > 0.1).astype(float)
    plain = OnlineHead.for_model(model)
    want = np.array([plain.step(X[t], Y[t], H[t], w[t]) for t in range(len(X))])
    ahead, got = OnlineHead.for_model(model), []
    for t in range(len(X)):
        got.append(ahead.step(X[t], Y[t], H[t], w[t]))
        ahead.solve_ahead()
    np.testing.assert_array_equal(np.array(got), want)
    assert json.dumps(ahead.state_dict()).replace("true", "false") == json.dumps(
        plain.state_dict()
    ).replace("true", "false")
    cut = 128  # the block starts here: saved after its solve was made ahead
    first = OnlineHead.for_model(model)
    for t in range(cut):
        first.step(X[t], Y[t], H[t], w[t])
    first.solve_ahead()
    saved = json.loads(json.dumps(first.state_dict()))
    assert saved["solved"] is True
    resumed = OnlineHead.for_model(model)
    resumed.load_state_dict(saved)
    rest = np.array([resumed.step(X[t], Y[t], H[t], w[t]) for t in range(cut, len(X))])
    np.testing.assert_array_equal(rest, want[cut:])
    chunked = OnlineHead.for_model(model)
    chunked.load_state_dict(saved)
    Yc = Y[cut:].copy()
    chunked.run_chunk(Yc, H[cut:], X[cut:], lambda a, b: w[cut + a : cut + b])
    np.testing.assert_array_equal(Yc, want[cut:].astype(np.float32))
