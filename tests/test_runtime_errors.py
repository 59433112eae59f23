"""The runtime refuses bad input with clear errors."""

import numpy as np
import pytest

from edgernn.errors import InputError, ModelFormatError
from edgernn.runtime import Model


@pytest.fixture
def model(exported_models):
    return Model(exported_models[("lstm", 1)][1])


def test_wrong_shape(model):
    s = model.stream()
    with pytest.raises(InputError, match="shape"):
        s.step(np.zeros(2))
    with pytest.raises(InputError, match="shape"):
        s.step(np.zeros((1, 3)))
    with pytest.raises(InputError, match="shape"):
        s.run(np.zeros(3))


def test_nan_and_non_numeric(model):
    s = model.stream()
    with pytest.raises(InputError, match="NaN"):
        s.step([1.0, float("nan"), 2.0])
    with pytest.raises(InputError, match="numeric"):
        s.step(["a", "b", "c"])
    # a refused sample does not advance the state
    np.testing.assert_array_equal(s.state["h"], np.zeros_like(s.state["h"]))


def test_bad_state(model):
    with pytest.raises(InputError, match="keys"):
        model.stream(state={"h": np.zeros((1, 16))})
    with pytest.raises(InputError, match="shape"):
        model.stream(state={"h": np.zeros((1, 8)), "c": np.zeros((1, 16))})


def test_batch_shape(model):
    s = model.stream(batch=4)
    assert s.step(np.zeros((4, 3))).shape == (4, 3)
    with pytest.raises(InputError):
        s.step(np.zeros(3))


def test_not_a_model(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(ModelFormatError, match="not a loadable ONNX model"):
        Model(junk)
    with pytest.raises(ModelFormatError, match="no such model file"):
        Model(tmp_path / "missing.onnx")


def test_onnx_without_edgernn_metadata(tmp_path):
    import torch

    path = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Linear(3, 3), (torch.zeros(1, 3),), str(path), dynamo=False)
    with pytest.raises(ModelFormatError, match="not an edgernn model"):
        Model(path)


def test_metadata_disagreeing_with_graph(tmp_path, exported_models):
    import onnx

    proto = onnx.load(exported_models[("gru", 1)][1])
    for p in proto.metadata_props:
        if p.key == "hidden":
            p.value = "99"
        if p.key == "state":
            p.value = p.value.replace("16", "99")
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, bad)
    with pytest.raises(ModelFormatError, match="shape"):
        Model(bad)
