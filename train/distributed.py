"""Data-parallel training on PyTorch's own engine: torchrun + DistributedDataParallel.

`torchrun --nproc_per_node=N -m edgernn train ...` starts N processes and sets RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT in their environment; `edgernn train` sees
them and joins the process group (NCCL on GPUs, gloo on CPU). Without torchrun (no
WORLD_SIZE, or WORLD_SIZE=1) everything here is a no-op on a single process.

What the ranks share: the numpy RNG (every rank draws the same global batch of window
indices and reads its own share of them), the step count, the validation sums
(all-reduced), hence identical early-stopping decisions. Gradients are all-reduced
by DDP. Rank 0 alone prints, shows the progress bar and writes files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from edgernn.train.logs import rank_from_env


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we started the process group, so we end it

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64 on the wire; identical result on every rank)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def gather(self, obj):
        """Every rank's obj, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    @property
    def _comm_device(self) -> torch.device:
        # NCCL moves CUDA tensors only; gloo moves CPU tensors.
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            from edgernn.errors import EdgernnError

            raise EdgernnError("--device cuda asked for, but PyTorch sees no CUDA GPU")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)


def setup(device_name: str) -> Dist:
    """Join torchrun's process group if there is one; pick this rank's device."""
    rank, local_rank, world = rank_from_env()
    device = resolve_device(device_name, local_rank)
    if world <= 1:
        return Dist(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, local_rank, world, device, owns)


class NormalisedForward(nn.Module):
    """DDP hooks forward(): this makes the training path (forward_normalised) the forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, xn: torch.Tensor, state=None):
        return self.model.forward_normalised(xn, state)


def wrap(model: nn.Module, ctx: Dist) -> nn.Module:
    """The module the training loop calls: DDP across ranks, the plain wrapper otherwise."""
    net = NormalisedForward(model)
    if not ctx.enabled:
        return net
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(net, device_ids=ids)
