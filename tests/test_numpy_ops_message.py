"""What the numpy backend says about ops it lacks, with and without onnxruntime (32-bit
Raspberry Pi OS has no onnxruntime: telling its user to use it would be no help)."""

import sys

from edgernn.runtime.numpy_backend import _where_these_ops_run


def test_with_onnxruntime_it_points_there():
    assert _where_these_ops_run(["Attention"]) == "use backend='onnxruntime'"


def test_without_onnxruntime_int8_means_the_float_model(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    said = _where_these_ops_run(["DynamicQuantizeLSTM", "MatMulInteger"])
    assert "not installed" in said and "float or fp16 model" in said
    assert "backend='onnxruntime'" not in said
    assert "install it" in _where_these_ops_run(["Attention"])
