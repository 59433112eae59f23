"""All training defaults in one visible block. The CLI maps its flags onto these
fields one to one; the checkpoint stores the config used, so a run is reproducible
from its own RUN_DIR."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class TrainConfig:
    # model
    cell: str = "lstm"  # rnn | lstm | gru | esn
    hidden: int = 64
    layers: int = 1
    nonlinearity: str = "tanh"  # rnn/esn only
    dropout: float = 0.0  # between stacked layers
    horizon: int = 1  # forecast this many steps ahead
    residual: bool = True  # forecast the change from the current sample
    # data
    val_frac: float = 0.2  # the last fraction of every file is validation
    # optimisation (BPTT)
    bptt: str = "window"  # window: random windows, zero state | tbptt: carried state
    window: int = 64  # time steps per backprop window / truncated-BPTT chunk
    burn_in: int = 8  # leading steps of a window that warm the state but carry no loss
    batch_size: int = 32
    epochs: int = 30
    steps_per_epoch: int = 0  # 0: about one pass over the training rows per epoch
    lr: float = 3e-3
    weight_decay: float = 1e-5
    clip: str = "norm"  # norm | value | none
    clip_value: float = 1.0
    patience: int = 5  # early stopping: epochs without validation improvement
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True
    # echo state network (cell == "esn")
    spectral_radius: float = 0.9
    input_scale: float = 1.0
    ridge: float = 1e-4
    washout: int = 50

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(sorted(unknown))}")
        return cls(**d)
