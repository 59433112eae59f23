"""The worked Elman example, end to end: PyTorch -> ONNX -> runtime, step by step."""

import numpy as np
import pytest
import torch

from edgernn.export.onnx_export import export_onnx
from edgernn.runtime import Model
from edgernn.train.model import Forecaster, ModelConfig


def test_seed_elman_worked_example(tmp_path):
    # W_xh=0.5, W_hh=0.3, b_h=0.1, W_hy=0.4, b_y=0.2, h0=0; inputs 1, 2, 3.
    cfg = ModelConfig(n_channels=1, cell="rnn", hidden=1, residual=False, channels=["x"])
    net = Forecaster(cfg)
    with torch.no_grad():
        net.rnn.weight_ih_l0.fill_(0.5)
        net.rnn.weight_hh_l0.fill_(0.3)
        net.rnn.bias_ih_l0.fill_(0.1)
        net.rnn.bias_hh_l0.fill_(0.0)
        net.head.weight.fill_(0.4)
        net.head.bias.fill_(0.2)
    path = tmp_path / "seed.onnx"
    export_onnx(net, path)

    stream = Model(path).stream()
    hidden, outputs = [], []
    for x in (1.0, 2.0, 3.0):
        outputs.append(float(stream.step([x])[0]))
        hidden.append(float(stream.state["h"][0, 0]))
    # h_t = tanh(0.5 x_t + 0.3 h_{t-1} + 0.1), y_t = 0.4 h_t + 0.2
    assert hidden == pytest.approx([0.537, 0.850, 0.952], abs=2e-3)
    assert outputs == pytest.approx([0.415, 0.540, 0.581], abs=1e-3)
    h, expected = 0.0, []
    for x in (1.0, 2.0, 3.0):
        h = np.tanh(0.5 * x + 0.3 * h + 0.1)
        expected.append(0.4 * h + 0.2)
    assert outputs == pytest.approx(expected, abs=1e-6)
