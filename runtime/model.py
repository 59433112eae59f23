"""The model wrapper: load an exported edgernn graph once, step streams through it.

`Model` picks a backend that executes the graph; `Stream` owns the recurrent state
of one stream, or of `batch` independent streams stepped together in one call.

Backends (`Model(path, backend=...)`):
    auto         (default; or $EDGERNN_BACKEND) the fastest that can run this graph:
                 c, else onnxruntime, else numpy
    c            a C step function generated for the network and compiled at load
                 (cstep.py); needs a C compiler the first time a shape is seen
    numpy        the graph's cells executed with numpy (numpy_backend.py): needs
                 neither onnx nor onnxruntime, for boards with no onnxruntime wheel
    onnxruntime  the reference; runs every graph variant (unrolled, quantized)

The c and numpy backends read the .onnx file themselves and prove what they
recognised against a node-by-node numpy interpretation of the graph at load; a
graph they do not understand is refused with a ModelFormatError (auto then uses
onnxruntime).

Any other stateful single-step graph with format-2 metadata (a classifier, a
regressor, an exported nn.Module, a graph made elsewhere and declared with `edgernn
wrap`) runs on onnxruntime or the numpy node interpreter (`Model.generic`): its
constant inputs are fed every step, `Stream.step` returns the primary output and
`stream.outputs` holds every named output, states may have any rank and dtype, and
`model.stream(batch=N)` works where the sample and every state have a batch axis
(`Model.batchable`). Every backend writes into buffers bound once per stream and
alternates two state buffers, so a step allocates nothing but the returned
forecast, and a rejected sample (NaN/inf) leaves the state untouched.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from collections.abc import Mapping
from typing import Optional

import numpy as np

from edgernn.errors import InputError, MissingDependencyError, ModelFormatError
from edgernn.runtime.metadata import (
    STATE_BATCH_AXIS,
    ModelMeta,
    StateSpec,
    concrete,
    graph_shape,
    shape_json,
)

BACKENDS = ("auto", "c", "numpy", "onnxruntime")


def _session_options():
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def onnxruntime_available() -> bool:
    if "onnxruntime" in sys.modules:  # None there means: blocked on purpose
        return sys.modules["onnxruntime"] is not None
    try:
        return importlib.util.find_spec("onnxruntime") is not None
    except (ImportError, ValueError):
        return False


# ----------------------------------------------------------------------------------
# kernels: one per stream, owning its bound buffers


class _Kernel:
    """Buffers of one stream: x (B, C), y (B, C), two states (S, L, B, H).

    step(cur) computes y and s[1 - cur] from x and s[cur]; it returns False, and
    leaves everything untouched, if x holds NaN or inf.
    """

    def __init__(self, meta: ModelMeta, batch: int):
        c = meta.n_channels
        self.x = np.zeros((batch, c), dtype=np.float32)
        self.y = np.zeros((batch, c), dtype=np.float32)
        shape = (len(meta.states), meta.layers, batch, meta.hidden)
        self.s = (np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32))

    def step(self, cur: int) -> bool:
        raise NotImplementedError

    def run(self, X: np.ndarray, Y: np.ndarray, cur: int, H: Optional[np.ndarray] = None) -> None:
        """X (T, *x.shape), Y (T, *y.shape); X already checked finite. The state ends
        in buffer cur ^ (T & 1). H, if given (T, B, hidden): the last layer's h after
        each sample (forecasters only)."""
        for t in range(X.shape[0]):
            self.x[...] = X[t]
            self.step(cur)
            Y[t] = self.y
            cur ^= 1
            if H is not None:
                H[t] = self.s[cur][0, -1]


class _OrtKernel(_Kernel):
    """onnxruntime with I/O binding: two bindings made once (state buffers swapped),
    so a step is one run_with_iobinding call with no feed dict and no allocation."""

    def __init__(self, engine: _OrtEngine, batch: int):
        super().__init__(engine.meta, batch)
        self._session = engine.session
        self._bindings = [self._bind(engine.meta, cur) for cur in (0, 1)]

    def _bind(self, meta: ModelMeta, cur: int):
        binding = self._session.io_binding()
        binding.bind_input(meta.input, "cpu", 0, np.float32, self.x.shape, self.x.ctypes.data)
        binding.bind_output(meta.output, "cpu", 0, np.float32, self.y.shape, self.y.ctypes.data)
        for i, spec in enumerate(meta.states):
            src, dst = self.s[cur][i], self.s[1 - cur][i]
            binding.bind_input(spec.input, "cpu", 0, np.float32, src.shape, src.ctypes.data)
            binding.bind_output(spec.output, "cpu", 0, np.float32, dst.shape, dst.ctypes.data)
        return binding

    def step(self, cur: int) -> bool:
        if not np.isfinite(self.x).all():
            return False
        try:
            self._session.run_with_iobinding(self._bindings[cur])
        except Exception as e:  # onnxruntime's own types: a graph unlike its metadata
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFormatError(f"the graph failed to run as its metadata describes ({first[:200]})") from e
        return True


class _NumpyKernel(_Kernel):
    def __init__(self, engine: _NumpyEngine, batch: int):
        from edgernn.runtime.numpy_backend import fused_step

        super().__init__(engine.meta, batch)
        self._net = engine.net
        self._fused_step = fused_step

    def step(self, cur: int) -> bool:
        if not np.isfinite(self.x).all():
            return False
        self._fused_step(self._net, self.x, self.s[cur], self.s[1 - cur], self.y)
        return True


class _InterpreterKernel(_Kernel):
    """Node-by-node numpy execution: graphs with no recognisable cells (unrolled)."""

    def __init__(self, engine: _NumpyEngine, batch: int):
        super().__init__(engine.meta, batch)
        self._interp = engine.interpreter
        meta = engine.meta
        self._input = meta.input
        self._state_inputs = [s.input for s in meta.states]
        self._outputs = [meta.output] + [s.output for s in meta.states]

    def step(self, cur: int) -> bool:
        if not np.isfinite(self.x).all():
            return False
        feeds = {self._input: self.x, **dict(zip(self._state_inputs, self.s[cur]))}
        y, *states = self._interp.run(feeds, self._outputs)
        self.y[...] = y
        for i, new in enumerate(states):
            self.s[1 - cur][i] = new
        return True


_FLOAT32 = np.dtype(np.float32)  # a singleton: step's fast path compares identity
# The two values of `cur` as ready-made C ints (Stream.step's direct call converts nothing).
_C_CUR = (ctypes.c_int(0), ctypes.c_int(1))


class _CKernel(_Kernel):
    def __init__(self, engine: _CEngine, batch: int):
        super().__init__(engine.meta, batch)
        self._ctx, address = engine.cstep.bind(self.x, self.y, self.s)
        self._step = engine.cstep.lib.edgernn_step
        self._run = engine.cstep.lib.edgernn_run
        self._run_features = engine.cstep.lib.edgernn_run_features
        self._address = address
        # The same C function for Stream.step's direct call, with a ready c_void_p and
        # c_int: no argtypes (ctypes converts no argument) and the GIL kept over a call
        # this short (PYFUNCTYPE): about 0.15 us of each step. self._step (the library's
        # own function object) keeps the library loaded as long as this kernel.
        entry = ctypes.cast(self._step, ctypes.c_void_p).value
        self.direct_step = ctypes.PYFUNCTYPE(ctypes.c_int)(entry)
        self.direct_ctx = ctypes.c_void_p(address)
        self.step_address = entry
        # Faster still where Python's headers are installed: cstep's fast-call extension
        # takes the sample itself (Stream binds it to the sample's shape).
        self.fastcall = engine.cstep.fastcall()

    def step(self, cur: int) -> bool:
        return self._step(self._address, cur) == 0

    def run(self, X: np.ndarray, Y: np.ndarray, cur: int, H: Optional[np.ndarray] = None) -> None:
        if H is None:
            self._run(self._address, cur, X.shape[0], X.ctypes.data, Y.ctypes.data)
        else:
            self._run_features(
                self._address, cur, X.shape[0], X.ctypes.data, Y.ctypes.data, H.ctypes.data
            )


class _GraphKernel:
    """Any format-2 graph (not one of our forecasters): the sample, the constants and the
    states fed, every named output and next state written into buffers bound once per
    stream. As in the forecaster kernels, two state buffer sets alternate, so a sample
    refused as NaN/inf, or a failed run, leaves the state untouched.

    x, y (the primary output), out (name -> buffer), s (two dicts name -> buffer), all
    in the graph's shapes (a batch axis of 1 for an unbatched stream).
    """

    def __init__(self, engine, batch: int):
        meta = engine.meta
        self.meta, self.source = meta, engine.path
        self.x = np.zeros(graph_shape(engine.input_shape, batch), engine.dtype(meta.input))
        self._check_x_finite = self.x.dtype.kind == "f"
        self.consts = {c.name: c.array(batch) for c in meta.consts}
        self.s = tuple(
            {s.input: np.zeros(graph_shape(s.shape, batch), s.dtype) for s in meta.states}
            for _ in range(2)
        )
        self.out = {
            o.name: np.zeros(graph_shape(o.shape, batch), engine.dtype(o.name))
            for o in meta.outputs
        }
        self.y = self.out[meta.output]

    def step(self, cur: int) -> bool:
        if self._check_x_finite and not np.isfinite(self.x).all():
            return False
        self._step(cur)
        return True

    def _step(self, cur: int) -> None:
        raise NotImplementedError

    run = _Kernel.run  # the same step-by-step loop over (T, *x.shape) -> (T, *y.shape)

    def _failed(self, e: Exception) -> ModelFormatError:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return ModelFormatError(
            f"{self.source}: the graph failed to run as its metadata describes ({first[:200]})"
        )


class _OrtGraphKernel(_GraphKernel):
    """onnxruntime with I/O binding: every input and output bound once per state buffer."""

    def __init__(self, engine: _OrtEngine, batch: int):
        super().__init__(engine, batch)
        self._session = engine.session
        self._bindings = [self._bind(cur) for cur in (0, 1)]

    def _bind(self, cur: int):
        binding = self._session.io_binding()
        fed = {self.meta.input: self.x, **self.consts, **self.s[cur]}
        for name, arr in fed.items():
            binding.bind_input(name, "cpu", 0, arr.dtype, arr.shape, arr.ctypes.data)
        written = dict(self.out)
        written.update({s.output: self.s[1 - cur][s.input] for s in self.meta.states})
        for name, arr in written.items():
            binding.bind_output(name, "cpu", 0, arr.dtype, arr.shape, arr.ctypes.data)
        return binding

    def _step(self, cur: int) -> None:
        try:
            self._session.run_with_iobinding(self._bindings[cur])
        except Exception as e:  # onnxruntime raises its own unrelated types
            raise self._failed(e) from e


class _InterpreterGraphKernel(_GraphKernel):
    """The numpy node interpreter: a feed dict per step, results copied into the buffers
    (shape-checked, so a graph that disagrees with its metadata is an error, not a
    silent broadcast)."""

    def __init__(self, engine: _NumpyEngine, batch: int):
        super().__init__(engine, batch)
        self._interp = engine.interpreter
        self._names = list(self.out) + [s.output for s in self.meta.states]

    def _step(self, cur: int) -> None:
        new = self.s[1 - cur]
        targets = list(self.out.values()) + [new[s.input] for s in self.meta.states]
        feeds = {self.meta.input: self.x, **self.consts, **self.s[cur]}
        results = self._interp.run(feeds, self._names, keep_dtype=True)
        for name, value, buf in zip(self._names, results, targets):
            if value.shape != buf.shape:
                raise ModelFormatError(
                    f"{self.source}: the graph's {name!r} has shape {list(value.shape)}, "
                    f"its metadata says {list(buf.shape)}"
                )
            buf[...] = value


# ----------------------------------------------------------------------------------
# engines: one per Model


class _OrtEngine:
    name = "onnxruntime"

    def __init__(self, path: str):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise MissingDependencyError(
                "onnxruntime is not installed (or not importable here): use backend='c' or "
                "'numpy', or install it: pip install onnxruntime"
            ) from e
        try:
            self.session = ort.InferenceSession(
                path, sess_options=_session_options(), providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises several unrelated types here
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFormatError(
                f"{path} is not a loadable ONNX model ({first_line[:160]})"
            ) from e
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        self.path = path
        self.meta = ModelMeta.from_props(props, source=path)
        ios = self.session.get_inputs() + self.session.get_outputs()
        self.inputs = {i.name: i.shape for i in self.session.get_inputs()}
        self.outputs = {o.name: o.shape for o in self.session.get_outputs()}
        self._types = {v.name: v.type for v in ios}
        self.generic = not is_plain_forecaster(self.meta)
        self.input_shape = sample_shape(self.inputs.get(self.meta.input, [None, None]), self.meta)
        if self.generic:
            _check_interface(path, self.meta, self.inputs, self.outputs)
            self._check_dtypes()

    def dtype(self, name: str) -> np.dtype:
        return ORT_DTYPES.get(self._types.get(name, ""), np.dtype(np.float32))

    def _check_dtypes(self) -> None:
        declared = {s.input: s.dtype for s in self.meta.states}
        declared.update({s.output: s.dtype for s in self.meta.states})
        declared.update({c.name: c.dtype for c in self.meta.consts})
        for name, dtype in declared.items():
            if self.dtype(name) != np.dtype(dtype):
                raise ModelFormatError(
                    f"{self.path}: {name!r} is {self._types.get(name)} in the graph, "
                    f"its metadata says {dtype}"
                )

    def kernel(self, batch: int) -> _Kernel | _GraphKernel:
        if self.generic:
            return _OrtGraphKernel(self, batch)
        return _OrtKernel(self, batch)


class _NumpyEngine:
    """The numpy backend: the fused Network when the graph is recognised, else the
    node-by-node interpreter (slower, same results)."""

    name = "numpy"

    def __init__(self, path: str, require_network: bool = False):
        from edgernn.runtime import numpy_backend as nb

        parsed = nb.load_onnx(path)
        self.path = path
        self.meta = ModelMeta.from_props(parsed.metadata, source=path)
        self.inputs, self.outputs = parsed.graph.inputs, parsed.graph.outputs
        self.generic = not is_plain_forecaster(self.meta)
        if self.generic and require_network:
            raise ModelFormatError(
                f"{path}: the c backend serves only edgernn forecasters (plain cell stacks); "
                f"this graph is task {self.meta.task}: use backend='onnxruntime' or 'numpy'"
            )
        _check_interface(path, self.meta, self.inputs, self.outputs)
        self.input_shape = sample_shape(self.inputs[self.meta.input], self.meta)
        self.interpreter = nb.Interpreter(parsed.graph, source=path)
        self.net = None
        if not self.generic:
            try:
                self.net = nb.extract_network(parsed, self.meta, self.interpreter, source=path)
            except ModelFormatError:
                if require_network:
                    raise

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(np.float32)  # the sample and outputs; states and consts are declared

    def kernel(self, batch: int) -> _Kernel | _GraphKernel:
        if self.generic:
            return _InterpreterGraphKernel(self, batch)
        if self.net is not None:
            return _NumpyKernel(self, batch)
        return _InterpreterKernel(self, batch)


class _CEngine(_NumpyEngine):
    name = "c"

    def __init__(self, path: str):
        from edgernn.runtime.cstep import CStep

        super().__init__(path, require_network=True)
        self.cstep = CStep(self.net)

    def kernel(self, batch: int) -> _Kernel:
        return _CKernel(self, batch)


def _open_engine(path: str, backend: str):
    """(engine, why the faster backends were not used)."""
    if backend == "onnxruntime":
        return _OrtEngine(path), None
    if backend == "numpy":
        return _NumpyEngine(path), None
    if backend == "c":
        return _CEngine(path), None
    from edgernn.runtime.cstep import CStepUnavailable

    try:
        return _CEngine(path), None
    except (ModelFormatError, CStepUnavailable) as e:
        reason = str(e)
    if onnxruntime_available():
        try:
            return _OrtEngine(path), reason
        except MissingDependencyError:
            pass  # installed but not importable (a wheel for another platform)
    return _NumpyEngine(path), reason


class Model:
    """An exported edgernn model, loaded once.

    >>> model = Model("model.onnx")            # backend="auto": c, onnxruntime or numpy
    >>> stream = model.stream()
    >>> forecast = stream.step(sample)        # sample: [channels] raw sensor units
    """

    def __init__(self, path: str | os.PathLike, backend: Optional[str] = None):
        backend = backend or os.environ.get("EDGERNN_BACKEND") or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise ModelFormatError(_not_a_model_file(self.path))
        importlib.import_module("edgernn.runtime.limits").check_graph_limits(self.path)
        self._engine, self.fallback_reason = _open_engine(self.path, backend)
        self.backend: str = self._engine.name  # the backend actually in use
        self.meta: ModelMeta = self._engine.meta
        _check_interface(self.path, self.meta, self._engine.inputs, self._engine.outputs)
        # Our forecasters run on the kernels built for them (c, fused numpy); any other
        # graph on the generic kernels (onnxruntime, numpy interpreter).
        self.generic: bool = self._engine.generic
        self.input_shape = self._engine.input_shape  # None at the batch axis
        first = self._engine.inputs[self.meta.input][0]
        # An unrolled export with --static-batch N only steps exactly N streams.
        self.fixed_batch: Optional[int] = (
            first if isinstance(first, int) and self.input_shape[0] is None else None
        )

    # -- properties ------------------------------------------------------------------
    @property
    def channels(self) -> list[str]:
        return list(self.meta.channels)

    @property
    def n_channels(self) -> int:
        return self.meta.n_channels

    @property
    def horizon(self) -> int:
        return self.meta.horizon

    @property
    def state_specs(self) -> list[StateSpec]:
        return list(self.meta.states)

    @property
    def batchable(self) -> bool:
        """Whether independent streams can be stepped together (model.stream(batch=N)):
        the sample and every state have a batch axis."""
        return self.input_shape[0] is None and all(
            s.batch_axis is not None for s in self.meta.states
        )

    def zero_state(self, batch: int = 1) -> dict[str, np.ndarray]:
        return {
            s.input: np.zeros(concrete(s.shape, batch), dtype=s.dtype) for s in self.meta.states
        }

    def stream(
        self, state: Optional[Mapping[str, np.ndarray]] = None, batch: Optional[int] = None
    ) -> Stream:
        """A new stream starting from zeros, or from `state` (as read from `Stream.state`).

        batch=None steps one stream with x of shape [channels]; batch=N steps N
        independent streams at once with x of shape [N, channels].
        """
        return Stream(self, state=state, batch=batch)

    def _run(self, x: np.ndarray, state: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One stateless call: x (B, C), state name -> (L, B, H); returns [y, *new states]."""
        stream = Stream(self, batch=x.shape[0])
        stream.state = state
        y = stream.step(x)
        new = stream.state
        return [y] + [new[s.input] for s in self.meta.states]

    def __repr__(self) -> str:
        m = self.meta
        if self.generic:
            return (
                f"Model({self.path!r}, backend={self.backend}, task={m.task}, "
                f"input={m.input}{shape_json(self.input_shape)}, "
                f"outputs={[o.name for o in m.outputs]}, states={[s.input for s in m.states]})"
            )
        return (
            f"Model({self.path!r}, backend={self.backend}, cell={m.cell}, layers={m.layers}, "
            f"hidden={m.hidden}, channels={m.channels}, horizon={m.horizon})"
        )


ORT_DTYPES = {
    f"tensor({k})": np.dtype(v)
    for k, v in (
        ("float", "float32"), ("double", "float64"), ("float16", "float16"),
        ("int64", "int64"), ("int32", "int32"), ("int16", "int16"), ("int8", "int8"),
        ("uint8", "uint8"), ("bool", "bool"),
    )
}  # fmt: skip


def _not_a_model_file(path: str) -> str:
    """Why `path` cannot be opened as a model, and what to give instead."""
    if not os.path.isdir(path):
        return f"{path}: no such model file"
    if os.path.isfile(os.path.join(path, "checkpoint.npz")):  # a training run's folder
        return (
            f"{path} is a training run, not a model: export it with "
            f"`edgernn export {path} -o model.onnx`"
        )
    try:
        found = sorted(f for f in os.listdir(path) if f.endswith(".onnx"))
    except OSError:  # unreadable: the hint is the usual name
        found = []
    hint = os.path.join(path, found[0] if found else "model.onnx")
    return f"{path} is a directory; give the model file ({'maybe ' if not found else ''}{hint})"


def is_plain_forecaster(meta: ModelMeta) -> bool:
    """One of our forecasters as `edgernn export` writes it: the kernels built for those
    (c, fused numpy, the bound [S, L, B, H] state) serve it."""
    return (
        meta.is_forecaster
        and not meta.consts
        and [o.name for o in meta.outputs] == [meta.output]
        and all(s.is_stacked and s.dtype == "float32" for s in meta.states)
    )


def sample_shape(graph_dims: list, meta: ModelMeta) -> tuple:
    """The primary input's shape, None at the batch axis: [batch, F], or [F] when the
    graph has no batch axis (a rank-1 input)."""
    if len(graph_dims) == 1 and not meta.is_forecaster:
        return (meta.n_channels,)
    return (None, meta.n_channels)


def _check_interface(path: str, meta: ModelMeta, inputs: dict, outputs: dict) -> None:
    if meta.input not in inputs:
        raise ModelFormatError(f"{path}: graph has no input {meta.input!r} named in its metadata")
    want_in = {meta.input: list(sample_shape(inputs[meta.input], meta))}
    want_out = {o.name: list(o.shape) for o in meta.outputs}
    for c in meta.consts:
        want_in[c.name] = list(c.shape)
    for s in meta.states:
        want_in[s.input] = list(s.shape)
        want_out[s.output] = list(s.shape)
    for kind, want, have in (("input", want_in, inputs), ("output", want_out, outputs)):
        for name, shape in want.items():
            if name not in have:
                raise ModelFormatError(
                    f"{path}: graph has no {kind} {name!r} named in its metadata"
                )
            _check_shape(path, name, have[name], shape)
    extra = set(inputs) - set(want_in)
    if extra:
        raise ModelFormatError(f"{path}: graph has unexpected inputs {sorted(extra)}")


def _check_shape(path: str, name: str, have, want) -> None:
    if len(have) != len(want):
        raise ModelFormatError(
            f"{path}: {name} has rank {len(have)} in the graph, metadata says {len(want)}"
        )
    for got, expected in zip(have, want):
        if expected is not None and isinstance(got, int) and got != expected:
            raise ModelFormatError(
                f"{path}: {name} has shape {list(have)} in the graph, metadata says {want}"
            )


class Stream:
    """The recurrent state of one stream (or `batch` streams) and the step that advances it.

    Splitting a stream anywhere and resuming from `stream.state` gives exactly the
    outputs of the unbroken run.
    """

    def __init__(
        self,
        model: Model,
        state: Optional[Mapping[str, np.ndarray]] = None,
        batch: Optional[int] = None,
    ):
        if batch is not None and (
            isinstance(batch, bool) or not isinstance(batch, int) or batch < 1
        ):
            raise InputError(f"batch must be a positive integer or None, got {batch!r}")
        self.model = model
        self.batch = batch
        self._n = 1 if batch is None else batch
        if batch is not None and not model.batchable:
            unbatched = [s.input for s in model.meta.states if s.batch_axis is None]
            raise InputError(
                f"{model.path} has no batch axis"
                + (f" in state {unbatched[0]!r}" if unbatched else " in its input")
                + ": step one stream at a time with model.stream()"
            )
        if model.fixed_batch is not None and self._n != model.fixed_batch:
            raise InputError(
                f"{model.path} was exported with a fixed batch of {model.fixed_batch}: "
                f"use model.stream(batch={model.fixed_batch})"
                if model.fixed_batch > 1
                else f"{model.path} was exported with a fixed batch of 1: use model.stream()"
            )
        self._kernel = model._engine.kernel(self._n)
        self._cur = 0  # which of the two state buffers holds the state now
        # step's C fast path: the kernel's function called directly (no method layer)
        self._c_step = getattr(self._kernel, "direct_step", None)
        self._c_ctx = getattr(self._kernel, "direct_ctx", None)
        self._x_shape = concrete(model.input_shape, batch)
        # faster: one extension call copies a float32 sample in and steps (cstep.py)
        self._fast_step = self._fast_bound = None
        fastcall = getattr(self._kernel, "fastcall", None)
        if fastcall is not None and self._kernel.x.size == _size(self._x_shape):
            k = self._kernel
            self._fast_bound = fastcall.bind(
                k.step_address, k._address, k.x.ctypes.data, tuple(self._x_shape)
            )
            self._fast_step = fastcall.step
        # the input buffer in the sample's own shape: step's copy needs no broadcasting
        x_buf = self._kernel.x
        self._x_in = x_buf.reshape(self._x_shape) if x_buf.size == _size(self._x_shape) else x_buf
        if model.generic:
            meta = model.meta
            # views of the output buffers as the user sees them (no batch axis for batch=None)
            self._out_views = {
                o.name: self._user_view(self._kernel.out[o.name], o.batch_axis)
                for o in meta.outputs
            }
            self._y_view = self._out_views[meta.output]
        else:
            self._y_view = self._kernel.y[0] if batch is None else self._kernel.y
            self._out_views = {model.meta.output: self._y_view}
        self._y_copy = self._y_view.copy  # step's return: a new array of the forecast
        if state is not None:
            self.state = state

    def _user_view(self, buf: np.ndarray, axis: Optional[int]) -> np.ndarray:
        if self.batch is not None or axis is None:
            return buf
        index = [slice(None)] * buf.ndim
        index[axis] = 0
        return buf[tuple(index)]

    @property
    def outputs(self) -> dict[str, np.ndarray]:
        """Every named output of the last step (copies): name -> array, without the batch
        axis for batch=None. Zeros before the first step."""
        return {name: view.copy() for name, view in self._out_views.items()}

    # -- state -----------------------------------------------------------------------
    @property
    def state(self) -> dict[str, np.ndarray]:
        """A copy of the state: name -> [layers, hidden] (or [layers, batch, hidden]); for
        any graph, each state's shape without its batch axis (or with it for batch=N)."""
        if self.model.generic:
            now_by_name = self._kernel.s[self._cur]
            return {
                s.input: self._user_view(now_by_name[s.input], s.batch_axis).copy()
                for s in self.model.meta.states
            }
        now = self._kernel.s[self._cur]  # (S, L, B, H)
        specs = self.model.meta.states
        if self.batch is None:
            return {s.input: now[i, :, 0, :].copy() for i, s in enumerate(specs)}
        return {s.input: now[i].copy() for i, s in enumerate(specs)}

    @state.setter
    def state(self, state: Mapping[str, np.ndarray]) -> None:
        specs = {s.input: s for s in self.model.meta.states}
        if not isinstance(state, Mapping) or set(state) != set(specs):
            keys = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise InputError(f"state must have keys {sorted(specs)}, got {keys}")
        if self.model.generic:
            self._set_graph_state(state, specs)
            return
        new = []
        for name, spec in specs.items():
            try:
                arr = np.asarray(state[name], dtype=np.float32)
            except (TypeError, ValueError) as e:
                raise InputError(f"state {name!r} is not numeric: {e}") from e
            want = (
                (spec.layers, spec.hidden)
                if self.batch is None
                else (spec.layers, self._n, spec.hidden)
            )
            if arr.shape != want:
                raise InputError(f"state {name!r} must have shape {want}, got {arr.shape}")
            if not np.isfinite(arr).all():
                raise InputError(f"state {name!r} holds NaN or inf")
            new.append(arr[:, None, :] if self.batch is None else arr)
        now = self._kernel.s[self._cur]
        for i, arr in enumerate(new):  # all checked before any is written
            now[i] = arr

    def _set_graph_state(self, state: Mapping[str, np.ndarray], specs: dict) -> None:
        new = {}
        for name, spec in specs.items():
            try:
                arr = np.asarray(state[name], dtype=spec.dtype)
            except (TypeError, ValueError, OverflowError) as e:
                raise InputError(f"state {name!r} is not {spec.dtype}: {e}") from e
            want = concrete(spec.shape, self.batch)
            if arr.shape != want:
                raise InputError(f"state {name!r} must have shape {want}, got {arr.shape}")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise InputError(f"state {name!r} holds NaN or inf")
            if self.batch is None and spec.batch_axis is not None:
                arr = np.expand_dims(arr, spec.batch_axis)
            new[name] = arr
        now = self._kernel.s[self._cur]
        for name, arr in new.items():  # all checked before any is written
            now[name][...] = arr

    def reset(self) -> None:
        """Forget everything: back to the zero state."""
        if self.model.generic:
            for buf in self._kernel.s[self._cur].values():
                buf.fill(0)
            return
        self._kernel.s[self._cur].fill(0.0)

    # -- stepping --------------------------------------------------------------------
    def step(self, x) -> np.ndarray:
        """Feed one sample ([channels], or [batch, channels]); return the forecast of the
        same shape, in raw units, `horizon` steps ahead of this sample."""
        fast = self._fast_step
        if fast is not None:  # a C-contiguous float32 sample of the right shape: one call
            cur = self._cur
            rc = fast(self._fast_bound, x, cur)
            if rc == 0:
                self._cur = cur ^ 1
                return self._y_copy()
            if rc == 1:  # the C step refuses NaN/inf itself, state untouched
                raise InputError("sample holds NaN or inf")
            # declined (another dtype or shape, not an array): the general path below
        kernel = self._kernel
        if type(x) is np.ndarray and x.dtype is _FLOAT32 and x.shape == self._x_shape:
            self._x_in[...] = x  # the fast path: one copy into the bound input buffer
        elif type(x) is np.ndarray and x.shape == self._x_shape and x.dtype.kind in "fiu":
            self._x_in[...] = x  # cast on the copy
        else:
            kernel.x[...] = self._check_x(x)
        cur = self._cur
        c_step = self._c_step
        if c_step is not None:  # the C step refuses NaN/inf itself, state untouched
            if c_step(self._c_ctx, _C_CUR[cur]) != 0:
                raise InputError("sample holds NaN or inf")
        elif not kernel.step(cur):
            raise InputError("sample holds NaN or inf")
        self._cur = cur ^ 1
        return self._y_view.copy()

    def live_binding(self) -> Optional[tuple[int, ...]]:
        """The C step of a single-stream forecaster for the live run's C loop (cstep
        live_bind), which steps this stream itself (the caller passes `_cur` in and
        stores what comes back): the addresses of the step function, its context, the
        input and output buffers and features() in state buffer 0 and 1, and the hidden
        size. None where there is no such step (another backend, a graph, a batch)."""
        if self._fast_bound is None or self.batch is not None or self.model.generic:
            return None
        k = self._kernel
        h = [s[0, -1, 0] for s in k.s]  # features(): the last layer's h, (hidden,)
        if not all(v.flags.c_contiguous and v.dtype == _FLOAT32 for v in h):
            return None
        return (k.step_address, k._address, k.x.ctypes.data, k.y.ctypes.data,
                h[0].ctypes.data, h[1].ctypes.data, h[0].size)  # fmt: skip

    def run(self, X) -> np.ndarray:
        """Feed a sequence [T, channels] (or [T, batch, channels]) sample by sample."""
        return self._run(X, with_features=False)[0]

    def run_features(self, X) -> tuple[np.ndarray, np.ndarray]:
        """run(X), and the features a forecaster's head reads at each sample: the last
        layer's h after it, [T, hidden] (or [T, batch, hidden]); forecasters only."""
        if self.model.generic:
            raise InputError(f"{self.model.path} is not a plain forecaster: it has no head features")
        Y, H = self._run(X, with_features=True)
        return Y, H

    def features(self) -> np.ndarray:
        """The head's features now (the last layer's h, [hidden] or [batch, hidden]): what
        run_features() gives for the last sample; a copy."""
        if self.model.generic:
            raise InputError(f"{self.model.path} is not a plain forecaster: it has no head features")
        h = self._kernel.s[self._cur][0, -1]  # (B, H)
        return (h[0] if self.batch is None else h).copy()

    def _run(self, X, with_features: bool) -> tuple[np.ndarray, Optional[np.ndarray]]:
        try:
            X = np.asarray(X, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InputError(f"run() input is not numeric: {e}") from e
        want = (None,) + self._x_shape
        if X.ndim != len(want) or X.shape[1:] != self._x_shape:
            names = "[T, channels]" if self.batch is None else "[T, batch, channels]"
            raise InputError(f"run() takes an array of shape {names} = {want}, got {X.shape}")
        finite = np.isfinite(X).reshape(X.shape[0], -1).all(axis=1)
        if not finite.all():
            raise InputError(f"sample {int(np.argmin(finite))} of the sequence holds NaN or inf")
        T = X.shape[0]
        kernel = self._kernel
        X = np.ascontiguousarray(X.reshape((T,) + kernel.x.shape), dtype=kernel.x.dtype)
        Y = np.empty((T,) + kernel.y.shape, dtype=kernel.y.dtype)
        H = None
        if with_features:
            H = np.empty((T, self._n, self.model.meta.hidden), dtype=np.float32)
            kernel.run(X, Y, self._cur, H)
        else:
            kernel.run(X, Y, self._cur)
        self._cur ^= T & 1
        if T:
            kernel.y[...] = Y[-1]  # stream.outputs: the last step's (the C run bypasses y)
        if H is not None and self.batch is None:
            H = H[:, 0]
        return Y.reshape((T,) + self._y_view.shape), H

    def _check_x(self, x) -> np.ndarray:
        try:
            arr = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InputError(f"sample is not numeric: {e}") from e
        if arr.shape != self._x_shape:
            raise InputError(
                f"sample must have shape {self._x_shape} (channels {self.model.channels}), "
                f"got {arr.shape}"
            )
        return arr


def _size(shape: tuple) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


__all__ = ["BACKENDS", "Model", "Stream", "STATE_BATCH_AXIS"]
