"""Training (the [train] extra). Importing this package does not import torch:
the echo state network trains with numpy alone."""

from edgernn.train.config import TrainConfig

__all__ = ["TrainConfig", "train_files"]


def train_files(*args, **kwargs):
    """See edgernn.train.fit.train_files."""
    from edgernn.train.fit import train_files as _train_files

    return _train_files(*args, **kwargs)
