"""All training defaults in one visible block. The CLI maps its flags onto these
fields one to one; the checkpoint stores the config used, so a run is reproducible
from its own RUN_DIR."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields


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
    # lstm/gru/rnn forecasters: training windows shifted by ~N(0, this) training stds;
    # auto: LEVEL_JITTER_AUTO for one channel, none for several (level_jitter_for)
    level_jitter: float | str = "auto"
    # task: forecast (next sample of every channel) | regress (--target columns from the
    # other channels, per step: a soft sensor) | classify (--label column's class per step)
    task: str = "forecast"
    targets: list[str] = field(default_factory=list)  # regress: the columns to estimate
    label: str = ""  # classify: the column holding each step's class (never an input)
    # data
    val_frac: float = 0.2  # the last fraction of every file is validation
    # rows with a missing or non-numeric cell: skipped and counted, each one ending a
    # stretch of the file (the model never steps across a gap); forecasting only
    skip_bad_rows: bool = False
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
    schedule: str = "constant"  # constant | cosine (learning rate over the epochs)
    device: str = "auto"  # auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)
    amp: str = "auto"  # auto (bf16 if the GPU has it, else fp16) | bf16 | fp16 | off; GPU only
    progress: bool = True
    # data at scale
    cache_dir: str = ""  # parsed-CSV cache (float32 .npy, memory-mapped); "" = RUN_DIR/cache
    # echo state network (cell == "esn")
    spectral_radius: float = 0.9
    input_scale: float = 1.0
    ridge: float = 1e-4
    washout: int = 50

    def __post_init__(self):
        """Settings no training can run with fail here, before any data is read."""
        self.targets = list(self.targets or [])
        self.label = self.label or ""
        if self.task == "forecast":  # --target implies regress, --label classify
            self.task = "regress" if self.targets else "classify" if self.label else "forecast"
        check_task(self)
        if self.task != "forecast":
            self.residual = False  # a residual head adds the input: forecasting only
            if self.skip_bad_rows:
                raise ValueError(
                    "--skip-bad-rows: forecasting only (targets and labels must stay aligned "
                    "with their rows); clean the file, or train a forecaster"
                )
        checks = [  # (field, holds, what it must be)
            ("window", self.window >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("patience", self.patience >= 1, ">= 1"),
            ("burn_in", self.burn_in >= 0, ">= 0"),
            ("steps_per_epoch", self.steps_per_epoch >= 0, ">= 0 (0: automatic)"),
            ("lr", self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            (
                "level_jitter",
                self.level_jitter == "auto"
                or (isinstance(self.level_jitter, (int, float)) and self.level_jitter >= 0),
                "'auto' or >= 0",
            ),
            ("clip", self.clip in ("norm", "value", "none"), "norm, value or none"),
            ("clip_value", self.clip == "none" or self.clip_value > 0, "> 0"),
            ("val_frac", 0.0 < self.val_frac < 1.0, "between 0 and 1"),
            ("bptt", self.bptt in ("window", "tbptt"), "window or tbptt"),
            ("spectral_radius", self.spectral_radius > 0, "> 0"),
            ("input_scale", self.input_scale > 0, "> 0"),
            ("ridge", self.ridge >= 0, ">= 0"),
            ("washout", self.washout >= 0, ">= 0"),
        ]
        for name, holds, requirement in checks:
            if not holds:
                raise ValueError(f"{name} must be {requirement}, got {getattr(self, name)!r}")
        if self.task != "forecast" or self.cell == "esn":
            self.level_jitter = 0.0  # shifted windows: gradient-trained forecasters only

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(sorted(unknown))}")
        return cls(**d)


LEVEL_JITTER_AUTO = 1.0  # training stds: --level-jitter auto's shift, one-channel forecasters


def level_jitter_for(cfg: TrainConfig, n_channels: int) -> float:
    """The sd of the level shifts training windows get (train/bptt.py level_shifts).

    auto: LEVEL_JITTER_AUTO for a one-channel forecaster, 0 for several channels. A single
    channel has nothing to judge its level by but the few levels of its training part,
    which a long stream leaves behind (a server's load grows, a regime changes); with
    several, how the channels' levels sit against each other is what the model should
    learn (a pump's pressure against its current), and shifting each on its own would
    teach it that they carry nothing. Measured: the held-out protocol (one channel)
    gains, the pump demo (four) loses most of its recall with shifts (README)."""
    if cfg.level_jitter == "auto":
        return LEVEL_JITTER_AUTO if n_channels == 1 else 0.0
    return float(cfg.level_jitter)


CELLS = ("rnn", "lstm", "gru", "esn")
TASKS = ("forecast", "regress", "classify")
SCHEDULES = ("constant", "cosine")
AMP_MODES = ("auto", "bf16", "fp16", "off")
# Options a resumed run may change: they do not alter the optimisation trajectory
# (epochs/patience only move the end point).
RESUMABLE_CHANGES = ("epochs", "patience", "progress", "device", "amp", "cache_dir")


def check_task(cfg: TrainConfig) -> None:
    """The task's flags fit together (ValueError naming the flag otherwise)."""
    if cfg.task not in TASKS:
        raise ValueError(f"unknown task {cfg.task!r}; choose from {', '.join(TASKS)}")
    if cfg.task == "classify" and cfg.targets:
        raise ValueError("--target applies to --task regress; a classifier's column is --label")
    if cfg.task == "regress" and cfg.label:
        raise ValueError("--label applies to --task classify; a regressor's columns are --target")
    if cfg.task == "regress" and not cfg.targets:
        raise ValueError("--task regress needs --target COL (the column(s) to estimate)")
    if cfg.task == "classify" and not cfg.label:
        raise ValueError("--task classify needs --label COL (the column holding the classes)")
    if len(set(cfg.targets)) != len(cfg.targets):
        raise ValueError(f"--target names a column twice: {', '.join(cfg.targets)}")
    if cfg.task != "forecast" and cfg.horizon != 1:
        raise ValueError(f"--horizon applies to forecasting; --task {cfg.task} estimates "
                         "the current step")  # fmt: skip
    if cfg.task == "classify" and cfg.cell == "esn":
        raise ValueError("--cell esn cannot classify (its ridge readout regresses); "
                         "use lstm, gru or rnn")  # fmt: skip


@dataclass
class ModelConfig:
    n_channels: int = 1
    cell: str = "lstm"  # rnn | lstm | gru | esn (esn = fixed Elman reservoir + ridge readout)
    hidden: int = 64
    layers: int = 1
    nonlinearity: str = "tanh"  # rnn/esn only: tanh | relu
    dropout: float = 0.0  # between stacked layers, training only
    horizon: int = 1  # forecast x[t + horizon] after seeing x[t]
    residual: bool = True  # head predicts the change from x[t] (persistence + correction)
    bidirectional: bool = False  # refused: a bidirectional model is not causal
    channels: list[str] = field(default_factory=list)
    task: str = "forecast"  # forecast | regress | classify: what the head outputs
    targets: list[str] = field(default_factory=list)  # regress: the output columns
    classes: list[str] = field(default_factory=list)  # classify: the output classes

    def __post_init__(self):
        if self.bidirectional:
            raise ValueError(
                "bidirectional models look at future samples: they are not causal and cannot "
                "stream one sample at a time"
            )
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; choose from {', '.join(CELLS)}")
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be tanh or relu, got {self.nonlinearity!r}")
        if self.cell in ("lstm", "gru") and self.nonlinearity != "tanh":
            raise ValueError(f"--nonlinearity applies to rnn/esn cells, not {self.cell}")
        for name in ("n_channels", "hidden", "layers", "horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.channels and len(self.channels) != self.n_channels:
            raise ValueError("channels must name every input channel")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose from {', '.join(TASKS)}")
        if self.task == "regress" and not self.targets:
            raise ValueError("a regressor needs its target columns")
        if self.task == "classify" and len(self.classes) < 2:
            raise ValueError("a classifier needs at least two classes")
        if self.task != "forecast":
            self.residual = False  # a residual head adds the input: forecasting only

    @property
    def n_outputs(self) -> int:
        """The head's size: every channel (forecast), the targets, or one logit per class."""
        return {"forecast": self.n_channels, "regress": len(self.targets),
                "classify": len(self.classes)}[self.task]  # fmt: skip

    @property
    def graph_cell(self) -> str:
        """The recurrent op in the graph: an ESN is an Elman RNN with fixed weights."""
        return "rnn" if self.cell == "esn" else self.cell

    def to_dict(self) -> dict:
        return asdict(self)


def model_config_from(
    cfg: TrainConfig, channels: list[str], classes: Sequence[str] = ()
) -> ModelConfig:
    """The model a training config builds; `classes` come from the data (classify)."""
    return ModelConfig(
        n_channels=len(channels),
        cell=cfg.cell,
        hidden=cfg.hidden,
        layers=cfg.layers,
        nonlinearity=cfg.nonlinearity,
        dropout=cfg.dropout,
        horizon=cfg.horizon,
        residual=cfg.residual,
        channels=list(channels),
        task=cfg.task,
        targets=list(cfg.targets),
        classes=list(classes),
    )
