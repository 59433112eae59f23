"""Stream.step's fast call into the C step (cstep's CPython extension): the same
forecasts and states as the ctypes call, every other input declined to the general
path, NaN refused with the state untouched."""

from __future__ import annotations

import numpy as np
import pytest

from edgernn.errors import InputError
from edgernn.runtime import cstep
from edgernn.runtime.model import Model
from edgernn.runtime.numpy_backend import Layer, Network


@pytest.fixture(scope="module")
def fastcall():
    module = cstep.fastcall_module()
    if module is None:
        pytest.skip("no Python headers or no compiler here: Stream.step uses ctypes")
    return module


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    pytest.importorskip("torch")
    import torch

    from edgernn.export.onnx_export import export_onnx
    from edgernn.train.model import Forecaster, ModelConfig

    torch.manual_seed(1)
    net = Forecaster(ModelConfig(n_channels=3, cell="lstm", hidden=16, channels=["a", "b", "c"]))
    net.set_normalisation(np.full(3, 2.0), np.full(3, 3.0))
    path = tmp_path_factory.mktemp("fastcall") / "m.onnx"
    export_onnx(net, path)
    return str(path)


def _without_fastcall(stream):
    stream._fast_step = stream._fast_bound = None
    return stream


@pytest.mark.parametrize("batch", [None, 4])
def test_fast_step_equals_the_ctypes_step(fastcall, model_path, batch):
    model = Model(model_path, backend="c")
    fast, slow = model.stream(batch=batch), _without_fastcall(model.stream(batch=batch))
    assert fast._fast_step is not None
    shape = (50, 3) if batch is None else (50, batch, 3)
    X = (np.random.default_rng(2).standard_normal(shape) * 3 + 2).astype(np.float32)
    for x in X:
        y = fast.step(x)
        np.testing.assert_array_equal(y, slow.step(x))
        assert y.shape == x.shape and y.dtype == np.float32
        y[...] = 1e9  # a copy: the stream's own buffer is untouched
    for name, value in fast.state.items():
        np.testing.assert_array_equal(value, slow.state[name])
    np.testing.assert_array_equal(fast.run(X[:5]), slow.run(X[:5]))


def test_other_inputs_take_the_general_path(fastcall, model_path):
    model = Model(model_path, backend="c")
    s, ref = model.stream(), _without_fastcall(model.stream())
    x32 = np.array([1.0, 2.0, 3.0], np.float32)
    wide = np.zeros((3, 2), np.float32)
    wide[:, 0] = x32
    cases = [x32.astype(np.float64), [1.0, 2.0, 3.0], wide[:, 0], x32.astype(">f4"),
             np.array([1, 2, 3], np.int32), x32]  # fmt: skip
    for x in cases:
        np.testing.assert_array_equal(s.step(x), ref.step(x))
    for bad in (np.zeros(4, np.float32), np.zeros((1, 3), np.float32), "abc", None):
        with pytest.raises(InputError):
            s.step(bad)
    np.testing.assert_array_equal(s.step(x32), ref.step(x32))  # nothing moved on a refusal


def test_nan_is_refused_and_the_state_untouched(fastcall, model_path):
    s = Model(model_path, backend="c").stream()
    s.step(np.ones(3, np.float32))
    before, cur = s.state, s._cur
    with pytest.raises(InputError, match="NaN or inf"):
        s.step(np.array([1.0, np.nan, 0.0], np.float32))
    assert s._cur == cur
    for name, value in s.state.items():
        np.testing.assert_array_equal(value, before[name])


def test_bind_checks_its_arguments(fastcall):
    with pytest.raises(ValueError):
        fastcall.bind(0, 1, 1, (3,))
    with pytest.raises(TypeError):
        fastcall.bind(1, 1, 1, [3])
    with pytest.raises(TypeError):
        fastcall.step(1, 2)


def test_a_reference_network_through_the_fast_call(fastcall):
    """A CStep without a Model: the fast call over its own bound buffers."""
    rng = np.random.default_rng(0)
    k = 1 + 8
    net = Network(
        cell="rnn", nonlinearity="tanh", hidden=8,
        layers=[Layer(rng.standard_normal((k, 8)).astype(np.float32) / 3,
                      np.zeros(8, np.float32), 8)],
        mean=np.zeros(1, np.float32), std=np.ones(1, np.float32),
        head_weight=rng.standard_normal((8, 1)).astype(np.float32),
        head_bias=np.zeros(1, np.float32), residual=True,
    )  # fmt: skip
    step = cstep.CStep(net)
    x, y = np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32)
    states = tuple(np.zeros((1, 1, 1, 8), np.float32) for _ in range(2))
    ctx, address = step.bind(x, y, states)
    entry = cstep.ctypes.cast(step.lib.edgernn_step, cstep.ctypes.c_void_p).value
    bound = fastcall.bind(entry, address, x.ctypes.data, (1,))
    assert fastcall.step(bound, np.array([0.5], np.float32), 0) == 0
    assert x[0, 0] == 0.5 and np.isfinite(y).all() and states[1].any()
    assert fastcall.step(bound, np.array([np.inf], np.float32), 1) == 1
    assert fastcall.step(bound, np.array([0.5]), 1) == -1
    assert fastcall.step(bound, np.array([0.5, 1.0], np.float32), 1) == -1


def test_f32_tokens_are_recordwriter_tokens(fastcall):
    import warnings

    from edgernn.firmware_bridge.jsonline import json_float

    rng = np.random.default_rng(9)
    bits = rng.integers(0, 2**32, 40_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    scaled = rng.standard_normal(40_000) * 10.0 ** rng.integers(-20, 20, 40_000)
    sensors = 30 + 10 * rng.standard_normal(40_000)
    edges = [0.0, -0.0, 1e-4, 9.99999e-5, 1e-5, 1e15, 1e16, 1.5e16, 1e8, 16777216.0, 43.04,
             3.4028235e38, 1e-38, 0.1, -1.0, np.nan, np.inf]  # fmt: skip
    with np.errstate(invalid="ignore", over="ignore"):  # NaN bit patterns, huge scaled values
        values = np.concatenate([bits, scaled, sensors, edges]).astype(np.float32)
    sure = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for v in values:
            token = fastcall.f32_tokens(np.array([v]))
            if token is not None:  # None: not sure (powers of two, tiny, huge) or not finite
                assert token == json_float(float(v)), v
                sure += 1
        assert sure > 60_000
        row = values[80_000:80_016]  # sensor-like values: all sure
        assert fastcall.f32_tokens(row) == ",".join(json_float(float(v)) for v in row)
    assert fastcall.f32_tokens(np.array([1.0, np.nan], np.float32)) is None
    assert fastcall.f32_tokens(np.zeros(3)) is None  # float64: not its buffer
    assert fastcall.f32_tokens(np.zeros((4, 2), np.float32)[:, 0]) is None  # not contiguous
    assert fastcall.f32_tokens(np.zeros(0, np.float32)) == ""
