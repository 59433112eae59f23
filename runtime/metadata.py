"""The model description stored in an exported graph's `metadata_props`.

Every value is a string (ONNX's rule); structured values are JSON. Any runtime can
read these keys; `ModelMeta` is the typed view used by edgernn itself.

Format 2 (written by `to_props`; format 1 files are read too, they are forecasters):
    edgernn_format   "2"
    task             "forecast" | "regress" | "classify" | "custom"
    producer         free text ("edgernn 0.1.0 wrap"); kept in `ModelMeta.extra`
    input            name of the primary sample input [batch, F] (or [F]: no batch axis)
    channels         JSON list of the F input feature names
    output           name of the primary output (what `Stream.step` returns)
    outputs          JSON list of every non-state output {"name", "shape", "columns"?};
                     "batch" in a shape marks the batch axis
    consts           JSON list of constant inputs fed every step
                     {"name", "dtype", "shape", "value"}; "batch" in the shape means
                     the value is broadcast along that axis
    state            JSON list of {"input", "output", "shape", "dtype"?}; "batch" marks
                     the batch axis; the initial state is zeros
    classes          task classify: class names (the primary output's columns)
    targets          task regress: regressed column names (the primary output's columns)
    time_axis        informational: "batch_first" | "time_first"
  task forecast only (our forecasters; format 1 had exactly these):
    cell             "rnn" | "lstm" | "gru"      (the recurrent cell in the graph)
    nonlinearity     "tanh" | "relu"             (rnn only)
    trained_as       "bptt" | "esn"
    layers, hidden, horizon                      (integers)
    residual         "1" if the head forecasts the change from the current sample
    norm_mean, norm_std   JSON lists: x is normalised as (x - mean) / std inside the graph
  optional:
    error_scale      JSON list: robust scale (1.4826 * MAD) of validation forecast errors
                     per channel, raw units; the anomaly detector normalises errors by it
    extra keys (detector, quantization, metrics, producer, ...) are JSON or text.

In the typed view a shape is a tuple with None at the batch axis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from edgernn.errors import ModelFormatError

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
CELLS = ("rnn", "lstm", "gru")
TASKS = ("forecast", "regress", "classify", "custom")
DTYPES = (
    "float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool",
)  # fmt: skip
STATE_BATCH_AXIS = 1  # of our forecasters' [layers, batch, hidden] states
BATCH = "batch"  # how a shape names its batch axis in the JSON
MAX_JSON_DEPTH = 32
MAX_DIM = 2**31 - 1

Shape = tuple[Optional[int], ...]


# ----------------------------------------------------------------------------------
# shapes


def parse_shape(raw: Any, what: str) -> Shape:
    """A JSON shape ([2, "batch", 64]) as a tuple with None at the batch axis."""
    if not isinstance(raw, (list, tuple)):
        raise ModelFormatError(f"{what}: shape must be a list, got {type(raw).__name__}")
    dims: list[Optional[int]] = []
    for d in raw:
        if d == BATCH or d is None:
            dims.append(None)
        elif isinstance(d, bool) or not isinstance(d, int):
            raise ModelFormatError(f"{what}: shape entry {d!r} is not an integer or 'batch'")
        elif not 1 <= d <= MAX_DIM:
            raise ModelFormatError(f"{what}: shape entry {d} must be between 1 and {MAX_DIM}")
        else:
            dims.append(d)
    if dims.count(None) > 1:
        raise ModelFormatError(f"{what}: shape {list(raw)} has more than one batch axis")
    return tuple(dims)


def shape_json(shape: Shape) -> list:
    return [BATCH if d is None else int(d) for d in shape]


def batch_axis(shape: Shape) -> Optional[int]:
    return shape.index(None) if None in shape else None


def concrete(shape: Shape, batch: Optional[int]) -> tuple[int, ...]:
    """The array shape a user sees: batch=None drops the batch axis, batch=N fills it."""
    if batch is None:
        return tuple(d for d in shape if d is not None)
    return tuple(batch if d is None else d for d in shape)


def graph_shape(shape: Shape, batch: Optional[int]) -> tuple[int, ...]:
    """The array shape the graph is fed: batch=None is a batch of one."""
    return tuple((1 if batch is None else batch) if d is None else d for d in shape)


# ----------------------------------------------------------------------------------
# the typed pieces


@dataclass(frozen=True, init=False)
class StateSpec:
    """A state input fed back from a state output. shape has None at the batch axis.

    StateSpec(input, output, layers, hidden) (format 1's positional form) still means a
    [layers, batch, hidden] float32 state.
    """

    input: str
    output: str
    shape: Shape
    dtype: str

    def __init__(self, input: str, output: str, shape: Any, dtype: Any = "float32"):
        if isinstance(shape, int) and isinstance(dtype, int):  # (layers, hidden)
            shape, dtype = (shape, None, dtype), "float32"
        object.__setattr__(self, "input", input)
        object.__setattr__(self, "output", output)
        object.__setattr__(self, "shape", tuple(None if d is None else int(d) for d in shape))
        object.__setattr__(self, "dtype", dtype)

    @classmethod
    def stacked(cls, input: str, output: str, layers: int, hidden: int) -> StateSpec:
        return cls(input, output, (layers, None, hidden))

    @property
    def batch_axis(self) -> Optional[int]:
        return batch_axis(self.shape)

    @property
    def is_stacked(self) -> bool:
        """A [layers, batch, hidden] state, as our forecasters have."""
        return len(self.shape) == 3 and self.shape[1] is None

    @property
    def layers(self) -> int:
        return self._stacked()[0]

    @property
    def hidden(self) -> int:
        return self._stacked()[1]

    def _stacked(self) -> tuple[int, int]:
        if not self.is_stacked:
            raise ModelFormatError(
                f"state {self.input!r} has shape {shape_json(self.shape)}, "
                "not [layers, batch, hidden]"
            )
        return int(self.shape[0]), int(self.shape[2])  # type: ignore[arg-type]

    def to_json(self) -> dict:
        return {
            "input": self.input, "output": self.output,
            "shape": shape_json(self.shape), "dtype": self.dtype,
        }  # fmt: skip


@dataclass(frozen=True)
class OutputSpec:
    """A named non-state output; columns name the last axis of a [batch, K] output."""

    name: str
    shape: Shape
    columns: Optional[tuple[str, ...]] = None

    @property
    def batch_axis(self) -> Optional[int]:
        return batch_axis(self.shape)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "shape": shape_json(self.shape)}
        if self.columns is not None:
            out["columns"] = list(self.columns)
        return out


@dataclass(frozen=True)
class ConstSpec:
    """A constant input fed unchanged every step (a sample rate, a threshold).

    value is a nested list of the declared shape, without the batch axis when the
    shape has one (it is broadcast along it); a size-1 batch axis is accepted too.
    """

    name: str
    dtype: str
    shape: Shape
    value: Any

    @property
    def batch_axis(self) -> Optional[int]:
        return batch_axis(self.shape)

    def array(self, batch: Optional[int]):
        """The value as the graph is fed it (batch=None: a batch of one)."""
        import numpy as np

        arr = np.asarray(self.value, dtype=self.dtype)
        ax = self.batch_axis
        if ax is not None:
            if arr.ndim == len(self.shape) - 1:
                arr = np.expand_dims(arr, ax)
            arr = np.broadcast_to(arr, graph_shape(self.shape, batch))
        return np.ascontiguousarray(arr)

    def to_json(self) -> dict:
        return {
            "name": self.name, "dtype": self.dtype,
            "shape": shape_json(self.shape), "value": self.value,
        }  # fmt: skip


# ----------------------------------------------------------------------------------
# the model


@dataclass
class ModelMeta:
    cell: str = "custom"
    layers: int = 0
    hidden: int = 0
    channels: list[str] = field(default_factory=list)
    horizon: int = 1
    nonlinearity: str = "tanh"
    trained_as: str = "bptt"
    residual: bool = False
    input: str = "x"
    output: str = "y"
    states: list[StateSpec] = field(default_factory=list)
    norm_mean: list[float] = field(default_factory=list)
    norm_std: list[float] = field(default_factory=list)
    error_scale: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    task: str = "forecast"
    outputs: list[OutputSpec] = field(default_factory=list)
    consts: list[ConstSpec] = field(default_factory=list)
    classes: list[str] | None = None
    targets: list[str] | None = None
    time_axis: str | None = None

    def __post_init__(self) -> None:
        # A forecaster's one output is the next sample of every channel.
        if not self.outputs and self.task == "forecast":
            self.outputs = [OutputSpec(self.output, (None, self.n_channels), tuple(self.channels))]
        # A classifier's probabilities are named by its classes, a regressor's values
        # by its targets, when the writer did not name the columns itself.
        names = {"classify": self.classes, "regress": self.targets}.get(self.task)
        if names:
            self.outputs = [
                OutputSpec(o.name, o.shape, tuple(names))
                if o.name == self.output and o.columns is None
                else o
                for o in self.outputs
            ]

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def is_forecaster(self) -> bool:
        return self.task == "forecast"

    @property
    def primary(self) -> OutputSpec:
        for o in self.outputs:
            if o.name == self.output:
                return o
        raise ModelFormatError(f"primary output {self.output!r} is not among the outputs")

    @property
    def producer(self) -> str:
        value = self.extra.get("producer", "")
        return value if isinstance(value, str) else json.dumps(value)

    def to_props(self) -> dict[str, str]:
        props = {
            "edgernn_format": str(FORMAT_VERSION),
            "task": self.task,
            "channels": json.dumps(list(self.channels)),
            "input": self.input,
            "output": self.output,
            "outputs": json.dumps([o.to_json() for o in self.outputs]),
            "state": json.dumps([s.to_json() for s in self.states]),
        }
        if self.consts:
            props["consts"] = json.dumps([c.to_json() for c in self.consts])
        if self.task == "forecast":
            props.update(
                cell=self.cell,
                nonlinearity=self.nonlinearity,
                trained_as=self.trained_as,
                layers=str(self.layers),
                hidden=str(self.hidden),
                horizon=str(self.horizon),
                residual="1" if self.residual else "0",
            )
        if self.task == "forecast" or self.norm_mean or self.norm_std:
            props["norm_mean"] = json.dumps([float(v) for v in self.norm_mean])
            props["norm_std"] = json.dumps([float(v) for v in self.norm_std])
        if self.error_scale is not None:
            props["error_scale"] = json.dumps([float(v) for v in self.error_scale])
        for key, value in (
            ("classes", self.classes), ("targets", self.targets), ("time_axis", self.time_axis),
        ):  # fmt: skip
            if value is not None:
                props[key] = value if isinstance(value, str) else json.dumps(list(value))
        for key, value in self.extra.items():
            props[key] = value if isinstance(value, str) else json.dumps(value)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> ModelMeta:
        if "edgernn_format" not in props:
            raise ModelFormatError(
                f"{source} is an ONNX file but not an edgernn model (no edgernn metadata); "
                "export one with `edgernn export`, or declare a graph made elsewhere with "
                "`edgernn wrap`"
            )
        try:
            version = int(props["edgernn_format"])
        except (ValueError, TypeError) as e:
            raise ModelFormatError(
                f"{source}: edgernn_format {str(props['edgernn_format'])[:20]!r} is not a number"
            ) from e
        if version > FORMAT_VERSION:
            raise ModelFormatError(
                f"{source} uses edgernn model format {version}; this edgernn reads up to "
                f"{FORMAT_VERSION}: upgrade edgernn"
            )
        if version not in READABLE_FORMATS:
            raise ModelFormatError(f"{source}: unknown edgernn model format {version}")
        try:
            meta = _read(props, version, source)
        except ModelFormatError:
            raise
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
            detail = f"missing key {e}" if isinstance(e, KeyError) else f"{e}"
            raise ModelFormatError(f"{source} has damaged edgernn metadata ({detail[:200]})") from e
        validate(meta, source)
        return meta


KNOWN_KEYS = {
    "edgernn_format", "cell", "nonlinearity", "trained_as", "layers", "hidden", "horizon",
    "residual", "channels", "input", "output", "state", "norm_mean", "norm_std",
    "error_scale", "task", "outputs", "consts", "classes", "targets", "time_axis",
}  # fmt: skip


def _read(props: dict[str, str], version: int, source: str) -> ModelMeta:
    task = props.get("task", "forecast") if version >= 2 else "forecast"
    if task not in TASKS:
        raise ModelFormatError(
            f"{source}: unknown task {str(task)[:40]!r} in metadata; one of {', '.join(TASKS)}"
        )
    forecast = task == "forecast"
    channels = _str_list(_json(props, "channels", source), "channels", source)
    output = _name(props.get("output", "y"), "output", source)
    meta = ModelMeta(
        task=task,
        cell=_text(props["cell"] if forecast else props.get("cell", "custom"), "cell", source),
        nonlinearity=props.get("nonlinearity", "tanh"),
        trained_as=props.get("trained_as", "bptt"),
        layers=_int(props["layers"], "layers", source) if forecast else 0,
        hidden=_int(props["hidden"], "hidden", source) if forecast else 0,
        horizon=_int(props.get("horizon", "1"), "horizon", source) if forecast else 1,
        residual=props.get("residual", "0") == "1",
        channels=channels,
        input=_name(props.get("input", "x"), "input", source),
        output=output,
        states=[_state(s, source) for s in _list(props, "state", source, forecast)],
        norm_mean=_floats(props, "norm_mean", source, forecast),
        norm_std=_floats(props, "norm_std", source, forecast),
        error_scale=_floats(props, "error_scale", source, False)
        if "error_scale" in props
        else None,
        outputs=[_output(o, source) for o in _list(props, "outputs", source, False)],
        consts=[_const(c, source) for c in _list(props, "consts", source, False)],
        classes=_optional_names(props, "classes", source),
        targets=_optional_names(props, "targets", source),
        time_axis=_text(props["time_axis"], "time_axis", source) if "time_axis" in props else None,
        extra={k: _maybe_json(v) for k, v in props.items() if k not in KNOWN_KEYS},
    )
    if not meta.outputs:
        if not forecast:
            raise ModelFormatError(f"{source}: metadata lists no outputs")
    return meta


def validate(meta: ModelMeta, source: str = "model") -> None:
    """Everything a reader relies on, checked once: one-line ModelFormatError otherwise."""
    if meta.task not in TASKS:
        raise ModelFormatError(f"{source}: unknown task {meta.task!r}; one of {', '.join(TASKS)}")
    if len(set(meta.channels)) != meta.n_channels:
        raise ModelFormatError(f"{source}: duplicate channel names in metadata {meta.channels}")
    if not meta.channels:
        raise ModelFormatError(f"{source}: metadata names no input channels")
    if meta.is_forecaster:
        _validate_forecaster(meta, source)
    inputs = [meta.input] + [c.name for c in meta.consts] + [s.input for s in meta.states]
    outputs = [o.name for o in meta.outputs] + [s.output for s in meta.states]
    for kind, names in (("input", inputs), ("output", outputs)):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ModelFormatError(f"{source}: duplicate {kind} names in metadata {dup}")
    primary = next((o for o in meta.outputs if o.name == meta.output), None)
    if primary is None:
        raise ModelFormatError(
            f"{source}: primary output {meta.output!r} is not among the outputs in metadata"
        )
    for o in meta.outputs:
        if o.columns is not None:
            _check_columns(o, source)
    for names, task in ((meta.classes, "classify"), (meta.targets, "regress")):
        if meta.task == task:
            if not names:
                key = "classes" if task == "classify" else "targets"
                raise ModelFormatError(f"{source}: task {task} needs {key} in metadata")
            if primary.columns is not None and list(primary.columns) != list(names):
                raise ModelFormatError(
                    f"{source}: the primary output's columns {list(primary.columns)} are not "
                    f"the {'classes' if task == 'classify' else 'targets'} {list(names)}"
                )
    for s in meta.states:
        if s.dtype not in DTYPES:
            raise ModelFormatError(f"{source}: state {s.input!r} has unknown dtype {s.dtype!r}")
        if not s.shape:
            raise ModelFormatError(f"{source}: state {s.input!r} has an empty shape")
    for c in meta.consts:
        _check_const(c, source)


def _validate_forecaster(meta: ModelMeta, source: str) -> None:
    if meta.cell not in CELLS:
        raise ModelFormatError(f"{source}: unknown cell {meta.cell!r} in metadata")
    if meta.cell == "rnn" and meta.nonlinearity not in ("tanh", "relu"):
        raise ModelFormatError(
            f"{source}: unknown rnn nonlinearity {str(meta.nonlinearity)[:20]!r} in metadata "
            "(tanh or relu)"
        )
    if meta.horizon < 1:
        raise ModelFormatError(f"{source}: horizon must be >= 1 in metadata, got {meta.horizon}")
    if meta.layers < 1 or meta.hidden < 1:
        raise ModelFormatError(f"{source}: layers and hidden must be >= 1 in metadata")
    if len(meta.norm_mean) != meta.n_channels or len(meta.norm_std) != meta.n_channels:
        raise ModelFormatError(f"{source}: normalisation does not match the channel count")
    for s in meta.states:
        if s.shape != (meta.layers, None, meta.hidden):
            raise ModelFormatError(
                f"{source}: forecaster state {s.input!r} has shape {shape_json(s.shape)}, "
                f"metadata says [{meta.layers}, 'batch', {meta.hidden}]"
            )


def _check_columns(o: OutputSpec, source: str) -> None:
    cols = list(o.columns or ())
    if len(set(cols)) != len(cols):
        raise ModelFormatError(f"{source}: output {o.name!r} has duplicate column names")
    last = o.shape[-1] if o.shape else None
    if last is not None and last != len(cols):
        raise ModelFormatError(
            f"{source}: output {o.name!r} names {len(cols)} columns for a last axis of {last}"
        )


def _check_const(c: ConstSpec, source: str) -> None:
    import numpy as np

    if c.dtype not in DTYPES:
        raise ModelFormatError(f"{source}: const {c.name!r} has unknown dtype {c.dtype!r}")
    try:
        arr = np.asarray(c.value, dtype=c.dtype)
    except (TypeError, ValueError, OverflowError) as e:
        raise ModelFormatError(f"{source}: const {c.name!r} value is not {c.dtype}: {e}") from e
    want = concrete(c.shape, None)
    ok = arr.shape == want or (c.batch_axis is not None and arr.shape == graph_shape(c.shape, None))
    if not ok:
        raise ModelFormatError(
            f"{source}: const {c.name!r} value has shape {list(arr.shape)}, "
            f"declared {shape_json(c.shape)}"
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ModelFormatError(f"{source}: const {c.name!r} holds NaN or inf")


# ----------------------------------------------------------------------------------
# reading pieces of JSON safely


def _json(props: dict[str, str], key: str, source: str) -> Any:
    raw = props[key]
    if not isinstance(raw, str):
        raise ModelFormatError(f"{source}: metadata {key} is not text")
    try:
        value = json.loads(raw)
    except RecursionError as e:
        raise ModelFormatError(f"{source}: metadata {key} is nested too deeply") from e
    except ValueError as e:
        raise ModelFormatError(f"{source}: metadata {key} is not valid JSON ({e})") from e
    if _depth(value) > MAX_JSON_DEPTH:
        raise ModelFormatError(f"{source}: metadata {key} is nested too deeply")
    return value


def _depth(value: Any) -> int:
    """Nesting depth, iteratively (no recursion limit to hit on hostile input)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            if d > MAX_JSON_DEPTH:
                return d
            todo.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _list(props: dict[str, str], key: str, source: str, required: bool) -> list:
    if key not in props:
        if required:
            raise ModelFormatError(f"{source}: metadata has no {key!r}")
        return []
    value = _json(props, key, source)
    if not isinstance(value, list):
        raise ModelFormatError(f"{source}: metadata {key} must be a JSON list")
    return value


def _floats(props: dict[str, str], key: str, source: str, required: bool) -> list[float]:
    values = _list(props, key, source, required)
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ModelFormatError(f"{source}: metadata {key} holds a non-number {v!r:.40}")
        out.append(float(v))
    return out


def _int(raw: Any, key: str, source: str) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError) as e:
        raise ModelFormatError(
            f"{source}: metadata {key} {str(raw)[:20]!r} is not an integer"
        ) from e


def _text(raw: Any, key: str, source: str) -> str:
    if not isinstance(raw, str):
        raise ModelFormatError(f"{source}: metadata {key} must be text")
    return raw


def _name(raw: Any, key: str, source: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise ModelFormatError(f"{source}: metadata {key} must be a non-empty name")
    return raw


def _str_list(value: Any, key: str, source: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelFormatError(f"{source}: metadata {key} must be a JSON list of names")
    return list(value)


def _optional_names(props: dict[str, str], key: str, source: str) -> Optional[list[str]]:
    if key not in props:
        return None
    names = _str_list(_json(props, key, source), key, source)
    if len(set(names)) != len(names):
        raise ModelFormatError(f"{source}: duplicate {key} in metadata {names}")
    return names


def _entry(raw: Any, keys: Sequence[str], what: str, source: str) -> dict:
    if not isinstance(raw, dict):
        raise ModelFormatError(f"{source}: each {what} in metadata must be a JSON object")
    missing = [k for k in keys if k not in raw]
    if missing:
        raise ModelFormatError(f"{source}: a {what} in metadata has no {missing[0]!r}")
    return raw


def _state(raw: Any, source: str) -> StateSpec:
    s = _entry(raw, ("input", "output", "shape"), "state", source)
    name = _name(s["input"], "state input", source)
    shape = parse_shape(s["shape"], f"{source}: state {name!r}")
    dtype = s.get("dtype", "float32")
    if not isinstance(dtype, str):
        raise ModelFormatError(f"{source}: state {name!r} dtype must be text")
    return StateSpec(name, _name(s["output"], "state output", source), shape, dtype)


def _output(raw: Any, source: str) -> OutputSpec:
    o = _entry(raw, ("name", "shape"), "output", source)
    name = _name(o["name"], "output name", source)
    shape = parse_shape(o["shape"], f"{source}: output {name!r}")
    columns = o.get("columns")
    if columns is not None:
        columns = tuple(_str_list(columns, f"output {name!r} columns", source))
    return OutputSpec(name, shape, columns)


def _const(raw: Any, source: str) -> ConstSpec:
    c = _entry(raw, ("name", "dtype", "shape", "value"), "const", source)
    name = _name(c["name"], "const name", source)
    if not isinstance(c["dtype"], str):
        raise ModelFormatError(f"{source}: const {name!r} dtype must be text")
    return ConstSpec(
        name, c["dtype"], parse_shape(c["shape"], f"{source}: const {name!r}"), c["value"]
    )


def _maybe_json(value: str) -> Any:
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError, TypeError):
        return value
    return parsed if _depth(parsed) <= MAX_JSON_DEPTH else value
