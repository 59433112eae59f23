"""`edgernn wrap`: declare the states and constants of a stateful single-step graph made
elsewhere, check the declaration, and write our format-2 metadata into a copy of it.

What users of stateful ONNX graphs get wrong most is the state wiring: the wrong output
fed back, or zeros every step. So nothing is guessed silently. Every declared pair is
checked: IN is a graph input and OUT an output (a reversed pair is named as such), their
dtypes and shapes agree, the names do not contradict the pairing (h0:cn beside c0:hn),
the graph really writes OUT in IN's shape, and the state is carried (outputs stepped
from a random IN differ from those stepped from zeros). Without --state the pairs
proposed from names and shapes are printed as a command line to check and run.

Checking needs onnxruntime only; writing the copy needs the onnx package.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from edgernn.errors import (
    EdgernnError,
    InputError,
    MissingDependencyError,
    ModelFormatError,
    require,
)
from edgernn.runtime.metadata import (
    TASKS,
    ConstSpec,
    ModelMeta,
    OutputSpec,
    StateSpec,
    graph_shape,
    shape_json,
)

PROBE_STEPS = 4
PROBE_SEED = 0
CARRY_MIN_DIFFERENCE = 1e-6  # relative; below it the state is taken as not carried


class WrapError(EdgernnError):
    """The declaration of a graph's states or constants is wrong or incomplete."""


@dataclass(frozen=True)
class Tensor:
    """A graph input or output as onnxruntime reports it: dims are ints, symbol names
    (str) or None (unnamed dynamic)."""

    name: str
    dims: tuple
    dtype: Optional[np.dtype]

    def describe(self) -> str:
        dtype = "?" if self.dtype is None else self.dtype.name
        return f"{dtype} [{', '.join('?' if d is None else str(d) for d in self.dims)}]"


@dataclass
class Declaration:
    """What the user said about the graph (the command line's flags)."""

    states: list[tuple[str, str]] = field(default_factory=list)
    consts: dict[str, str] = field(default_factory=dict)  # name -> JSON value text
    channels: Optional[list[str]] = None
    task: str = "custom"
    classes: Optional[list[str]] = None
    targets: Optional[list[str]] = None
    output: Optional[str] = None  # the primary output; default the first non-state one
    check_names: bool = True
    stateless: bool = False  # a graph with no state at all, said so explicitly


_ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}  # fmt: skip


def open_graph(path: str):
    """(session, inputs, outputs) of any ONNX file, with one-line errors."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise MissingDependencyError(
            "onnxruntime is not installed (wrap checks the graph with it): pip install onnxruntime"
        ) from e
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises several unrelated types here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFormatError(f"{path} is not a loadable ONNX model ({first[:160]})") from e

    def tensors(items) -> list[Tensor]:
        out = []
        for v in items:
            dtype = _ORT_DTYPES.get(v.type)
            dims = tuple(v.shape) if v.shape is not None else ()
            out.append(Tensor(v.name, dims, None if dtype is None else np.dtype(dtype)))
        return out

    return session, tensors(session.get_inputs()), tensors(session.get_outputs())


# ----------------------------------------------------------------------------------
# pairing by names and shapes

_SUFFIX_PAIRS = (
    ("", "n"), ("", "N"), ("", "_out"), ("", "_next"), ("", "_new"), ("", "out"),
    ("", "_o"), ("0", "n"), ("0", "N"), ("0", "_n"), ("0", ""), ("0", "_out"), ("0", "1"),
    ("_in", "_out"), ("in", "out"), ("_prev", "_next"), ("_prev", ""), ("_old", "_new"),
    ("_old", ""), ("_init", "_out"), ("_init", ""), ("_i", "_o"),
)  # fmt: skip
_PREFIX_PAIRS = (
    ("in_", "out_"), ("input_", "output_"), ("past_", "present_"), ("prev_", "next_"),
    ("", "next_"), ("", "new_"), ("", "out_"), ("old_", "new_"),
)  # fmt: skip


def names_pair(state_in: str, state_out: str) -> bool:
    """Whether the names say OUT is the next value of IN (state/stateN, h0/hn, c0/cn,
    h/h_out, x_in/x_out, past_k/present_k, ...), case-insensitively."""
    a, b = state_in.lower(), state_out.lower()
    for pre_in, pre_out in _PREFIX_PAIRS:
        if a.startswith(pre_in) and b == pre_out + a[len(pre_in) :] and a != b:
            return True
    for suf_in, suf_out in _SUFFIX_PAIRS:
        if a.endswith(suf_in) and a[: len(a) - len(suf_in)] + suf_out == b and a != b:
            stem = a[: len(a) - len(suf_in)]
            if stem or suf_in:
                return True
    return False


def shapes_pair(a: Tensor, b: Tensor) -> bool:
    """Same dtype, rank and fixed dims; dynamic dims in the same places."""
    if a.dtype != b.dtype or len(a.dims) != len(b.dims):
        return False
    for x, y in zip(a.dims, b.dims):
        if isinstance(x, int) != isinstance(y, int) or (isinstance(x, int) and x != y):
            return False
    return True


@dataclass
class Proposal:
    states: list[tuple[str, str]]
    consts: list[Tensor]  # inputs that look like constants (integer or one-value inputs)
    sample: list[str]  # what is left: the sample input, if the proposal is right


def propose(inputs: list[Tensor], outputs: list[Tensor]) -> Proposal:
    """State pairs from names first (each confirmed by shapes), then unique shape matches
    among what is left, never pairing away the last candidate for the sample input."""
    pairs: list[tuple[str, str]] = []
    used_in: set[str] = set()
    used_out: set[str] = set()
    for i in inputs:
        for o in outputs:
            if o.name not in used_out and names_pair(i.name, o.name) and shapes_pair(i, o):
                pairs.append((i.name, o.name))
                used_in.add(i.name)
                used_out.add(o.name)
                break
    consts = [
        i for i in inputs if i.name not in used_in and (_looks_const(i) and not _float_vector(i))
    ]
    left = [i for i in inputs if i.name not in used_in and i not in consts]
    for i in list(left):
        if len(left) <= 1:
            break
        matches = [o for o in outputs if o.name not in used_out and shapes_pair(i, o)]
        rivals = [j for j in left if j is not i and any(shapes_pair(j, o) for o in matches)]
        if len(matches) == 1 and not rivals and len(i.dims) >= 2:
            pairs.append((i.name, matches[0].name))
            used_out.add(matches[0].name)
            left.remove(i)
    return Proposal(pairs, consts, [i.name for i in left])


def _looks_const(t: Tensor) -> bool:
    fixed = all(isinstance(d, int) for d in t.dims)
    one_value = fixed and int(np.prod(t.dims or (1,))) == 1
    return one_value or (t.dtype is not None and t.dtype.kind in "iub")


def _float_vector(t: Tensor) -> bool:
    return t.dtype is not None and t.dtype.kind == "f" and len(t.dims) >= 2


def proposal_command(src: str, dst: Optional[str], proposal: Proposal) -> str:
    words = ["edgernn", "wrap", src, "-o", dst or _default_out(src)]
    for a, b in proposal.states:
        words += ["--state", f"{a}:{b}"]
    for c in proposal.consts:
        words += ["--const", f"{c.name}=VALUE"]
    return " ".join(shlex.quote(w) for w in words)


def _default_out(src: str) -> str:
    stem, ext = os.path.splitext(src)
    return f"{stem}.edgernn{ext or '.onnx'}"


# ----------------------------------------------------------------------------------
# checking a declaration


@dataclass
class Checked:
    """A declaration checked against the graph: everything the metadata says."""

    sample: Tensor
    input_shape: tuple  # None at the batch axis
    states: list[StateSpec]
    consts: list[ConstSpec]
    outputs: list[OutputSpec]
    primary: str
    probe: dict[str, Any]  # what the probe fed and got, for the check after writing


def check(session, inputs: list[Tensor], outputs: list[Tensor], decl: Declaration) -> Checked:
    ins = {t.name: t for t in inputs}
    outs = {t.name: t for t in outputs}
    _check_pairs(decl, ins, outs)
    const_names = set(decl.consts)
    sample = _sample_input(ins, {a for a, _ in decl.states}, const_names)
    batch_sym, input_shape, _ = _sample_layout(sample, decl.channels)
    states = [
        StateSpec(a, b, _state_shape(ins[a], batch_sym), ins[a].dtype.name)  # type: ignore[union-attr]
        for a, b in decl.states
    ]
    consts = [_const(ins[name], text, batch_sym) for name, text in decl.consts.items()]
    runner = _Probe(session, sample.name, input_shape, batch_sym is not None, consts, states)
    out_shapes = runner.output_shapes([o.name for o in outputs if o.name not in _state_outs(decl)])
    for spec in states:
        runner.check_state_shape(spec)
    primary = decl.output or next(iter(out_shapes), None)
    if primary is None:
        raise WrapError("the graph has no outputs besides its states")
    if primary not in out_shapes:
        raise WrapError(
            f"--output {primary!r} is not a non-state output of the graph "
            f"(those are {', '.join(out_shapes) or 'none'})"
        )
    out_specs = [OutputSpec(name, shape) for name, shape in out_shapes.items()]
    for spec in states:
        runner.check_carried(spec, list(out_shapes))
    return Checked(sample, input_shape, states, consts, out_specs, primary, runner.record())


def _state_outs(decl: Declaration) -> set[str]:
    return {b for _, b in decl.states}


def _check_pairs(decl: Declaration, ins: dict, outs: dict) -> None:
    seen_in: set[str] = set()
    seen_out: set[str] = set()
    for a, b in decl.states:
        if a not in ins and a in outs and b in ins:
            raise WrapError(
                f"state pair {a}:{b} is reversed: {a} is an output of the graph and {b} an "
                f"input; write --state {b}:{a} (IN:OUT)"
            )
        if a not in ins:
            raise WrapError(f"state input {a!r} is not an input of the graph ({_names(ins)})")
        if b not in outs:
            raise WrapError(f"state output {b!r} is not an output of the graph ({_names(outs)})")
        if a in seen_in or b in seen_out:
            raise WrapError(f"state pair {a}:{b} reuses a name declared in another pair")
        if a in decl.consts:
            raise WrapError(f"{a!r} is declared both as a state and as a const")
        seen_in.add(a)
        seen_out.add(b)
        if not shapes_pair(ins[a], outs[b]):
            raise WrapError(
                f"state pair {a}:{b} does not match: {a} is {ins[a].describe()}, "
                f"{b} is {outs[b].describe()}"
            )
        if ins[a].dtype is None or ins[a].dtype.name not in _ORT_DTYPES.values():
            raise WrapError(f"state {a!r} is not a plain tensor ({ins[a].describe()})")
    if decl.check_names:
        _check_names_agree(decl.states)
    for name in decl.consts:
        if name not in ins:
            raise WrapError(f"const {name!r} is not an input of the graph ({_names(ins)})")


def _check_names_agree(pairs: list[tuple[str, str]]) -> None:
    """Refuse a crossed wiring the names contradict (h0:cn with c0:hn)."""
    declared_outs = [b for _, b in pairs]
    for a, b in pairs:
        if names_pair(a, b):
            continue
        better = [o for o in declared_outs if o != b and names_pair(a, o)]
        if better:
            owner = next(x for x, y in pairs if y == better[0])
            raise WrapError(
                f"state pairs {a}:{b} and {owner}:{better[0]} contradict the names "
                f"({a} -> {better[0]} by name): the wrong state would be fed back; if the "
                "graph really is wired so, add --ignore-names"
            )


def _names(tensors: dict, shown: int = 12) -> str:
    names = list(tensors)
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return "the graph has " + ", ".join(names[:shown]) + more if names else "the graph has none"


def _sample_input(ins: dict, state_ins: set, const_names: set) -> Tensor:
    left = [t for name, t in ins.items() if name not in state_ins and name not in const_names]
    if len(left) == 1:
        return left[0]
    if not left:
        raise WrapError("every input is declared a state or a const: none is left for the sample")
    names = ", ".join(f"{t.name} {t.describe()}" for t in left)
    raise WrapError(
        f"inputs {names} are neither states nor consts; edgernn feeds one sample input: "
        "declare the others with --state IN:OUT or --const NAME=VALUE"
    )


def _sample_layout(sample: Tensor, channels: Optional[list[str]]):
    """(batch symbol or None, input shape with None at the batch axis, F)."""
    dims = sample.dims
    if sample.dtype is None or sample.dtype.kind != "f":
        raise WrapError(f"the sample input {sample.name!r} is {sample.describe()}, not float")
    if len(dims) not in (1, 2):
        raise WrapError(
            f"the sample input {sample.name!r} has shape {sample.describe()}; edgernn feeds "
            "one sample per step as [batch, features] or [features]"
        )
    last = dims[-1]
    if isinstance(last, int):
        n_features = last
        if channels is not None and len(channels) != last:
            raise WrapError(
                f"--channels names {len(channels)} channels; the sample input "
                f"{sample.name!r} takes {last}"
            )
    elif channels:
        n_features = len(channels)
    else:
        raise WrapError(
            f"the sample input {sample.name!r} has no fixed feature count "
            f"({sample.describe()}): name them with --channels"
        )
    if len(dims) == 1:
        return None, (n_features,), n_features
    first = dims[0]
    if isinstance(first, int) and first != 1:
        raise WrapError(
            f"the sample input {sample.name!r} has a fixed batch of {first} "
            f"({sample.describe()}); edgernn steps one sample per stream: export the graph "
            "with a dynamic (or 1) batch"
        )
    batch_sym = None if isinstance(first, int) else (first if first is not None else "")
    return batch_sym, (None, n_features), n_features


def _state_shape(t: Tensor, batch_sym: Optional[str]) -> tuple:
    dynamic = [k for k, d in enumerate(t.dims) if not isinstance(d, int)]
    named = [k for k in dynamic if batch_sym and t.dims[k] == batch_sym]
    if batch_sym is not None and len(named) == 1:
        axis = named[0]
    elif batch_sym is not None and len(dynamic) == 1:
        axis = dynamic[0]
    elif not dynamic:
        axis = None
    else:
        raise WrapError(
            f"state {t.name!r} ({t.describe()}) has dynamic dims wrap cannot size: "
            "only the batch axis may be dynamic"
        )
    if axis is not None and len(dynamic) > 1:
        raise WrapError(
            f"state {t.name!r} ({t.describe()}) has dynamic dims besides the batch axis"
        )
    return tuple(None if k == axis else int(d) for k, d in enumerate(t.dims))


def _const(t: Tensor, text: str, batch_sym: Optional[str]) -> ConstSpec:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise WrapError(
            f"--const {t.name}={text[:40]}: the value is not a number or JSON list"
        ) from e
    if t.dtype is None:
        raise WrapError(f"const {t.name!r} is not a plain tensor ({t.describe()})")
    try:
        arr = np.asarray(value, dtype=t.dtype)
    except (TypeError, ValueError, OverflowError) as e:
        raise WrapError(f"--const {t.name}: the value is not {t.dtype.name} ({e})") from e
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise WrapError(f"--const {t.name}: the value holds NaN or inf")
    dims = t.dims
    shape: list = []
    fixed = all(isinstance(d, int) for d in dims)
    if fixed and arr.size == 1 and int(np.prod(dims, dtype=np.int64)) == 1:
        arr = arr.reshape(tuple(dims))  # one value: 16000 for a [1] or [] input alike
    if len(dims) == arr.ndim + 1 and batch_sym is not None:
        # the value given without the batch axis: find it and broadcast along it
        axis = next((k for k, d in enumerate(dims) if not isinstance(d, int)), None)
        if axis is None:
            raise WrapError(_const_shape_error(t, arr))
        rest = [d for k, d in enumerate(dims) if k != axis]
        _fit(t, arr, rest)
        shape = [None if k == axis else int(arr.shape[k - (k > axis)]) for k in range(len(dims))]
    elif len(dims) == arr.ndim:
        _fit(t, arr, dims)
        shape = list(arr.shape)
    else:
        raise WrapError(_const_shape_error(t, arr))
    return ConstSpec(t.name, t.dtype.name, tuple(shape), arr.tolist())


def _fit(t: Tensor, arr: np.ndarray, dims) -> None:
    for have, want in zip(arr.shape, dims):
        if isinstance(want, int) and have != want:
            raise WrapError(_const_shape_error(t, arr))


def _const_shape_error(t: Tensor, arr: np.ndarray) -> str:
    return f"--const {t.name}: a value of shape {list(arr.shape)} does not fit {t.describe()}"


class _Probe:
    """Steps the graph with plain session.run to learn its output shapes and check the
    states: a few random samples, from zeros and from random states."""

    def __init__(self, session, sample: str, input_shape, batched: bool, consts, states):
        self.session, self.sample, self.input_shape = session, sample, input_shape
        self.consts, self.states = consts, states
        self.batched = batched  # the sample's batch axis is dynamic
        self.rng = np.random.default_rng(PROBE_SEED)
        self.X = self.rng.standard_normal((PROBE_STEPS,) + graph_shape(input_shape, 1))
        self.X = self.X.astype(np.float32)
        self._record: dict[str, Any] = {}

    def feeds(self, x, states: dict, batch: int) -> dict:
        feeds = {self.sample: x.astype(self.session_dtype(self.sample))}
        feeds.update({c.name: c.array(batch) for c in self.consts})
        feeds.update(states)
        return feeds

    def session_dtype(self, name: str) -> np.dtype:
        for i in self.session.get_inputs():
            if i.name == name:
                return np.dtype(_ORT_DTYPES.get(i.type, "float32"))
        return np.dtype(np.float32)

    def zeros(self, batch: int) -> dict:
        return {s.input: np.zeros(graph_shape(s.shape, batch), s.dtype) for s in self.states}

    def run(self, names: list[str], feeds: dict) -> list[np.ndarray]:
        try:
            return self.session.run(names, feeds)
        except Exception as e:  # onnxruntime's own error types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WrapError(f"the graph does not run as declared ({first[:200]})") from e

    def output_shapes(self, names: list[str]) -> dict[str, tuple]:
        one = self.run(names, self.feeds(self.X[0], self.zeros(1), 1))
        shapes = {n: tuple(v.shape) for n, v in zip(names, one)}
        if not self.batched:
            return shapes
        x2 = np.repeat(self.X[0], 2, axis=0)
        two = self.run(names, self.feeds(x2, self.zeros(2), 2))
        out = {}
        for n, v in zip(names, two):
            changed = [k for k, (a, b) in enumerate(zip(shapes[n], v.shape)) if a != b]
            if len(v.shape) != len(shapes[n]) or len(changed) > 1:
                raise WrapError(f"output {n!r} changes shape unpredictably with the batch size")
            axis = changed[0] if changed else None
            out[n] = tuple(None if k == axis else d for k, d in enumerate(shapes[n]))
        return out

    def check_state_shape(self, spec: StateSpec) -> None:
        for batch in (1, 2) if self.batched and spec.batch_axis is not None else (1,):
            x = np.repeat(self.X[0], batch, axis=0) if batch > 1 else self.X[0]
            (new,) = self.run([spec.output], self.feeds(x, self.zeros(batch), batch))
            want = graph_shape(spec.shape, batch)
            if tuple(new.shape) != want or new.dtype != np.dtype(spec.dtype):
                raise WrapError(
                    f"state pair {spec.input}:{spec.output} does not match: {spec.input} is "
                    f"{spec.dtype} {list(want)}, the graph writes {spec.output} as "
                    f"{new.dtype} {list(new.shape)}"
                )

    def stepped(self, names: list[str], state: dict) -> tuple[list[list[np.ndarray]], dict]:
        """names' values at each probe step, from `state`, states fed back."""
        state = dict(state)
        outs = [s.output for s in self.states]
        got = []
        for x in self.X:
            values = self.run(names + outs, self.feeds(x, state, 1))
            got.append(values[: len(names)])
            state = {s.input: v for s, v in zip(self.states, values[len(names) :])}
        return got, state

    def check_carried(self, spec: StateSpec, names: list[str]) -> None:
        base, _ = self.stepped(names, self.zeros(1))
        start = self.zeros(1)
        start[spec.input] = self.random_state(spec)
        moved, _ = self.stepped(names, start)
        scale = max(max(float(np.abs(v).max(initial=0)) for v in step) for step in base) or 1.0
        diff = max(
            float(np.abs(a.astype(np.float64) - b).max(initial=0))
            for sa, sb in zip(base, moved)
            for a, b in zip(sa, sb)
        )
        if not diff > CARRY_MIN_DIFFERENCE * scale:
            raise WrapError(
                f"state {spec.input}:{spec.output} is not carried: the graph's outputs from a "
                f"random {spec.input} equal those from zeros over {PROBE_STEPS} steps (is "
                f"{spec.input} a state input?)"
            )

    def random_state(self, spec: StateSpec) -> np.ndarray:
        shape = graph_shape(spec.shape, 1)
        if np.dtype(spec.dtype).kind == "f":
            return (0.5 * self.rng.standard_normal(shape)).astype(spec.dtype)
        return self.rng.integers(0, 3, shape).astype(spec.dtype)

    def record(self) -> dict[str, Any]:
        """A reference for the written file: the probe samples stepped from a random
        state, every output at the last step."""
        start = {s.input: self.random_state(s) for s in self.states}
        names = [o.name for o in self.session.get_outputs()]
        non_state = [n for n in names if n not in {s.output for s in self.states}]
        got, end = self.stepped(non_state, start)
        return {"X": self.X, "start": start, "last": dict(zip(non_state, got[-1])), "end": end}


# ----------------------------------------------------------------------------------
# the metadata and the file


def build_meta(checked: Checked, decl: Declaration) -> ModelMeta:
    from edgernn import __version__

    if decl.task not in TASKS or decl.task == "forecast":
        raise WrapError(
            f"--task {decl.task!r}: a wrapped graph is regress, classify or custom "
            "(forecast is for edgernn's own forecasters)"
        )
    n = checked.input_shape[-1]
    channels = list(decl.channels) if decl.channels else [f"ch{i}" for i in range(n)]
    if len(set(channels)) != len(channels):
        raise WrapError(f"--channels has duplicate names: {channels}")
    outputs = list(checked.outputs)
    primary = next(o for o in outputs if o.name == checked.primary)
    classes, targets = None, None
    if decl.task in ("classify", "regress"):
        width = _last_axis(primary, decl.task)
        given = decl.classes if decl.task == "classify" else decl.targets
        default = (
            [f"class{i}" for i in range(width)]
            if decl.task == "classify"
            else ([primary.name] if width == 1 else [f"{primary.name}{i}" for i in range(width)])
        )
        names = list(given) if given else default
        if len(names) != width or len(set(names)) != len(names):
            flag = "--classes" if decl.task == "classify" else "--targets"
            raise WrapError(
                f"{flag} names {len(names)} distinct values for output {primary.name!r} of "
                f"width {width}"
            )
        if decl.task == "classify":
            classes = names
            _check_probabilities(checked, primary.name)
        else:
            targets = names
    elif decl.classes or decl.targets:
        raise WrapError("--classes goes with --task classify, --targets with --task regress")
    meta = ModelMeta(
        task=decl.task,
        channels=channels,
        input=checked.sample.name,
        output=primary.name,
        outputs=outputs,
        consts=list(checked.consts),
        states=list(checked.states),
        classes=classes,
        targets=targets,
        extra={"producer": f"edgernn {__version__} wrap"},
    )
    return ModelMeta.from_props(meta.to_props(), source="the declaration")  # validated


def _last_axis(o: OutputSpec, task: str) -> int:
    dims = [d for d in o.shape if d is not None]
    if len(dims) != 1:
        raise WrapError(
            f"task {task}: the primary output {o.name!r} must be [batch, K] or [K], "
            f"it is {shape_json(o.shape)}"
        )
    return int(dims[0])


def _check_probabilities(checked: Checked, name: str) -> None:
    p = np.asarray(checked.probe["last"][name], np.float64)
    axis = p.ndim - 1
    if p.size and (p.min() < -1e-6 or p.max() > 1 + 1e-6 or
                   np.abs(p.sum(axis=axis) - 1).max() > 1e-3):  # fmt: skip
        raise WrapError(
            f"task classify: output {name!r} is not class probabilities (rows do not sum to "
            "1); pick the softmax output with --output"
        )


def wrap(src: str, dst: str, decl: Declaration) -> ModelMeta:
    """Check `decl` against the graph at `src` and write it, with our metadata, to `dst`
    (atomically: a failure never costs a file already at dst)."""
    if os.path.abspath(src) == os.path.abspath(dst) or (
        os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst)
    ):
        raise InputError(f"{dst} is the input graph: write the wrapped graph to a new file")
    session, inputs, outputs = open_graph(src)
    if not decl.states and not decl.stateless:
        raise WrapError("no --state given (a graph without state: --stateless)")
    if decl.states and decl.stateless:
        raise WrapError("--stateless contradicts --state")
    checked = check(session, inputs, outputs, decl)
    meta = build_meta(checked, decl)
    _write(src, dst, meta, checked)
    return meta


def _write(src: str, dst: str, meta: ModelMeta, checked: Checked) -> None:
    from edgernn.export.onnx_export import staged

    onnx = require("onnx", "train")  # writing the copy needs onnx
    try:
        proto = onnx.load(src)
    except Exception as e:  # onnx's own decode errors
        raise ModelFormatError(f"{src}: onnx cannot read it ({str(e)[:160]})") from e
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(meta.to_props())
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        with staged(dst) as tmp:
            onnx.save(proto, tmp)
            verify_written(tmp, meta, checked)
    except OSError as e:
        raise EdgernnError(f"{dst}: cannot write ({e.strerror or e})") from e


def verify_written(path: str, meta: ModelMeta, checked: Checked) -> None:
    """The written file, streamed by our runtime from the probe's random state, gives the
    probe's outputs: the metadata describes the graph as the checks found it."""
    from edgernn.runtime.model import Model

    model = Model(path, backend="onnxruntime")
    probe = checked.probe
    state = {
        s.input: np.take(probe["start"][s.input], 0, axis=s.batch_axis)
        if s.batch_axis is not None
        else probe["start"][s.input]
        for s in meta.states
    }
    stream = model.stream(state=state)
    for x in probe["X"]:
        stream.step(x[0] if checked.input_shape[0] is None else x)
    last = stream.outputs
    for o in meta.outputs:
        want = probe["last"][o.name]
        want = np.take(want, 0, axis=o.batch_axis) if o.batch_axis is not None else want
        if not np.allclose(last[o.name], want, rtol=1e-5, atol=1e-6):
            raise ModelFormatError(
                f"internal check failed: the wrapped graph's {o.name!r} differs from the "
                "probe's (please report this)"
            )


__all__ = [
    "Declaration", "Proposal", "WrapError", "build_meta", "check", "names_pair",
    "open_graph", "propose", "proposal_command", "wrap",
]  # fmt: skip
