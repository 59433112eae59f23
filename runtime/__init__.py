"""The on-device runtime: numpy + onnxruntime only, never torch or onnx."""

from edgernn.runtime.csvdata import Table, read_csv, read_many
from edgernn.runtime.metadata import ModelMeta, StateSpec
from edgernn.runtime.model import Model, Stream

__all__ = ["Model", "ModelMeta", "StateSpec", "Stream", "Table", "read_csv", "read_many"]
