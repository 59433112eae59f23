"""Graphs made elsewhere: format-2 metadata, `edgernn wrap`, and the runtime on any
stateful single-step graph (several inputs, named outputs, states of any rank)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from edgernn.errors import ModelFormatError
from edgernn.runtime.metadata import ConstSpec, ModelMeta, OutputSpec, StateSpec

# ----------------------------------------------------------------------------------
# metadata


def classifier_meta(**changes) -> ModelMeta:
    fields = dict(
        task="classify",
        channels=["ax", "ay"],
        input="x",
        output="p",
        classes=["rest", "wave"],
        outputs=[OutputSpec("p", (None, 2)), OutputSpec("logit", (None, 2))],
        states=[StateSpec("h0", "hn", (1, None, 8)), StateSpec("buf", "buf_out", (None, 2, 3, 4))],
        consts=[ConstSpec("sr", "float32", (1,), [16000.0])],
    )
    fields.update(changes)
    return ModelMeta(**fields)


def test_format2_round_trip():
    meta = classifier_meta()
    props = meta.to_props()
    assert props["edgernn_format"] == "2" and "cell" not in props and "layers" not in props
    back = ModelMeta.from_props(props)
    assert back.task == "classify" and back.cell == "custom" and back.layers == 0
    assert back.primary.columns == ("rest", "wave")  # filled from the classes
    assert back.states == meta.states and back.consts == meta.consts
    assert back.states[1].batch_axis == 0 and back.states[0].layers == 1
    with pytest.raises(ModelFormatError, match="not \\[layers, batch, hidden\\]"):
        _ = back.states[1].hidden


def test_format1_positional_state_spec_still_means_layers_hidden():
    spec = StateSpec("h", "h_out", 2, 16)
    assert spec.shape == (2, None, 16) and (spec.layers, spec.hidden) == (2, 16)
    assert spec == StateSpec.stacked("h", "h_out", 2, 16)


def test_format1_props_are_read():
    props = {
        "edgernn_format": "1", "cell": "gru", "nonlinearity": "tanh", "trained_as": "bptt",
        "layers": "1", "hidden": "4", "horizon": "1", "residual": "1",
        "channels": '["a", "b"]', "input": "x", "output": "y",
        "state": '[{"input": "h", "output": "h_out", "shape": [1, "batch", 4]}]',
        "norm_mean": "[0, 0]", "norm_std": "[1, 1]", "producer": "edgernn 0.1.0",
    }  # fmt: skip
    meta = ModelMeta.from_props(props)
    assert meta.task == "forecast" and meta.primary == OutputSpec("y", (None, 2), ("a", "b"))
    assert meta.extra == {"producer": "edgernn 0.1.0"} and meta.producer == "edgernn 0.1.0"


def _hostile(key, value):
    props = classifier_meta().to_props()
    if value is None:
        props.pop(key)
    else:
        props[key] = value
    return props


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("task", "dance", "unknown task 'dance'"),
        ("edgernn_format", "9", "format 9"),
        ("edgernn_format", "two", "not a number"),
        ("state", '[{"input": "h0", "output": "hn", "shape": [1, "batch", -8]}]', "between 1"),
        (
            "state",
            '[{"input": "h0", "output": "hn", "shape": [1, "batch", 2.5]}]',
            "not an integer",
        ),
        (
            "state",
            '[{"input": "h0", "output": "hn", "shape": ["batch", "batch"]}]',
            "more than one",
        ),
        ("state", '[{"input": "h0", "output": "hn", "shape": "1x8"}]', "must be a list"),
        ("state", '{"input": "h0"}', "must be a JSON list"),
        ("state", '[{"input": "h0", "shape": [1]}]', "no 'output'"),
        ("state", '[{"input": "h0", "output": "p", "shape": [1]}]', "duplicate output names"),
        ("state", '[{"input": "x", "output": "hn", "shape": [1]}]', "duplicate input names"),
        ("state", '[{"input": 3, "output": "hn", "shape": [1]}]', "non-empty name"),
        ("state", '[{"input": "h", "output": "hn", "shape": [1], "dtype": "cplx"}]', "dtype"),
        ("channels", '["a", "a"]', "duplicate channel"),
        ("channels", '"ab"', "list of names"),
        ("channels", None, "no 'channels'|missing key"),
        ("outputs", '[{"name": "q", "shape": ["batch", 2]}]', "primary output 'p'"),
        ("outputs", '[{"name": "p", "shape": ["batch", 3], "columns": ["a", "b"]}]', "2 columns"),
        ("classes", '["a", "a"]', "duplicate classes"),
        ("classes", None, "needs classes"),
        ("consts", '[{"name": "sr", "dtype": "float32", "shape": [2], "value": [1]}]', "shape"),
        ("consts", '[{"name": "sr", "dtype": "float32", "shape": [1], "value": ["x"]}]', "value"),
        ("consts", '[{"name": "sr", "dtype": "blob", "shape": [1], "value": [1]}]', "dtype"),
        ("channels", "[" * 100000 + "]" * 100000, "nested too deeply"),
        ("consts", "[" * 40 + "]" * 40, "nested too deeply"),
        ("outputs", "{not json", "not valid JSON"),
    ],
)
def test_hostile_metadata_is_one_line_error(key, value, message):
    with pytest.raises(ModelFormatError, match=message) as info:
        ModelMeta.from_props(_hostile(key, value), source="m.onnx")
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_hostile_forecaster_metadata():
    props = classifier_meta().to_props()
    props.update(task="forecast", cell="lstm", layers="x", hidden="4", norm_mean="[0,0]")
    props["norm_std"] = "[1,1]"
    with pytest.raises(ModelFormatError, match="layers 'x' is not an integer"):
        ModelMeta.from_props(props)
    props.update(layers="-1")
    with pytest.raises(ModelFormatError, match="layers and hidden"):
        ModelMeta.from_props(props)


def test_deep_extra_key_stays_text():
    props = classifier_meta().to_props()
    props["metrics"] = "[" * 5000 + "]" * 5000
    assert ModelMeta.from_props(props).extra["metrics"] == props["metrics"]


def test_const_broadcast_along_batch():
    c = ConstSpec("sr", "float32", (None, 1), [16000.0])
    assert c.array(None).shape == (1, 1) and c.array(3).shape == (3, 1)
    assert json.loads(json.dumps(c.to_json()))["shape"] == ["batch", 1]


# ----------------------------------------------------------------------------------
# third-party-style graphs, built here with onnx.helper

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

F, H = 3, 5


def _weights(rng, *shape):
    return numpy_helper.from_array((0.5 * rng.standard_normal(shape)).astype(np.float32))


def _save(graph, path, opset=17):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def gru_graph(path, seed=0, n="N"):
    """`x` [batch, F], `state` [1, batch, H] -> `y` [batch, 2], `score` [batch, 1], `stateN`
    (n=1: a graph exported with a fixed batch of one)."""
    rng = np.random.default_rng(seed)
    w, r, b = _weights(rng, 1, 3 * H, F), _weights(rng, 1, 3 * H, H), _weights(rng, 1, 6 * H)
    w.name, r.name, b.name = "W", "R", "B"
    wo, ws = _weights(rng, H, 2), _weights(rng, 2, 1)
    wo.name, ws.name = "Wo", "Ws"
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes0")
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axes0"], ["x3"]),
        helper.make_node(
            "GRU",
            ["x3", "W", "R", "B", "", "state"],
            ["", "stateN"],
            hidden_size=H,
            linear_before_reset=1,
        ),  # fmt: skip
        helper.make_node("Squeeze", ["stateN", "axes0"], ["h"]),
        helper.make_node("MatMul", ["h", "Wo"], ["y"]),
        helper.make_node("MatMul", ["y", "Ws"], ["s0"]),
        helper.make_node("Sigmoid", ["s0"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes, "third_party_gru",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, F]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, n, H])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, 2]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, [n, 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [1, n, H])],
        [w, r, b, wo, ws, axes],
    )  # fmt: skip
    return _save(graph, path)


def lstm_graph(path, seed=1):
    """`x` [batch, F], `h0`, `c0` [1, batch, H], const `sr` [1] (the graph scales x by
    sr / 16000) -> `probs` [batch, 3] (softmax), `hn`, `cn`."""
    rng = np.random.default_rng(seed)
    w, r, b = _weights(rng, 1, 4 * H, F), _weights(rng, 1, 4 * H, H), _weights(rng, 1, 8 * H)
    w.name, r.name, b.name = "W", "R", "B"
    wo = _weights(rng, H, 3)
    wo.name = "Wo"
    inits = [w, r, b, wo, numpy_helper.from_array(np.array([0], np.int64), "axes0"),
             numpy_helper.from_array(np.array([16000.0], np.float32), "ref_rate")]  # fmt: skip
    nodes = [
        helper.make_node("Div", ["sr", "ref_rate"], ["scale"]),
        helper.make_node("Mul", ["x", "scale"], ["xs"]),
        helper.make_node("Unsqueeze", ["xs", "axes0"], ["x3"]),
        helper.make_node(
            "LSTM", ["x3", "W", "R", "B", "", "h0", "c0"], ["", "hn", "cn"], hidden_size=H
        ),  # fmt: skip
        helper.make_node("Squeeze", ["hn", "axes0"], ["h"]),
        helper.make_node("MatMul", ["h", "Wo"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "third_party_lstm",
        [helper.make_tensor_value_info("x", f32, ["batch", F]),
         helper.make_tensor_value_info("h0", f32, [1, "batch", H]),
         helper.make_tensor_value_info("c0", f32, [1, "batch", H]),
         helper.make_tensor_value_info("sr", f32, [1])],
        [helper.make_tensor_value_info("probs", f32, ["batch", 3]),
         helper.make_tensor_value_info("hn", f32, [1, "batch", H]),
         helper.make_tensor_value_info("cn", f32, [1, "batch", H])],
        inits,
    )  # fmt: skip
    return _save(graph, path)


K = 4  # ring buffer length of the rank-4 state


def ring_graph(path, seed=2):
    """A causal conv front-end in the manner of a streaming exporter: `buf_in`
    [batch, K, 1, F] holds the last K samples; `buf_out` is it shifted by the new one;
    `y` [batch, 2] = flatten(buf_out) @ W (a rank-4 state)."""
    rng = np.random.default_rng(seed)
    wo = _weights(rng, K * F, 2)
    wo.name = "Wo"
    ints = lambda v, n: numpy_helper.from_array(np.array(v, np.int64), n)  # noqa: E731
    nodes = [
        helper.make_node("Slice", ["buf_in", "one", "big", "one"], ["older"]),
        helper.make_node("Unsqueeze", ["x", "axes12"], ["x4"]),
        helper.make_node("Concat", ["older", "x4"], ["buf_out"], axis=1),
        helper.make_node("Flatten", ["buf_out"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "Wo"], ["y"]),
    ]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "ring",
        [helper.make_tensor_value_info("x", f32, ["B", F]),
         helper.make_tensor_value_info("buf_in", f32, ["B", K, 1, F])],
        [helper.make_tensor_value_info("y", f32, ["B", 2]),
         helper.make_tensor_value_info("buf_out", f32, ["B", K, 1, F])],
        [wo, ints([1], "one"), ints([K], "big"), ints([1, 2], "axes12")],
    )  # fmt: skip
    return _save(graph, path)


def unbatched_graph(path, seed=3):
    """No batch axis anywhere: `x` [F], `h` [H] -> `out` [H] = tanh(x W + h U), `h_out`."""
    rng = np.random.default_rng(seed)
    w, u = _weights(rng, F, H), _weights(rng, H, H)
    w.name, u.name = "Wx", "Wh"
    nodes = [
        helper.make_node("MatMul", ["x", "Wx"], ["a"]),
        helper.make_node("MatMul", ["h", "Wh"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["out"]),
        helper.make_node("Identity", ["out"], ["h_out"]),
    ]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "unbatched",
        [helper.make_tensor_value_info("x", f32, [F]), helper.make_tensor_value_info("h", f32, [H])],
        [helper.make_tensor_value_info("out", f32, [H]),
         helper.make_tensor_value_info("h_out", f32, [H])],
        [w, u],
    )  # fmt: skip
    return _save(graph, path)


def reference_loop(path, pairs, X, state, consts=None, batched=True):
    """The graph stepped with plain session.run, state fed back by hand: what a user of
    the graph's own docs would write. Returns every output name -> [T, ...]."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    state = {k: np.asarray(v, np.float32) for k, v in state.items()}
    got = {n: [] for n in names}
    for x in X:
        feeds = {"x": (x if batched else x).astype(np.float32), **state, **(consts or {})}
        outs = dict(zip(names, session.run(names, feeds)))
        for n in names:
            got[n].append(outs[n])
        state = {i: outs[o] for i, o in pairs}
    return {n: np.stack(v) for n, v in got.items()}, state


# ----------------------------------------------------------------------------------
# wrap + Model: streaming equals the graph's own reference loop

from edgernn.errors import InputError  # noqa: E402
from edgernn.runtime import Model  # noqa: E402
from edgernn.runtime.wrap import Declaration, WrapError, open_graph, propose, wrap  # noqa: E402

BACKENDS = ("onnxruntime", "numpy")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """Each third-party graph and its wrapped copy, with the pairs used."""
    d = tmp_path_factory.mktemp("graphs")
    made = {}
    specs = {
        "gru": (gru_graph, [("state", "stateN")], {}, {}),
        "lstm": (lstm_graph, [("h0", "hn"), ("c0", "cn")], {"sr": "8000"},
                 {"task": "classify", "classes": ["rest", "wave", "tilt"]}),
        "ring": (ring_graph, [("buf_in", "buf_out")], {}, {"channels": ["ax", "ay", "az"]}),
        "unbatched": (unbatched_graph, [("h", "h_out")], {}, {}),
    }  # fmt: skip
    for name, (build, pairs, consts, options) in specs.items():
        src = build(d / f"{name}.onnx")
        dst = str(d / f"{name}.edgernn.onnx")
        wrap(src, dst, Declaration(states=pairs, consts=consts, **options))
        made[name] = (src, dst, pairs)
    return made


def _graph_state(state, model, batch):
    """User-facing state (no batch axis for batch=None) -> what the graph is fed."""
    out = {}
    for s in model.meta.states:
        v = state[s.input]
        out[s.input] = (
            np.expand_dims(v, s.batch_axis) if batch is None and s.batch_axis is not None else v
        )
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["gru", "lstm", "ring", "unbatched"])
def test_stream_equals_reference_loop_from_random_state(graphs, name, backend):
    src, dst, pairs = graphs[name]
    model = Model(dst, backend=backend)
    assert model.generic and model.backend == backend
    rng = np.random.default_rng(7)
    state = {s.input: (0.5 * rng.standard_normal(tuple(d for d in s.shape if d is not None)))
             .astype(np.float32) for s in model.meta.states}  # fmt: skip
    X = rng.standard_normal((12, F)).astype(np.float32)
    batched = model.input_shape[0] is None
    consts = {c.name: c.array(None) for c in model.meta.consts}
    want, want_state = reference_loop(
        src, pairs, X[:, None] if batched else X, _graph_state(state, model, None), consts
    )
    stream = model.stream(state=state)
    for t, x in enumerate(X):
        y = stream.step(x)
        for o in model.meta.outputs:
            ref = want[o.name][t][0] if batched else want[o.name][t]
            np.testing.assert_allclose(stream.outputs[o.name], ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(y, stream.outputs[model.meta.output])
    for s in model.meta.states:
        ref = want_state[s.input]
        ref = np.take(ref, 0, axis=s.batch_axis) if s.batch_axis is not None else ref
        np.testing.assert_allclose(stream.state[s.input], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["gru", "lstm", "ring"])
def test_batched_streams_and_split_resume(graphs, name, backend):
    _, dst, _ = graphs[name]
    model = Model(dst, backend=backend)
    rng = np.random.default_rng(3)
    B = 3
    state = {k: (0.5 * rng.standard_normal(v.shape)).astype(np.float32)
             for k, v in model.zero_state(B).items()}  # fmt: skip
    X = rng.standard_normal((10, B, F)).astype(np.float32)
    whole = model.stream(state=state, batch=B).run(X)
    first = model.stream(state=state, batch=B)
    head = first.run(X[:4])
    second = model.stream(state=first.state, batch=B)
    tail = np.stack([second.step(x) for x in X[4:]])
    np.testing.assert_array_equal(np.concatenate([head, tail]), whole)
    # each batch row is the same as that stream alone
    alone = model.stream(state={k: v[_batch_index(model, k, 1)] for k, v in state.items()})
    np.testing.assert_allclose(alone.run(X[:, 1]), whole[:, 1], rtol=1e-5, atol=1e-6)


def _batch_index(model, name, i):
    spec = next(s for s in model.meta.states if s.input == name)
    index = [slice(None)] * len(spec.shape)
    index[spec.batch_axis] = i
    return tuple(index)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_sample_refused_state_untouched(graphs, backend):
    model = Model(graphs["lstm"][1], backend=backend)
    stream = model.stream()
    stream.step(np.ones(F))
    before, outputs = stream.state, stream.outputs
    with pytest.raises(InputError, match="NaN or inf"):
        stream.step(np.array([1.0, np.nan, 0.0]))
    after = stream.state
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert all(np.array_equal(outputs[k], stream.outputs[k]) for k in outputs)
    with pytest.raises(InputError, match="shape"):
        stream.state = {"h0": np.zeros((1, H)), "c0": np.zeros((2, H))}
    with pytest.raises(InputError, match="keys"):
        stream.state = {"h0": np.zeros((1, H))}


def test_unbatched_graph_refuses_batch(graphs):
    model = Model(graphs["unbatched"][1])
    assert not model.batchable and model.input_shape == (F,)
    with pytest.raises(InputError, match="no batch axis"):
        model.stream(batch=2)


def test_auto_backend_serves_generic_graph_on_onnxruntime(graphs):
    model = Model(graphs["gru"][1])
    assert model.backend == "onnxruntime"
    with pytest.raises(ModelFormatError, match="c backend serves only edgernn forecasters"):
        Model(graphs["gru"][1], backend="c")


def test_numpy_interpreter_names_an_op_it_lacks(tmp_path, graphs):
    src, _, _ = graphs["gru"]
    proto = onnx.load(src)
    proto.graph.node[-1].op_type = "HardSigmoid"  # onnxruntime runs it; numpy does not
    odd = str(tmp_path / "odd.onnx")
    onnx.save(proto, odd)
    wrapped = str(tmp_path / "odd.edgernn.onnx")
    wrap(odd, wrapped, Declaration(states=[("state", "stateN")]))
    assert Model(wrapped, backend="onnxruntime").stream().step(np.ones(F)).shape == (2,)
    with pytest.raises(ModelFormatError, match="HardSigmoid") as info:
        Model(wrapped, backend="numpy")
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------
# wrap's checks


def test_proposals_from_names_and_shapes(graphs):
    for name, want_pairs, want_consts in (
        ("gru", [("state", "stateN")], []),
        ("lstm", [("h0", "hn"), ("c0", "cn")], ["sr"]),
        ("ring", [("buf_in", "buf_out")], []),
    ):
        _, inputs, outputs = open_graph(graphs[name][0])
        proposal = propose(inputs, outputs)
        assert proposal.states == want_pairs and [c.name for c in proposal.consts] == want_consts
        assert proposal.sample == ["x"]


@pytest.mark.parametrize(
    "pairs, message",
    [
        ([("hn", "h0"), ("c0", "cn")], "reversed: hn is an output"),
        ([("h0", "cn"), ("c0", "hn")], "contradict the names"),
        ([("h0", "hn")], "neither states nor consts"),
        ([("h0", "probs"), ("c0", "cn")], "does not match: h0 is float32 \\[1, batch, 5\\]"),
        ([("h0", "hn"), ("c0", "cn"), ("x", "probs")], "none is left for the sample"),
        ([("h0", "hx"), ("c0", "cn")], "not an output of the graph"),
    ],
)
def test_wrong_declarations_refused(graphs, tmp_path, pairs, message):
    src = graphs["lstm"][0]
    out = tmp_path / "out.onnx"
    out.write_text("keep me")
    with pytest.raises(WrapError, match=message) as info:
        wrap(src, str(out), Declaration(states=pairs, consts={"sr": "16000"}))
    assert "\n" not in str(info.value)
    assert out.read_text() == "keep me"  # an existing output is never destroyed


def test_state_not_carried_refused(tmp_path):
    """A state input the graph ignores (outputs from a random state equal those from
    zeros): the wiring bug users report most, refused."""
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Tanh", ["x"], ["y"]), helper.make_node("Identity", ["y"], ["h_out"])],
        "ignores_state",
        [helper.make_tensor_value_info("x", f32, ["N", F]),
         helper.make_tensor_value_info("h", f32, ["N", F])],
        [helper.make_tensor_value_info("y", f32, ["N", F]),
         helper.make_tensor_value_info("h_out", f32, ["N", F])],
    )  # fmt: skip
    src = _save(graph, tmp_path / "g.onnx")
    with pytest.raises(WrapError, match="h:h_out is not carried"):
        wrap(src, str(tmp_path / "w.onnx"), Declaration(states=[("h", "h_out")]))


def test_state_written_wider_than_read_refused(tmp_path):
    """A state written with a different width than it is read (the graph's declared
    output shape disagrees with what it computes) is refused."""
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Concat", ["h", "x"], ["h_out"], axis=1),
         helper.make_node("Tanh", ["h_out"], ["y"])],
        "grows",
        [helper.make_tensor_value_info("x", f32, ["N", F]),
         helper.make_tensor_value_info("h", f32, ["N", H])],
        [helper.make_tensor_value_info("y", f32, ["N", H + F]),
         helper.make_tensor_value_info("h_out", f32, ["N", H])],  # says H, writes H + F
    )  # fmt: skip
    src = _save(graph, tmp_path / "g.onnx", opset=13)
    with pytest.raises(WrapError, match="state pair h:h_out does not match"):
        wrap(src, str(tmp_path / "w.onnx"), Declaration(states=[("h", "h_out")]))


def test_const_checks(graphs, tmp_path):
    src = graphs["lstm"][0]
    pairs = [("h0", "hn"), ("c0", "cn")]
    for value, message in (("[1, 2]", "does not fit"), ("abc", "not a number"), ("NaN", "NaN")):
        with pytest.raises(WrapError, match=message):
            wrap(src, str(tmp_path / "w.onnx"), Declaration(states=pairs, consts={"sr": value}))
    with pytest.raises(WrapError, match="not class probabilities"):
        wrap(graphs["gru"][0], str(tmp_path / "w.onnx"), Declaration(
            states=[("state", "stateN")], task="classify", classes=["a", "b"]))  # fmt: skip
    with pytest.raises(WrapError, match="--classes names 2 distinct values"):
        wrap(src, str(tmp_path / "w.onnx"), Declaration(
            states=pairs, consts={"sr": "8000"}, task="classify", classes=["a", "b"]))  # fmt: skip


def test_const_value_reaches_the_graph(graphs, tmp_path):
    """The const is fed every step: a different sample rate gives different outputs."""
    src = graphs["lstm"][0]
    pairs = [("h0", "hn"), ("c0", "cn")]
    outs = []
    for sr in ("8000", "[16000]"):
        dst = str(tmp_path / f"w{sr.strip('[]')}.onnx")
        wrap(src, dst, Declaration(states=pairs, consts={"sr": sr}))
        outs.append(Model(dst).stream().run(np.ones((3, F))))
    assert not np.allclose(outs[0], outs[1])
    assert Model(dst).meta.consts[0].value == [16000.0]


def test_refuses_to_overwrite_its_input(graphs):
    src = graphs["gru"][0]
    with pytest.raises(InputError, match="is the input graph"):
        wrap(src, src, Declaration(states=[("state", "stateN")]))


# ----------------------------------------------------------------------------------
# the command line: wrap, run --csv, info, quantize, bench on a wrapped graph


def cli(capsys, *args):
    """`edgernn ARGS` in this process: (exit code, stdout, stderr)."""
    from edgernn.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_proposes_pairs_without_state_and_the_proposal_runs(graphs, tmp_path, capsys):
    src = graphs["lstm"][0]
    dst = tmp_path / "w.onnx"
    code, out, _ = cli(capsys, "wrap", src, "-o", dst)
    assert code == 1 and not dst.exists()  # nothing guessed silently
    assert "h0 -> hn" in out and "c0 -> cn" in out and "sr float32 [1] looks like a constant" in out
    command = out.strip().splitlines()[-1].split()
    assert command[:2] == ["edgernn", "wrap"] and "--state" in command
    assert command[command.index("--const") + 1] == "sr=VALUE"
    command[command.index("--const") + 1] = "sr=16000"
    code, out, _ = cli(capsys, *command[1:])
    assert code == 0 and "states h0 -> hn, c0 -> cn" in out and dst.exists()


def test_cli_refusals_are_one_line(graphs, tmp_path, capsys):
    src = graphs["gru"][0]
    for args, message in (
        (["--state", "stateN:state"], "reversed"),
        (["--state", "state:y"], "does not match"),
        (["--state", "state"], None),  # a usage error: argparse exits 2
    ):
        if message is None:
            with pytest.raises(SystemExit) as exit_info:
                cli(capsys, "wrap", src, "-o", tmp_path / "w.onnx", *args)
            assert exit_info.value.code == 2
            continue
        code, _, err = cli(capsys, "wrap", src, "-o", tmp_path / "w.onnx", *args)
        assert code == 1 and message in err and err.count("\n") == 1, err
        assert err.startswith("edgernn: error: ")


def _csv(path, n=6, names=("ax", "ay", "az"), time_col=True):
    rng = np.random.default_rng(0)
    rows = ["time," * time_col + ",".join(names)]
    for i in range(n):
        rows.append(
            f"{i * 0.01:.2f}," * time_col + ",".join(f"{v:.4f}" for v in rng.standard_normal(3))
        )
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_cli_run_csv_writes_every_named_output(graphs, tmp_path, capsys):
    src = graphs["gru"][0]
    custom, regress = tmp_path / "custom.onnx", tmp_path / "regress.onnx"
    assert cli(capsys, "wrap", src, "-o", custom, "--state", "state:stateN",
               "--channels", "ax,ay,az")[0] == 0  # fmt: skip
    assert cli(capsys, "wrap", src, "-o", regress, "--state", "state:stateN",
               "--channels", "ax,ay,az", "--task", "regress", "--targets", "flow,temp")[0] == 0  # fmt: skip
    data = _csv(tmp_path / "in.csv")
    out = tmp_path / "out.csv"
    code, _, err = cli(capsys, "run", custom, "--csv", data, "-o", out)
    assert code == 0 and "6 rows in, 6 steps" in err
    lines = out.read_text().splitlines()
    assert lines[0] == "time,ax,ay,az,y_0,y_1,score" and len(lines) == 7
    # the values are the stream's outputs, row by row
    model = Model(custom)
    stream = model.stream()
    X = np.loadtxt(data, delimiter=",", skiprows=1)[:, 1:]
    for x, line in zip(X, lines[1:]):
        stream.step(x)
        got = np.array(line.split(",")[4:], dtype=np.float32)
        want = np.concatenate([stream.outputs["y"], stream.outputs["score"]])
        np.testing.assert_allclose(got, want, rtol=1e-6)
    code, _, _ = cli(capsys, "run", regress, "--csv", data, "-o", tmp_path / "r.jsonl")
    record = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert list(record) == ["time", "ax", "ay", "az", "flow_pred", "temp_pred", "score"]


def test_cli_run_classifier_probabilities_and_label(graphs, tmp_path, capsys):
    _, dst, _ = graphs["lstm"]
    data = _csv(tmp_path / "in.csv", names=("ch0", "ch1", "ch2"), time_col=False)
    code, out, _ = cli(capsys, "run", dst, "--csv", data)
    lines = out.splitlines()
    # label: the most probable class; event: the decision layer's class (hysteresis,
    # minimum duration: runtime/decision.py), empty while no event counts.
    assert lines[0] == "ch0,ch1,ch2,p_rest,p_wave,p_tilt,label,event"
    for line in lines[1:]:
        cells = line.split(",")
        p = np.array(cells[3:6], dtype=float)
        assert abs(p.sum() - 1) < 1e-5 and cells[6] == ["rest", "wave", "tilt"][int(p.argmax())]
        assert cells[7] in ("", "rest", "wave", "tilt")
    code, _, err = cli(capsys, "run", dst, "--csv", data, "--alarm-every", "100")
    assert code == 1 and "anomaly detector scores forecasts" in err


def test_cli_info_describes_a_wrapped_graph(graphs, capsys):
    _, dst, _ = graphs["lstm"]
    code, out, _ = cli(capsys, "info", dst)
    assert code == 0 and "task classify" in out
    for text in ("const        sr float32 [1] = [8000.0]", "state        h0 -> hn float32",
                 "output       probs ['batch', 3] (primary) columns rest, wave, tilt", "LSTM x1"):  # fmt: skip
        assert text in out, out
    code, out, _ = cli(capsys, "info", dst, "--json")
    desc = json.loads(out)
    assert desc["state"][1] == {"input": "c0", "output": "cn", "shape": [1, "batch", H],
                                "dtype": "float32"}  # fmt: skip
    assert desc["consts"][0]["value"] == [8000.0] and desc["producer"].endswith("wrap")


@pytest.mark.parametrize("mode", ["dynamic", "fp16"])
def test_cli_quantize_a_wrapped_graph(graphs, tmp_path, capsys, mode):
    _, dst, _ = graphs["gru"]
    out = tmp_path / f"q.{mode}.onnx"
    code, text, err = cli(capsys, "quantize", dst, "-o", out, "--mode", mode)
    assert code == 0, err
    assert "deviation y_0" in text and "synthetic stream at unit scale" in text
    q = Model(out)
    assert (
        q.meta.extra["quantization"]["mode"] == mode and q.meta.outputs == Model(dst).meta.outputs
    )
    stream = q.stream()
    stream.step(np.ones(F))
    assert set(stream.outputs) == {"y", "score"}
    code, _, err = cli(capsys, "quantize", dst, "-o", tmp_path / "s.onnx", "--mode", "static",
                       "--calib", _csv(tmp_path / "c.csv", names=("ch0", "ch1", "ch2")))  # fmt: skip
    assert code == 1 and "--mode dynamic or fp16" in err


def test_bench_on_a_wrapped_graph(graphs):
    from edgernn.runtime.bench import BenchConfig, format_report, run_bench

    cfg = BenchConfig(samples=30, rounds=1, batch=4, batch_steps=2)
    report = run_bench(graphs["lstm"][1], cfg)
    results = report["single"][0]["results"]
    assert {"edgernn (onnxruntime)", "onnxruntime session.run"} <= set(results)
    assert results["onnxruntime session.run"]["max_abs_diff"] < 1e-5  # the same stream
    assert report["batched"]["backends"]["onnxruntime"]["gflops"] is None
    assert "onnxruntime session.run" in format_report(report)
    unbatched = run_bench(graphs["unbatched"][1], cfg)
    assert unbatched["batched"] is None and any("no batch axis" in n for n in unbatched["notes"])


# ----------------------------------------------------------------------------------
# the README's example runs as written

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_blocks(title: str) -> list[tuple[str, str]]:
    """(language, text) of each fenced block in the README section `## title`."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end > 0 else len(text)]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def _commands(sh: str) -> list[str]:
    """Shell lines, continuations joined, comments kept for the exit-code check."""
    return [line.strip() for line in sh.replace("\\\n", " ").splitlines() if line.strip()]


def test_readme_graph_made_elsewhere_example_runs(tmp_path):
    pytest.importorskip("torch")
    blocks = readme_blocks("A graph made elsewhere")
    assert [lang for lang, _ in blocks] == ["python", "sh", "python"]
    script, shell, usage = (code for _, code in blocks)
    name = script.splitlines()[0].lstrip("# ").split(":")[0]
    (tmp_path / name).write_text(script)
    rng = np.random.default_rng(0)
    rows = ["low,mid,high,energy"] + [",".join(f"{v:.4f}" for v in r) for r in rng.random((20, 4))]
    (tmp_path / "features.csv").write_text("\n".join(rows) + "\n")
    for line in _commands(shell):
        command, _, comment = line.partition("#")
        words = shlex.split(command)
        head = [sys.executable] if words[0] == "python" else [sys.executable, "-m", "edgernn"]
        proc = subprocess.run(
            head + words[1:], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        want = 1 if "exits 1" in comment else 0
        assert proc.returncode == want, f"{line}\n{proc.stdout}\n{proc.stderr}"
        if want == 1:
            assert "--state state:stateN --const sr=VALUE" in proc.stdout
    header = (tmp_path / "prob.csv").read_text().splitlines()[0]
    assert header == "low,mid,high,energy,prob"
    proc = subprocess.run(
        [sys.executable, "-c", usage], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "['prob'] {'state': (2, 16)}" in proc.stdout


def test_fixed_batch_graph_streams_one_at_a_time(tmp_path):
    src = gru_graph(tmp_path / "fixed.onnx", n=1)
    dst = str(tmp_path / "fixed.edgernn.onnx")
    meta = wrap(src, dst, Declaration(states=[("state", "stateN")]))
    assert meta.states[0].shape == (1, 1, H)  # no batch axis to mark: shapes as they are
    model = Model(dst)
    assert model.fixed_batch == 1 and not model.batchable
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, F)).astype(np.float32)
    state = {"state": (0.5 * rng.standard_normal((1, 1, H))).astype(np.float32)}
    want, _ = reference_loop(src, [("state", "stateN")], X[:, None], state)
    stream = model.stream(state=state)
    got = np.stack([stream.step(x) for x in X])
    np.testing.assert_allclose(got, want["y"], rtol=1e-5, atol=1e-6)


def test_fixed_batch_above_one_refused(tmp_path):
    src = gru_graph(tmp_path / "fixed4.onnx", n=4)
    with pytest.raises(WrapError, match="fixed batch of 4"):
        wrap(src, str(tmp_path / "w.onnx"), Declaration(states=[("state", "stateN")]))


def _with_props(src: str, dst: str, **changes) -> str:
    proto = onnx.load(src)
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in changes.items()})
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, dst)
    return dst


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"state": [{"input": "state", "output": "stateN", "shape": [1, "batch", 6]}]},
         "state has shape"),
        ({"state": [{"input": "hidden", "output": "stateN", "shape": [1, "batch", 5]}]},
         "no input 'hidden'"),
        ({"state": []}, "unexpected inputs \\['state'\\]"),
        ({"outputs": [{"name": "y", "shape": ["batch", 3]}]}, "y has shape"),
        ({"outputs": [{"name": "y", "shape": ["batch", 2]}, {"name": "z", "shape": [1]}]},
         "no output 'z'"),
        ({"input": "q"}, "no input 'q'"),
        ({"channels": ["a", "b"]}, "x has shape"),
        ({"consts": [{"name": "sr", "dtype": "float32", "shape": [1], "value": [1.0]}]},
         "no input 'sr'"),
    ],
)  # fmt: skip
def test_metadata_that_disagrees_with_the_graph_is_refused(graphs, tmp_path, backend, changes,
                                                           message):  # fmt: skip
    bad = _with_props(graphs["gru"][1], str(tmp_path / "bad.onnx"), **changes)
    with pytest.raises(ModelFormatError, match=message) as info:
        Model(bad, backend=backend)
    assert "\n" not in str(info.value)


def test_forecaster_outputs_hold_the_last_step_after_run(exported_models):
    """stream.outputs for one of our forecasters: its one output, after step() and run()."""
    _, path = exported_models[("gru", 1)]
    X = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    for backend in ("c", "numpy", "onnxruntime"):
        try:
            model = Model(path, backend=backend)
        except Exception:  # no C compiler here
            continue
        assert not model.generic and model.meta.task == "forecast"
        stream = model.stream()
        Y = stream.run(X)
        np.testing.assert_array_equal(stream.outputs["y"], Y[-1])
        stream.step(X[0])
        assert list(stream.outputs) == ["y"]


def test_stateless_graph_said_so_explicitly(tmp_path, capsys):
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Tanh", ["x"], ["y"]), helper.make_node("Sigmoid", ["x"], ["gate"])],
        "stateless",
        [helper.make_tensor_value_info("x", f32, ["N", F])],
        [helper.make_tensor_value_info("y", f32, ["N", F]),
         helper.make_tensor_value_info("gate", f32, ["N", F])],
    )  # fmt: skip
    src = _save(graph, tmp_path / "g.onnx")
    code, out, _ = cli(capsys, "wrap", src, "-o", tmp_path / "w.onnx")
    assert code == 1 and "--stateless" in out  # no pairs found: said, not guessed
    code, _, _ = cli(capsys, "wrap", src, "-o", tmp_path / "w.onnx", "--stateless",
                     "--output", "gate")  # fmt: skip
    assert code == 0
    stream = Model(str(tmp_path / "w.onnx")).stream(batch=2)
    x = np.array([[0.0, 1.0, -1.0], [2.0, 0.5, 0.0]], np.float32)
    np.testing.assert_allclose(stream.step(x), 1 / (1 + np.exp(-x)), rtol=1e-6)
    np.testing.assert_allclose(stream.outputs["y"], np.tanh(x), rtol=1e-6)
    assert stream.state == {}


def test_wrap_and_run_need_no_torch(graphs, tmp_path):
    """The device-side tools: wrap needs onnxruntime (+ onnx to write), run needs neither
    torch nor onnx."""
    from conftest import run_cli

    src = graphs["gru"][0]
    dst = tmp_path / "w.onnx"
    proc = run_cli("wrap", src, "-o", str(dst), "--state", "state:stateN",
                   pre="import sys\nsys.modules['torch'] = None")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = _csv(tmp_path / "in.csv", names=("ch0", "ch1", "ch2"), time_col=False)
    proc = run_cli("run", str(dst), "--csv", data,
                   pre="import sys\nsys.modules['torch'] = None\nsys.modules['onnx'] = None")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "ch0,ch1,ch2,y_0,y_1,score"
