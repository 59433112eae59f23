"""The model wrapper: load an exported edgernn graph once, step streams through it.

`Model` owns the onnxruntime session (one intra- and one inter-op thread, spinning
off: on a Pi the other cores belong to the serial reader and the rest of the
system). `Stream` owns the recurrent state of one stream, or of `batch` independent
streams stepped together in one call. Inputs and outputs are fetched by the names the
metadata gives, never by position.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Optional

import numpy as np

from edgernn.errors import InputError, ModelFormatError
from edgernn.runtime.metadata import STATE_BATCH_AXIS, ModelMeta, StateSpec

BACKENDS = ("onnxruntime",)


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


class Model:
    """An exported edgernn model, loaded once.

    >>> model = Model("model.onnx")
    >>> stream = model.stream()
    >>> forecast = stream.step(sample)        # sample: [channels] raw sensor units
    """

    def __init__(self, path: str | os.PathLike, backend: str = "onnxruntime"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        self.path = os.fspath(path)
        self.backend = backend
        if not os.path.isfile(self.path):
            raise ModelFormatError(f"{self.path}: no such model file")
        self._session = self._load_session()
        props = dict(self._session.get_modelmeta().custom_metadata_map)
        self.meta = ModelMeta.from_props(props, source=self.path)
        self._check_interface()
        self._output_names = [self.meta.output] + [s.output for s in self.meta.states]

    # -- loading ---------------------------------------------------------------------
    def _load_session(self):
        import onnxruntime as ort

        try:
            return ort.InferenceSession(
                self.path, sess_options=_session_options(), providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises several unrelated types here
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFormatError(
                f"{self.path} is not a loadable ONNX model ({first_line[:160]})"
            ) from e

    def _check_interface(self) -> None:
        meta = self.meta
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        want_in = {meta.input: [None, meta.n_channels]}
        want_out = {meta.output: [None, meta.n_channels]}
        for s in meta.states:
            want_in[s.input] = [s.layers, None, s.hidden]
            want_out[s.output] = [s.layers, None, s.hidden]
        for kind, want, have in (("input", want_in, inputs), ("output", want_out, outputs)):
            for name, shape in want.items():
                if name not in have:
                    raise ModelFormatError(
                        f"{self.path}: graph has no {kind} {name!r} named in its metadata"
                    )
                _check_shape(self.path, name, have[name].shape, shape)
        extra = set(inputs) - set(want_in)
        if extra:
            raise ModelFormatError(f"{self.path}: graph has unexpected inputs {sorted(extra)}")

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

    def zero_state(self, batch: int = 1) -> dict[str, np.ndarray]:
        return {
            s.input: np.zeros((s.layers, batch, s.hidden), dtype=np.float32)
            for s in self.meta.states
        }

    def stream(
        self, state: Optional[Mapping[str, np.ndarray]] = None, batch: Optional[int] = None
    ) -> Stream:
        """A new stream starting from zeros, or from `state` (as read from `Stream.state`).

        batch=None steps one stream with x of shape [channels]; batch=N steps N
        independent streams at once with x of shape [N, channels].
        """
        return Stream(self, state=state, batch=batch)

    # -- the one call into the graph -------------------------------------------------
    def _run(self, x: np.ndarray, state: dict[str, np.ndarray]) -> list[np.ndarray]:
        feed = {self.meta.input: x}
        feed.update(state)
        return self._session.run(self._output_names, feed)

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"Model({self.path!r}, cell={m.cell}, layers={m.layers}, hidden={m.hidden}, "
            f"channels={m.channels}, horizon={m.horizon})"
        )


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
        if batch is not None and (not isinstance(batch, int) or batch < 1):
            raise InputError(f"batch must be a positive integer or None, got {batch!r}")
        self.model = model
        self.batch = batch
        self._n = 1 if batch is None else batch
        self._state = model.zero_state(self._n)
        if state is not None:
            self.state = state

    # -- state -----------------------------------------------------------------------
    @property
    def state(self) -> dict[str, np.ndarray]:
        """A copy of the state: name -> [layers, hidden] (or [layers, batch, hidden])."""
        if self.batch is None:
            return {k: v[:, 0, :].copy() for k, v in self._state.items()}
        return {k: v.copy() for k, v in self._state.items()}

    @state.setter
    def state(self, state: Mapping[str, np.ndarray]) -> None:
        specs = {s.input: s for s in self.model.meta.states}
        if set(state) != set(specs):
            raise InputError(f"state must have keys {sorted(specs)}, got {sorted(state)}")
        new = {}
        for name, spec in specs.items():
            arr = np.asarray(state[name], dtype=np.float32)
            want = (
                (spec.layers, spec.hidden)
                if self.batch is None
                else (spec.layers, self._n, spec.hidden)
            )
            if arr.shape != want:
                raise InputError(f"state {name!r} must have shape {want}, got {arr.shape}")
            if not np.isfinite(arr).all():
                raise InputError(f"state {name!r} holds NaN or inf")
            if self.batch is None:
                arr = arr[:, None, :]
            new[name] = np.ascontiguousarray(arr)
        self._state = new

    def reset(self) -> None:
        """Forget everything: back to the zero state."""
        self._state = self.model.zero_state(self._n)

    # -- stepping --------------------------------------------------------------------
    def step(self, x) -> np.ndarray:
        """Feed one sample ([channels], or [batch, channels]); return the forecast of the
        same shape, in raw units, `horizon` steps ahead of this sample."""
        xb = self._check_x(x)
        outputs = self.model._run(xb, self._state)
        for spec, new in zip(self.model.meta.states, outputs[1:]):
            self._state[spec.input] = new
        y = outputs[0]
        return y[0] if self.batch is None else y

    def run(self, X) -> np.ndarray:
        """Feed a sequence [T, channels] (or [T, batch, channels]) sample by sample."""
        X = np.asarray(X)
        lead = (X.shape[0],) if X.ndim >= 1 else ()
        out = np.empty(lead + X.shape[1:], dtype=np.float32) if X.ndim >= 2 else None
        if out is None or X.ndim != (2 if self.batch is None else 3):
            want = "[T, channels]" if self.batch is None else "[T, batch, channels]"
            raise InputError(f"run() takes an array of shape {want}, got {X.shape}")
        for t in range(X.shape[0]):
            out[t] = self.step(X[t])
        return out

    def _check_x(self, x) -> np.ndarray:
        try:
            arr = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InputError(f"sample is not numeric: {e}") from e
        c = self.model.n_channels
        want = (c,) if self.batch is None else (self._n, c)
        if arr.shape != want:
            raise InputError(
                f"sample must have shape {want} (channels {self.model.channels}), got {arr.shape}"
            )
        if not np.isfinite(arr).all():
            raise InputError("sample holds NaN or inf")
        return arr.reshape(self._n, c)


__all__ = ["Model", "Stream", "STATE_BATCH_AXIS"]
