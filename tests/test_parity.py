"""Streaming the exported graph equals PyTorch on the full sequence, for every cell
and depth; forecasts are causal; a stream split and resumed equals the unbroken run."""

import numpy as np
import pytest
import torch

from edgernn.runtime import Model

CASES = [(c, n) for c in ("rnn", "rnn-relu", "lstm", "gru") for n in (1, 2)]
TOL = 1e-5


def _inputs(model, steps=80, batch=1, seed=0):
    rng = np.random.default_rng(seed)
    mean, std = model.mean.numpy(), model.std.numpy()
    return (rng.standard_normal((batch, steps, model.config.n_channels)) * std + mean).astype(
        np.float32
    )  # (B, T, C) raw units


def _random_state(model, batch, seed=1):
    rng = np.random.default_rng(seed)
    shape = (model.config.layers, batch, model.config.hidden)
    return [(0.5 * rng.standard_normal(shape)).astype(np.float32) for _ in range(model.n_state)]


@pytest.mark.parametrize("case", CASES, ids=[f"{c}-{n}layer" for c, n in CASES])
def test_streaming_equals_full_sequence(exported_models, case):
    net, path = exported_models[case]
    runtime = Model(path)
    x = _inputs(net)
    state0 = _random_state(net, 1)
    with torch.no_grad():
        y_ref, final_ref = net(torch.from_numpy(x), tuple(torch.from_numpy(s) for s in state0))
    stream = runtime.stream(state={s.input: v[:, 0] for s, v in zip(runtime.state_specs, state0)})
    y = np.stack([stream.step(row) for row in x[0]])
    std = net.std.numpy()
    assert np.max(np.abs((y - y_ref[0].numpy()) / std)) < TOL
    for spec, ref in zip(runtime.state_specs, final_ref):
        assert np.max(np.abs(stream.state[spec.input] - ref[:, 0].numpy())) < TOL
    assert np.ptp(y_ref.numpy()) > 0  # the check compares something that moves


@pytest.mark.parametrize("case", CASES, ids=[f"{c}-{n}layer" for c, n in CASES])
def test_future_inputs_never_change_past_forecasts(exported_models, case):
    _, path = exported_models[case]
    model = Model(path)
    x = _inputs(exported_models[case][0])[0]
    y = model.stream().run(x)
    x2 = x.copy()
    x2[50:] = x2[50:] * -3.0 + 7.0  # rewrite the future
    y2 = model.stream().run(x2)
    np.testing.assert_array_equal(y[:50], y2[:50])
    assert not np.allclose(y[50:], y2[50:])


@pytest.mark.parametrize("case", CASES, ids=[f"{c}-{n}layer" for c, n in CASES])
def test_split_and_resume_equals_unbroken(exported_models, case):
    _, path = exported_models[case]
    model = Model(path)
    x = _inputs(exported_models[case][0])[0]
    whole = model.stream().run(x)
    for cut in (1, 17, 63):
        first = model.stream()
        head = first.run(x[:cut])
        saved = {k: v.copy() for k, v in first.state.items()}
        resumed = Model(path).stream(state=saved)  # a fresh process would do the same
        tail = resumed.run(x[cut:])
        np.testing.assert_allclose(np.concatenate([head, tail]), whole, rtol=0, atol=1e-6)


def test_batched_streams_equal_separate_streams(exported_models):
    net, path = exported_models[("lstm", 2)]
    model = Model(path)
    x = _inputs(net, steps=30, batch=5)  # (B, T, C)
    batched = model.stream(batch=5).run(np.transpose(x, (1, 0, 2)))  # (T, B, C)
    for b in range(5):
        alone = model.stream().run(x[b])
        np.testing.assert_allclose(batched[:, b], alone, rtol=0, atol=1e-5)


def test_reset_returns_to_zero_state(exported_models):
    net, path = exported_models[("gru", 1)]
    model = Model(path)
    x = _inputs(net, steps=10)[0]
    s = model.stream()
    first = s.run(x)
    s.reset()
    np.testing.assert_array_equal(s.run(x), first)
