"""The model description stored in an exported graph's `metadata_props`.

Every value is a string (ONNX's rule); structured values are JSON. Any runtime can
read these keys; `ModelMeta` is the typed view used by edgernn itself.

Keys (format 1):
    edgernn_format   "1"
    cell             "rnn" | "lstm" | "gru"      (the recurrent cell in the graph)
    nonlinearity     "tanh" | "relu"             (rnn only)
    trained_as       "bptt" | "esn"
    layers, hidden, horizon                      (integers)
    residual         "1" if the head forecasts the change from the current sample
    channels         JSON list of channel names, the order of x and y
    input, output    names of the sample input [batch, C] and forecast output [batch, C]
    state            JSON list of {"input", "output", "shape"}; shape is
                     [layers, "batch", hidden]: the batch axis of a state tensor is 1
    norm_mean, norm_std   JSON lists: x is normalised as (x - mean) / std inside the graph
    error_scale      JSON list: robust scale (1.4826 * MAD) of validation forecast errors
                     per channel, raw units; the anomaly detector normalises errors by it
    extra keys (detector, quantization, metrics, producer) are JSON and optional.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from edgernn.errors import ModelFormatError

FORMAT_VERSION = 1
CELLS = ("rnn", "lstm", "gru")
STATE_BATCH_AXIS = 1


@dataclass(frozen=True)
class StateSpec:
    input: str
    output: str
    layers: int
    hidden: int


@dataclass
class ModelMeta:
    cell: str
    layers: int
    hidden: int
    channels: list[str]
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

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def to_props(self) -> dict[str, str]:
        props = {
            "edgernn_format": str(FORMAT_VERSION),
            "cell": self.cell,
            "nonlinearity": self.nonlinearity,
            "trained_as": self.trained_as,
            "layers": str(self.layers),
            "hidden": str(self.hidden),
            "horizon": str(self.horizon),
            "residual": "1" if self.residual else "0",
            "channels": json.dumps(self.channels),
            "input": self.input,
            "output": self.output,
            "state": json.dumps(
                [
                    {"input": s.input, "output": s.output, "shape": [s.layers, "batch", s.hidden]}
                    for s in self.states
                ]
            ),
            "norm_mean": json.dumps([float(v) for v in self.norm_mean]),
            "norm_std": json.dumps([float(v) for v in self.norm_std]),
        }
        if self.error_scale is not None:
            props["error_scale"] = json.dumps([float(v) for v in self.error_scale])
        for key, value in self.extra.items():
            props[key] = value if isinstance(value, str) else json.dumps(value)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> ModelMeta:
        if "edgernn_format" not in props:
            raise ModelFormatError(
                f"{source} is an ONNX file but not an edgernn model (no edgernn metadata); "
                "export one with `edgernn export`"
            )
        try:
            version = int(props["edgernn_format"])
            if version > FORMAT_VERSION:
                raise ModelFormatError(
                    f"{source} uses edgernn model format {version}; this edgernn reads up to "
                    f"{FORMAT_VERSION}: upgrade edgernn"
                )
            known = {
                "edgernn_format", "cell", "nonlinearity", "trained_as", "layers", "hidden",
                "horizon", "residual", "channels", "input", "output", "state", "norm_mean",
                "norm_std", "error_scale",
            }  # fmt: skip
            meta = cls(
                cell=props["cell"],
                nonlinearity=props.get("nonlinearity", "tanh"),
                trained_as=props.get("trained_as", "bptt"),
                layers=int(props["layers"]),
                hidden=int(props["hidden"]),
                horizon=int(props.get("horizon", "1")),
                residual=props.get("residual", "0") == "1",
                channels=[str(c) for c in json.loads(props["channels"])],
                input=props.get("input", "x"),
                output=props.get("output", "y"),
                states=[
                    StateSpec(s["input"], s["output"], int(s["shape"][0]), int(s["shape"][2]))
                    for s in json.loads(props["state"])
                ],
                norm_mean=[float(v) for v in json.loads(props["norm_mean"])],
                norm_std=[float(v) for v in json.loads(props["norm_std"])],
                error_scale=(
                    [float(v) for v in json.loads(props["error_scale"])]
                    if "error_scale" in props
                    else None
                ),
                extra={k: _maybe_json(v) for k, v in props.items() if k not in known},
            )
        except ModelFormatError:
            raise
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise ModelFormatError(f"{source} has damaged edgernn metadata ({e!r})") from e
        if meta.cell not in CELLS:
            raise ModelFormatError(f"{source}: unknown cell {meta.cell!r} in metadata")
        if meta.horizon < 1:
            raise ModelFormatError(
                f"{source}: horizon must be >= 1 in metadata, got {meta.horizon}"
            )
        if len(set(meta.channels)) != meta.n_channels:
            raise ModelFormatError(f"{source}: duplicate channel names in metadata {meta.channels}")
        if len(meta.norm_mean) != meta.n_channels or len(meta.norm_std) != meta.n_channels:
            raise ModelFormatError(f"{source}: normalisation does not match the channel count")
        return meta


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value
