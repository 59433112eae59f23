"""Graphs made elsewhere: format-2 metadata, `edgernn wrap`, and the runtime on any
stateful single-step graph (several inputs, named outputs, states of any rank)."""

from __future__ import annotations

import json

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
        ("state", '[{"input": "h0", "output": "hn", "shape": [1, "batch", 2.5]}]', "not an integer"),
        ("state", '[{"input": "h0", "output": "hn", "shape": ["batch", "batch"]}]', "more than one"),
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
