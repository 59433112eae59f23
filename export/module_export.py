"""Export any recurrent PyTorch module as a stateful single-step ONNX graph.

`export_module(module, example, path)` takes an nn.Module whose forward maps a sequence
[batch, time, features] (or [time, batch, features] with time_first=True) to per-step
outputs (a tensor, a tuple of tensors, or a dict of named tensors) and writes a graph that
takes one step `x` [batch, features] plus the previous states and returns the outputs of
that step plus the next states: the same kind of graph as our own forecasters.

How: a copy of the module has every unidirectional nn.LSTM / nn.GRU / nn.RNN and every
causal nn.Conv1d replaced by a stand-in that reads its state from a StepContext and records
its next state there. Streaming runs the copy on sequences of one step; the same stand-ins
run a whole sequence from a given initial state, which is the reference the exported graph
must equal. Convolutions carry the last (kernel - 1) * dilation inputs in a ring-buffer
state [batch, in_channels, span] that replaces the left zero padding.

Gates, in order: structural refusals (attention, pooling over time, bidirectional RNNs,
strided or centred convolutions, each naming the submodule); the causality gate on the
module itself (outputs at step t must not move when only inputs after t change); the
stand-ins must reproduce the module from a zero state; onnx.checker; the streaming parity
gate: onnxruntime steps the graph from a random non-zero state and every output at every
step, and every final state, must satisfy |a - b| <= atol + rtol * |b| against the module
on the whole sequence. A graph that fails parity is kept as PATH.failed.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import numpy as np

from edgernn import __version__
from edgernn.errors import ExportError, require
from edgernn.export.onnx_export import (
    DEFAULT_OPSET,
    MIN_OPSET,
    _torch_export,
    check_graph,
    staged,
    stamp,
)
from edgernn.runtime.metadata import ModelMeta, OutputSpec, StateSpec, shape_json, validate

torch = require("torch")
nn = torch.nn
F = torch.nn.functional

TASKS = ("regress", "classify", "custom")
DEFAULT_TOLERANCE = (1e-5, 1e-5)  # atol, rtol: |a - b| <= atol + rtol * |ref|
# Steps of the example the parity gate streams. State wired wrong shows from step 1; over
# hundreds of steps two float32 implementations of a long-memory LSTM (hidden 128, forget
# gate ~1) drift apart by ~6e-5 while float32 itself is ~2e-5 off float64.
PARITY_STEPS = 64
INPUT_NAME = "x"
ATTENTION = (
    nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder,
    nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
)  # fmt: skip
POOLING = (nn.AvgPool1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d)
CELLS = (nn.LSTMCell, nn.GRUCell, nn.RNNCell)
RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)

Tolerance = Union[float, tuple[float, float]]


@dataclass
class ModuleExportReport:
    """What export_module wrote and how closely the graph follows the module."""

    path: str
    input: str
    outputs: list[str]
    states: list[StateSpec]
    steps: int
    batch: int
    errors: dict[str, float] = field(default_factory=dict)  # max |graph - module| per name

    @property
    def max_abs(self) -> float:
        return max(self.errors.values(), default=0.0)

    def line(self) -> str:
        def shape(s):
            return "[" + ", ".join("batch" if d is None else str(d) for d in s) + "]"

        states = ", ".join(f"{s.input} {shape(s.shape)}" for s in self.states) or "none"
        return (
            f"wrote {self.path}: outputs {', '.join(self.outputs)}; states {states}; parity max "
            f"abs error {self.max_abs:.2e} over {self.steps} steps x {self.batch} streams"
        )


# ------------------------------------------------------------------- step context
class StepContext:
    """The states one call of the copied module starts from, and the next states its
    stand-ins leave. `steps` is the length of the sequence the call runs (1 when
    streaming): a convolution tells its own left padding from it."""

    def __init__(self, steps: int, batch: int, states: dict | None = None):
        self.steps = steps
        self.batch = batch
        self.states = dict(states or {})
        self.next: dict[str, Any] = {}
        self.entered: list[str] = []

    def enter(self, standin) -> list:
        """The stand-in's starting state (zeros unless given); refuses a second call."""
        if standin.path in self.entered:
            raise ExportError(
                f"{standin.display}: called more than once per step; its state would be "
                "ambiguous (use one module per call site)"
            )
        self.entered.append(standin.path)
        return [
            self.states[name] if name in self.states else torch.zeros(fill_batch(shape, self.batch))
            for name, shape in zip(standin.state_inputs, standin.state_shapes)
        ]

    def record(self, standin, values: Sequence) -> None:
        self.next.update(zip(standin.state_inputs, values))


class Carrier:
    """Shared by the wrapper and the stand-ins: the context of the call in progress."""

    def __init__(self):
        self.context: StepContext | None = None

    @contextlib.contextmanager
    def using(self, context: StepContext):
        self.context = context
        try:
            yield context
        finally:
            self.context = None

    def current(self, standin) -> StepContext:
        if self.context is None:
            raise ExportError(f"{standin.display}: stand-in called outside an export step")
        return self.context


def fill_batch(shape: tuple, batch: int) -> tuple[int, ...]:
    return tuple(batch if d is None else d for d in shape)


class StandIn(nn.Module):
    """A stateful stand-in: knows its place in the module and its state names/shapes.
    Attributes it lacks are read from the layer it wraps, so the user's code can still
    ask `self.conv.padding` or `self.lstm.hidden_size`."""

    WRAPS = ""  # the name of the wrapped layer among the stand-in's submodules

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__["_modules"].get(self.WRAPS)
            if inner is None:
                raise
            return getattr(inner, name)

    def setup(self, path: str, prefix: str, carrier: Carrier, kinds: Sequence[str]):
        self.path = path
        self.display = path or "module"
        self.carrier = carrier
        self.state_inputs = [f"{prefix}_{k}" for k in kinds]
        self.state_outputs = [f"{prefix}_{k}_out" for k in kinds]


class StreamingRNN(StandIn):
    """nn.LSTM / nn.GRU / nn.RNN whose state comes from the step context. Any hx the
    caller passes is replaced by the carried state (export_module checks beforehand
    that the module's own initial state is zero)."""

    WRAPS = "rnn"

    def __init__(self, rnn, path: str, prefix: str, carrier: Carrier):
        super().__init__()
        self.rnn = rnn
        self.is_lstm = isinstance(rnn, nn.LSTM)
        self.setup(path, prefix, carrier, ["h", "c"] if self.is_lstm else ["h"])
        proj = getattr(rnn, "proj_size", 0) or 0
        layers, hidden = rnn.num_layers, rnn.hidden_size
        self.state_shapes = [(layers, None, proj or hidden)] + (
            [(layers, None, hidden)] if self.is_lstm else []
        )

    def forward(self, input, hx=None):
        ctx = self.carrier.current(self)
        if not torch.is_tensor(input):
            raise ExportError(f"{self.display}: takes a {type(input).__name__}; export needs a "
                              "padded tensor (no PackedSequence)")  # fmt: skip
        if input.dim() != 3:
            raise ExportError(f"{self.display}: unbatched {input.dim()}-D input; export needs "
                              "[batch, time, features] or [time, batch, features]")  # fmt: skip
        self.check_axes(input, ctx)
        state = ctx.enter(self)
        first = tuple(state) if self.is_lstm else state[0]
        if self.is_lstm and self.rnn.proj_size > 0 and ctx.steps == 1:
            out, new = self.projected_step(input, state)  # ONNX's LSTM has no projection
        else:
            out, new = self.rnn(input, first)
        ctx.record(self, list(new) if self.is_lstm else [new])
        return out, new

    def check_axes(self, input, ctx: StepContext) -> None:
        """The layer must run over the sequence's own time and batch axes."""
        time_axis = 1 if self.rnn.batch_first else 0
        length, batch = input.shape[time_axis], input.shape[1 - time_axis]
        if (length, batch) != (ctx.steps, ctx.batch):
            raise ExportError(
                f"{self.display}: runs over {steps(length)} of batch {batch} (batch_first="
                f"{self.rnn.batch_first}) where the module was given {steps(ctx.steps)} of batch "
                f"{ctx.batch}: a recurrent layer must run along the sequence's time axis "
                "(is time_first right?)"
            )

    def projected_step(self, input, state):
        """One step of an LSTM with proj_size, from its weights (gates i f g o)."""
        rnn = self.rnn
        time_axis = 1 if rnn.batch_first else 0
        x = input.select(time_axis, 0)
        h0, c0 = state
        hs, cs = [], []
        for layer in range(rnn.num_layers):
            w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
            b_ih = getattr(rnn, f"bias_ih_l{layer}") if rnn.bias else None
            b_hh = getattr(rnn, f"bias_hh_l{layer}") if rnn.bias else None
            gates = F.linear(x, w_ih, b_ih) + F.linear(h0[layer], w_hh, b_hh)
            i, f, g, o = gates.split(rnn.hidden_size, dim=1)  # static sizes: a plain Split
            c = torch.sigmoid(f) * c0[layer] + torch.sigmoid(i) * torch.tanh(g)
            h = F.linear(torch.sigmoid(o) * torch.tanh(c), getattr(rnn, f"weight_hr_l{layer}"))
            hs.append(h)
            cs.append(c)
            x = h
        return x.unsqueeze(time_axis), (torch.stack(hs), torch.stack(cs))


class StreamingConv1d(StandIn):
    """A causal nn.Conv1d over the last (time) axis whose left zero padding, written
    either as F.pad before the conv or as the conv's own padding, is replaced by a
    buffer of the last `span` inputs. The idiom that trims the right end afterwards
    gets an output of the length it trims: the real steps, then `right` zero columns in
    place of the outputs that saw the right padding (the trim drops them; the check that
    the stand-ins reproduce the module proves it does). So each step costs one output."""

    WRAPS = "conv"

    def __init__(self, conv, path: str, prefix: str, carrier: Carrier, right: int):
        super().__init__()
        self.conv = conv
        self.span = conv_span(conv)
        self.right = right  # zero padding on the right: the conv's own padding
        self.padding = conv.padding  # what the user's code reads (`y[..., :-conv.padding[0]]`)
        conv.padding = (0,)  # the buffer is the padding now; calling the conv runs its hooks
        self.setup(path, prefix, carrier, ["buf"])
        self.state_shapes = [(None, conv.in_channels, self.span)]

    def forward(self, x):
        ctx = self.carrier.current(self)
        if x.dim() != 3:
            raise ExportError(f"{self.display}: unbatched {x.dim()}-D input; export needs "
                              "[batch, channels, time]")  # fmt: skip
        if x.shape[0] != ctx.batch:
            raise ExportError(f"{self.display}: runs over a batch of {x.shape[0]} where the module "
                              f"was given {ctx.batch} (is time_first right?)")  # fmt: skip
        left = x.shape[-1] - ctx.steps  # the zero padding the caller put in front
        self.check_padding(left, x.shape[-1], ctx.steps)
        (buffer,) = ctx.enter(self)
        window = torch.cat([buffer, x[..., left:]], dim=-1)
        ctx.record(self, [window[..., window.shape[-1] - self.span :]])
        out = self.conv(window)  # one output per real step
        return F.pad(out, (0, self.right)) if self.right else out

    def check_padding(self, left: int, length: int, steps: int) -> None:
        need = self.span - self.right
        if left < 0:
            raise ExportError(
                f"{self.display}: its last axis has {length} entries for a sequence of {steps} "
                "steps: a Conv1d must run over time ([batch, channels, time])"
            )
        if left != need:
            k, d = self.conv.kernel_size[0], self.conv.dilation[0]
            raise ExportError(
                f"{self.display}: its input carries {steps(left)} of left padding where kernel "
                f"{k} with dilation {d} needs {need} to stay causal and keep the sequence "
                f"length (pad with F.pad(x, ({need}, 0)) before it)"
            )


def steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def conv_span(conv) -> int:
    return (conv.kernel_size[0] - 1) * conv.dilation[0]


# ---------------------------------------------------------------- module surgery
def refuse_structure(module) -> None:
    """One-line refusals of submodules that look across time or cannot carry state."""
    for path, sub in module.named_modules():
        name = path or "module"
        kind = type(sub).__name__
        if isinstance(sub, ATTENTION):
            raise ExportError(f"{name}: nn.{kind} attends across time steps; a streaming graph "
                              "sees one step at a time")  # fmt: skip
        if isinstance(sub, POOLING):
            raise ExportError(f"{name}: nn.{kind} pools over time; a streaming graph sees one "
                              "step at a time")  # fmt: skip
        if isinstance(sub, CELLS):
            raise ExportError(
                f"{name}: nn.{kind} is stepped by your own loop, which keeps the state where "
                f"export cannot carry it; use nn.{kind[:-4]} over the sequence"
            )
        if isinstance(sub, RECURRENT) and sub.bidirectional:
            raise ExportError(f"{name}: bidirectional nn.{kind} reads the sequence backwards "
                              "from its end; it cannot stream")  # fmt: skip
        if isinstance(sub, nn.Conv1d):
            conv_right_padding(sub, name)


def conv_right_padding(conv, name: str) -> int:
    """The conv's own right zero padding if it is causal (0 or the kernel's span), else
    a one-line refusal saying how it breaks streaming."""
    span, k, d = conv_span(conv), conv.kernel_size[0], conv.dilation[0]
    kernel = f"kernel {k}" + (f" and dilation {d}" if d != 1 else "")
    if conv.stride[0] != 1:
        raise ExportError(f"{name}: stride {conv.stride[0]} emits one output every "
                          f"{conv.stride[0]} steps; a streaming graph emits one per step")  # fmt: skip
    if conv.padding == "same":
        future = span - span // 2
        if future:
            raise ExportError(f"{name}: padding 'same' with {kernel} is centred: it looks "
                              f"{steps(future)} into the future")  # fmt: skip
        return 0
    pad = 0 if conv.padding == "valid" else conv.padding[0]
    if pad and conv.padding_mode != "zeros":
        raise ExportError(f"{name}: padding_mode {conv.padding_mode!r} pads with values of the "
                          "sequence itself, not zeros; it cannot stream")  # fmt: skip
    if 0 < pad < span:
        raise ExportError(f"{name}: padding {pad} with {kernel} is centred: it looks "
                          f"{steps(span - pad)} into the future")  # fmt: skip
    if pad > span:
        raise ExportError(f"{name}: padding {pad} exceeds the span {span} of its {kernel}: "
                          "it would emit outputs before the first step")  # fmt: skip
    return pad


def install_standins(module, carrier: Carrier):
    """Replace every RNN and stateful Conv1d in `module` (in place) by a stand-in.
    Returns (root, stand-ins in module order)."""
    standins, used, made = [], set(), {}

    def prefix_for(path: str, fallback: str) -> str:
        base = path.replace(".", "_") or fallback
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}{n}"
        used.add(name)
        return name

    def make(path, sub):
        if isinstance(sub, RECURRENT):
            return StreamingRNN(sub, path, prefix_for(path, "rnn"), carrier)
        if isinstance(sub, nn.Conv1d):
            right = conv_right_padding(sub, path or "module")
            if conv_span(sub) == 0 and right == 0:
                return None  # a pointwise conv: nothing to carry
            return StreamingConv1d(sub, path, prefix_for(path, "conv"), carrier, right)
        return None

    root = make("", module)
    if root is not None:
        return root, [root]
    # remove_duplicate=False: a layer reached by two paths gets one stand-in, which then
    # refuses its second call per step instead of silently running without state.
    for path, sub in list(module.named_modules(remove_duplicate=False)):
        if not path or isinstance(sub, StandIn):
            continue
        if id(sub) not in made:
            made[id(sub)] = make(path, sub)
            if made[id(sub)] is not None:
                standins.append(made[id(sub)])
        if made[id(sub)] is not None:
            parent_path, _, attr = path.rpartition(".")
            setattr(module.get_submodule(parent_path), attr, made[id(sub)])
    return module, standins


# ------------------------------------------------------------------- outputs
def flatten_outputs(out, names: Sequence[str] | None = None) -> list[tuple[str, Any]]:
    """The module's return value as [(name, tensor)]: a tensor is "y", a tuple "y0".."yN",
    a dict keeps its keys; `names` (output_names) overrides them in order."""
    if torch.is_tensor(out):
        pairs = [("y", out)]
    elif isinstance(out, dict):
        pairs = [(str(k), v) for k, v in out.items()]
    elif isinstance(out, (tuple, list)):
        pairs = [(f"y{i}", v) for i, v in enumerate(out)]
    else:
        raise ExportError(f"the module returns a {type(out).__name__}; return a tensor, a tuple "
                          "of tensors or a dict of named tensors")  # fmt: skip
    for name, value in pairs:
        if not torch.is_tensor(value):
            raise ExportError(
                f"output {name!r} is a {type(value).__name__}, not a tensor: return only "
                "per-step tensors (export carries the recurrent states itself)"
            )
    if names is not None:
        if len(names) != len(pairs):
            raise ExportError(f"output_names has {len(names)} names for {len(pairs)} outputs")
        pairs = [(str(n), v) for n, (_, v) in zip(names, pairs)]
    return pairs


class StepWrapper(nn.Module):
    """forward(x_t [batch, F], *states) -> (*outputs of that step, *next states)."""

    def __init__(self, module, carrier: Carrier, standins: Sequence[StandIn], time_axis: int,
                 output_names: Sequence[str]):  # fmt: skip
        super().__init__()
        self.module = module
        self.carrier = carrier
        self.standins = list(standins)
        self.time_axis = time_axis
        self.output_names = list(output_names)

    def state_inputs(self) -> list[str]:
        return [n for s in self.standins for n in s.state_inputs]

    def forward(self, x, *states):
        context = StepContext(1, x.shape[0], dict(zip(self.state_inputs(), states)))
        with self.carrier.using(context):
            out = self.module(x.unsqueeze(self.time_axis))
        outputs = [v.select(self.time_axis, 0) for _, v in flatten_outputs(out, self.output_names)]
        return (*outputs, *(context.next[n] for n in self.state_inputs()))


def run_sequence(module, carrier: Carrier, x, time_axis: int, states: dict | None = None,
                 names: Sequence[str] | None = None):  # fmt: skip
    """The copied module on a whole sequence from `states` (zeros when absent):
    ([(name, output)], next states, names of the stand-ins it called)."""
    context = StepContext(x.shape[time_axis], x.shape[1 - time_axis], states)
    with torch.no_grad(), carrier.using(context):
        out = call_module(module, x)
    return flatten_outputs(out, names), context.next, context.entered


def call_module(module, x):
    """module(x), anything it raises on the example as one line."""
    try:
        return module(x)
    except ExportError:
        raise
    except Exception as e:  # the user's code: any exception is possible
        raise ExportError(f"the module fails on an input of shape {list(x.shape)}: "
                          f"{type(e).__name__}: {first_line(e)}") from e  # fmt: skip


# --------------------------------------------------------------------- checks
def close_excess(actual: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """|actual - ref| beyond atol + rtol * |ref| (> 0 where the two are not close)."""
    actual, ref = np.asarray(actual, np.float64), np.asarray(ref, np.float64)
    return np.abs(actual - ref) - (atol + rtol * np.abs(ref))


def describe_outputs(pairs, x, time_axis: int) -> list[tuple[str, tuple]]:
    """[(name, per-step shape with None at the batch axis)], refusing outputs that are not
    one value per step."""
    steps, batch = x.shape[time_axis], x.shape[1 - time_axis]
    seen = set()
    described = []
    for name, value in pairs:
        if name in seen or name == INPUT_NAME:
            raise ExportError(f"output name {name!r} is used twice (the input is {INPUT_NAME!r})")
        seen.add(name)
        shape = tuple(value.shape)
        if len(shape) < 2 or shape[time_axis] != steps or shape[1 - time_axis] != batch:
            where = "dim 1 (batch first)" if time_axis == 1 else "dim 0 (time first)"
            raise ExportError(
                f"output {name!r} has shape {list(shape)} for an input of shape {list(x.shape)}: "
                f"no time axis of length {steps} at {where}; return one value per step "
                "(a mean or the last step over time cannot stream)"
            )
        described.append((name, (None, *shape[2:])))
    return described


def causality_gate(module, x, time_axis: int, names, atol: float, rtol: float, seed: int) -> None:
    """Outputs up to step t must not change when only inputs after t change."""
    rng = np.random.default_rng(seed + 1)
    steps = x.shape[time_axis]
    with torch.no_grad():
        ref = flatten_outputs(call_module(module, x), names)
        scale = x.std().clamp_min(1e-3)
        for cut in sorted({steps // 3, (2 * steps) // 3}):
            later = x.clone()
            noise = torch.from_numpy(rng.standard_normal(tuple(x.shape)).astype(np.float32))
            future = later.narrow(time_axis, cut + 1, steps - cut - 1)
            future += scale * noise.narrow(time_axis, cut + 1, steps - cut - 1)
            moved = flatten_outputs(call_module(module, later), names)
            for (name, a), (_, b) in zip(ref, moved):
                early = close_excess(
                    b.narrow(time_axis, 0, cut + 1).numpy(), a.narrow(time_axis, 0, cut + 1).numpy(),
                    atol, rtol,
                )  # fmt: skip
                if (early > 0).any():
                    step = int(np.argwhere(early > 0)[0][time_axis])
                    raise ExportError(
                        f"the module is not causal: output {name!r} at step {step} changes when "
                        f"only inputs after step {cut} change (reversal, a reverse cumulative "
                        "op, or normalisation/pooling over time?)"
                    )


def check_standins_match(pairs, standin_pairs, atol: float, rtol: float) -> None:
    """The copy with stand-ins from a zero state must equal the module itself: otherwise
    the module starts its recurrent layers from a state of its own."""
    for (name, a), (_, b) in zip(pairs, standin_pairs):
        if (close_excess(b.numpy(), a.numpy(), atol, rtol) > 0).any():
            raise ExportError(
                f"output {name!r} changes when the module's recurrent layers start from zeros "
                "and its convs from zero padding: it passes its own initial state (hx; the "
                "graph starts from zeros) or uses conv outputs that see the right padding"
            )


# ----------------------------------------------------------------------- export
def export_module(
    module,
    example,
    path: str | os.PathLike,
    *,
    time_first: bool = False,
    output_names: Sequence[str] | None = None,
    channels: Sequence[str] | None = None,
    task: str = "custom",
    classes: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> ModuleExportReport:
    """Write `module` as a stateful single-step ONNX graph at `path`, gated as the module
    docstring says; raises ExportError (one line) when the module cannot stream."""
    require("onnx")
    atol, rtol = parse_tolerance(tolerance)
    opts = Options(0 if time_first else 1, output_names, channels, task, classes, targets, opset,
                   atol, rtol, seed)  # fmt: skip
    x = check_example(example, opts.time_axis)
    if opset < MIN_OPSET:
        raise ExportError(f"opset must be >= {MIN_OPSET}, got {opset}")
    if task not in TASKS:
        hint = " (forecast is for `edgernn export RUN_DIR`)" if task == "forecast" else ""
        raise ExportError(f"task must be one of {', '.join(TASKS)}, got {task!r}{hint}")
    if not isinstance(module, nn.Module):
        raise ExportError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    with warnings.catch_warnings():
        # torch warns once that oneDNN lacks LSTM projections; it falls back by itself
        warnings.filterwarnings("ignore", message="LSTM with projections")
        prepared = prepare(module, x, opts)
        return write_checked(prepared, x, os.fspath(path), opts)


def parse_tolerance(tolerance: Tolerance) -> tuple[float, float]:
    """atol, or (atol, rtol): the parity test is |a - b| <= atol + rtol * |b|."""
    if np.isscalar(tolerance):
        return float(tolerance), DEFAULT_TOLERANCE[1]
    try:
        atol, rtol = tolerance
        return float(atol), float(rtol)
    except (TypeError, ValueError):
        raise ExportError(f"tolerance must be atol or (atol, rtol), got {tolerance!r}") from None


@dataclass
class Options:
    time_axis: int
    output_names: Sequence[str] | None
    channels: Sequence[str] | None
    task: str
    classes: Sequence[str] | None
    targets: Sequence[str] | None
    opset: int
    atol: float
    rtol: float
    seed: int


@dataclass
class Prepared:
    """The module's copy with its stand-ins, ready to trace, and what it returns."""

    work: Any
    carrier: Carrier
    standins: list
    pairs: list  # [(output name, its value on the example)]
    outputs: list  # [(output name, per-step shape)]
    states: list[StateSpec]

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.pairs]


def copy_module(module):
    """A float32 CPU eval-mode copy to rewrite; the caller's module is never touched."""
    if isinstance(module, torch.jit.ScriptModule):
        raise ExportError("a scripted (torch.jit) module cannot be rewritten; pass the Python "
                          "nn.Module")  # fmt: skip
    try:
        work = copy.deepcopy(module)
    except Exception as e:  # e.g. torch.nn.utils.weight_norm's non-leaf weight
        raise ExportError(
            f"the module cannot be copied ({type(e).__name__}: {first_line(e)[:120]}); with "
            "torch.nn.utils.weight_norm, call torch.nn.utils.remove_weight_norm on each layer "
            "first or use torch.nn.utils.parametrizations.weight_norm"
        ) from e
    return work.cpu().float().eval()


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def prepare(module, x, opts: Options) -> Prepared:
    """Refusals and the causality gate on a copy of the module, then its stand-ins, which
    must reproduce it from a zero state."""
    work = copy_module(module)
    refuse_structure(work)
    with torch.no_grad():
        pairs = flatten_outputs(call_module(work, x), opts.output_names)
    names = [n for n, _ in pairs]
    outputs = describe_outputs(pairs, x, opts.time_axis)
    causality_gate(work, x, opts.time_axis, names, *DEFAULT_TOLERANCE, opts.seed)

    carrier = Carrier()
    work, standins = install_standins(work, carrier)
    standin_pairs, _, entered = run_sequence(work, carrier, x, opts.time_axis, names=names)
    check_standins_match(pairs, standin_pairs, *DEFAULT_TOLERANCE)
    standins = [s for s in standins if s.path in entered]  # a layer never called has no state
    states = [
        StateSpec(i, o, shape, "float32")
        for s in standins for i, o, shape in zip(s.state_inputs, s.state_outputs, s.state_shapes)
    ]  # fmt: skip
    clash = sorted(set(names) & {n for st in states for n in (st.input, st.output)})
    if clash:
        raise ExportError(f"output name {clash[0]!r} is also a state name; rename the output")
    return Prepared(work, carrier, standins, pairs, outputs, states)


def write_checked(prep: Prepared, x, path: str, opts: Options) -> ModuleExportReport:
    """Trace, attach metadata, onnx.checker, then the parity gate; PATH.failed on failure."""
    onnx = require("onnx")
    props = build_props(prep, x, opts)
    wrapper = StepWrapper(prep.work, prep.carrier, prep.standins, opts.time_axis, prep.names)
    # eval before tracing: the exporter puts the wrapper back in the mode it found it in, and
    # a fresh module is in training mode, which would turn BatchNorm/Dropout on in the
    # reference the parity gate runs afterwards.
    wrapper.eval()
    proto = trace(wrapper, prep.states, prep.names, x.shape[-1], opts.opset)
    stamp(proto, opts.opset, props)
    check_graph(proto)
    with staged(path) as tmp:
        onnx.save(proto, tmp)
        try:
            errors, steps, batch = parity_gate(prep, tmp, x, opts)
        except ExportError as e:
            os.replace(tmp, path + ".failed")
            raise ExportError(f"{e}; the graph was kept as {path}.failed for inspection") from e
    return ModuleExportReport(path, INPUT_NAME, prep.names, prep.states, steps, batch, errors)


def check_example(example, time_axis: int):
    if not torch.is_tensor(example):
        example = torch.as_tensor(np.asarray(example, dtype=np.float32))
    if example.dim() != 3:
        layout = "[time, batch, features]" if time_axis == 0 else "[batch, time, features]"
        raise ExportError(f"example must be a 3-D {layout} tensor, got shape {list(example.shape)}")
    if example.shape[time_axis] < 2:
        raise ExportError(
            f"example must hold at least 2 time steps, got shape {list(example.shape)}"
        )
    x = example.detach().cpu().float()
    if not torch.isfinite(x).all():
        raise ExportError("example holds NaN or inf")
    return x


def trace(wrapper, states: list[StateSpec], names: list[str], features: int, opset: int):
    """torch.onnx.export of the step wrapper, with a dynamic batch axis everywhere."""
    onnx = require("onnx")
    batch = 2  # not 1: a traced batch of one can bake broadcasting in
    args = (
        torch.zeros(batch, features),
        *(torch.zeros(fill_batch(s.shape, batch)) for s in states),
    )
    dynamic = {INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in names}}
    for s in states:
        axis = s.shape.index(None)
        dynamic[s.input] = dynamic[s.output] = {axis: "batch"}
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.onnx")
        with warnings.catch_warnings():
            # The exporter warns about RNNs with explicit state and batch sizes: the parity
            # gate settles that for every batch it runs.
            warnings.simplefilter("ignore")
            _torch_export(
                wrapper, args, raw, input_names=[INPUT_NAME, *(s.input for s in states)],
                output_names=[*names, *(s.output for s in states)], dynamic_axes=dynamic,
                opset_version=opset, dynamo=False,
            )  # fmt: skip
        proto = onnx.load(raw)
    graph_inputs = [i.name for i in proto.graph.input]
    missing = [n for n in [INPUT_NAME, *(s.input for s in states)] if n not in graph_inputs]
    if missing:
        raise ExportError(f"the exported graph does not use {', '.join(missing)}: the outputs "
                          "do not depend on it")  # fmt: skip
    return proto


def build_props(prep: Prepared, x, opts: Options) -> dict:
    """Format-2 metadata (SPEC-graph-format.md) for the exported graph."""
    features = x.shape[-1]
    channels, task, classes, targets = opts.channels, opts.task, opts.classes, opts.targets
    channels = (
        [f"ch{i}" for i in range(features)] if channels is None else [str(c) for c in channels]
    )
    if len(channels) != features:
        raise ExportError(f"{len(channels)} channel names for {features} input features")
    if len(set(channels)) != len(channels):
        raise ExportError(f"duplicate channel names {channels}")
    outputs, states, pairs, time_axis = prep.outputs, prep.states, prep.pairs, opts.time_axis
    primary, shape = outputs[0]
    columns = None
    if task == "classify":
        classes = class_names(classes, pairs[0], shape)
        columns = classes
    elif classes is not None:
        raise ExportError(f"classes are for task classify, not {task}")
    if targets is not None:
        if task != "regress":
            raise ExportError(f"targets are for task regress, not {task}")
        targets = [str(t) for t in targets]
        if len(shape) != 2 or shape[1] != len(targets):
            raise ExportError(f"{len(targets)} targets for output {primary!r} of per-step shape "
                              f"{shape_json(shape)}")  # fmt: skip
        columns = targets
    meta = ModelMeta(
        task=task,
        channels=channels,
        input=INPUT_NAME,
        output=primary,
        outputs=[
            OutputSpec(name, s, tuple(columns) if i == 0 and columns is not None else None)
            for i, (name, s) in enumerate(outputs)
        ],
        states=list(states),
        classes=list(classes) if task == "classify" else None,
        targets=targets,
        time_axis="time_first" if time_axis == 0 else "batch_first",
        extra={"producer": f"edgernn {__version__} export_module"},
    )
    validate(meta, "exported graph")
    return meta.to_props()


def class_names(classes, primary, shape) -> list[str]:
    """The class names of a classifier, checked against its primary output."""
    name, value = primary
    if len(shape) != 2:
        raise ExportError(f"task classify: output {name!r} has per-step shape {shape_json(shape)}; "
                          "class probabilities are [batch, classes]")  # fmt: skip
    k = shape[1]
    classes = [str(i) for i in range(k)] if classes is None else [str(c) for c in classes]
    if len(classes) != k:
        raise ExportError(f"{len(classes)} class names for output {name!r} of {k} classes")
    if len(set(classes)) != k:
        raise ExportError(f"duplicate class names {classes}")
    p = value.double()
    sums = p.sum(-1)
    if (p < -1e-6).any() or ((sums - 1).abs() > 1e-3).any():
        raise ExportError(
            f"task classify: output {name!r} is not class probabilities (rows sum to "
            f"{float(sums.min()):.3g}..{float(sums.max()):.3g}): end the module with a softmax"
        )
    return classes


# ----------------------------------------------------------------- parity gate
def parity_batch(x, time_axis: int, seed: int):
    """The example and a perturbed copy side by side: at least two independent streams."""
    rng = np.random.default_rng(seed + 2)
    batch_axis = 1 - time_axis
    first = x.narrow(batch_axis, 0, min(x.shape[batch_axis], 2))
    noise = torch.from_numpy(rng.standard_normal(tuple(first.shape)).astype(np.float32))
    return torch.cat([first, first + 0.5 * first.std().clamp_min(1e-3) * noise], dim=batch_axis)


def random_states(standins, batch: int, seed: int) -> dict:
    """A random non-zero start: a zero start hides state wired wrong between calls."""
    rng = np.random.default_rng(seed + 3)
    states = {}
    for s in standins:
        for name, shape in zip(s.state_inputs, s.state_shapes):
            value = 0.5 * rng.standard_normal(fill_batch(shape, batch))
            states[name] = torch.from_numpy(value.astype(np.float32))
    return states


def parity_gate(prep: Prepared, graph_path: str, x, opts: Options):
    """Step the graph with onnxruntime from a random state; compare every output at every
    step and every final state with the module on the whole sequence from that state.
    Returns ({name: max abs error}, steps, batch)."""
    axis, names = opts.time_axis, prep.names
    seq = parity_batch(x.narrow(axis, 0, min(x.shape[axis], PARITY_STEPS)), axis, opts.seed)
    batch, steps = seq.shape[1 - axis], seq.shape[axis]
    start = random_states(prep.standins, batch, opts.seed)
    ref_pairs, ref_states, _ = run_sequence(prep.work, prep.carrier, seq, axis, start, names)
    start = {k: v.numpy() for k, v in start.items()}
    got, final = stream_graph(graph_path, seq, axis, names, prep.states, start)
    errors = {}
    for name, ref in ref_pairs:
        errors[name] = compare(got[name], ref.numpy(), opts, f"output {name!r}", axis)
    for name, ref in ref_states.items():
        what = f"state {name!r} after step {steps - 1}"
        errors[name] = compare(final[name], ref.numpy(), opts, what, None)
    return errors, steps, batch


def stream_graph(graph_path, seq, time_axis: int, names, states: list[StateSpec], state: dict):
    """onnxruntime steps the graph over `seq`, feeding each step's next states back:
    ({output: array with the time axis where the module has it}, final states)."""
    ort = require("onnxruntime", extra="runtime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(graph_path, options, providers=["CPUExecutionProvider"])
    got: dict[str, list] = {n: [] for n in names}
    for t in range(seq.shape[time_axis]):
        feed = {INPUT_NAME: np.ascontiguousarray(seq.select(time_axis, t).numpy()), **state}
        result = session.run([*names, *(s.output for s in states)], feed)
        for n, value in zip(names, result):
            got[n].append(value)
        state = {s.input: value for s, value in zip(states, result[len(names) :])}
    return {n: np.stack(v, axis=time_axis) for n, v in got.items()}, state


def compare(actual, ref, opts: Options, what: str, time_axis: int | None) -> float:
    """Max |actual - ref|, or a one-line ExportError naming the first step that is off."""
    if actual.shape != ref.shape:
        raise ExportError(f"parity check failed: {what} has shape {list(actual.shape)}, the "
                          f"module's {list(ref.shape)}")  # fmt: skip
    atol, rtol = opts.atol, opts.rtol
    excess = close_excess(actual, ref, atol, rtol)
    worst = float(np.max(np.abs(actual.astype(np.float64) - ref), initial=0.0))
    if not (excess <= 0).all():  # NaN counts as a failure
        where = hint = ""
        if time_axis is not None:
            step = int(np.argwhere(~(excess <= 0))[0][time_axis])
            where = f" at step {step}"
            if step > 0:  # the first step agreed: something is kept across steps uncarried
                hint = (": the module keeps something across steps that export does not carry "
                        "(a cumulative op over time?)")  # fmt: skip
        raise ExportError(
            f"parity check failed: {what}{where} differs from the module by {worst:.3g} "
            f"(tolerance {atol:g} + {rtol:g} * |value|){hint}"
        )
    return worst
