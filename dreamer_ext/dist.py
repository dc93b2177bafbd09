"""Data-parallel training over ``torch.distributed`` (launched by ``torchrun``): the few collective operations the agent
needs, behind one object that is a no-op for a single process.

Every rank runs its own environments and replay shard and samples its own batch; per update the ranks average their
gradients (one flat all-reduce), agree on the non-finite skip decision, compute the return-normalisation
percentiles on the gathered returns of all ranks, average RePo's KL for the dual step, and average the logged
metrics. Parameters start from rank 0's and stay bitwise equal on every rank, because every rank applies the same
averaged gradient with the same optimiser.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["Dist", "SINGLE", "from_env"]


class Dist:
    """This process's place in the data-parallel group: ``rank`` of ``world`` (a single process: 0 of 1)."""

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | str = "cpu", force: bool = False):
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank/world: expected 0 <= rank < world, got {rank}/{world}")
        self.rank, self.world = rank, world
        self.force = bool(force)  # run the collectives even for one process (the one-GPU NCCL smoke run)
        self.device = torch.device(device)  # where collectives put their small tensors (NCCL: this rank's GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1 or self.force

    def __repr__(self) -> str:
        return f"Dist(rank={self.rank}, world={self.world})"

    # ---- collectives (identity for a single process) ----
    def average_(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor by its mean over the ranks, in place, with one all-reduce of a flat float32 buffer
        (float64 when a tensor is float64; the tensors must have the same shapes, in the same order, on every
        rank)."""
        if not self.active or not tensors:
            return
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
        flat = torch.cat([t.reshape(-1).to(dtype) for t in tensors])
        dist.all_reduce(flat)
        flat.div_(self.world)
        i = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[i:i + n].view_as(t))
            i += n

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` (an int in the int64 range) on every rank."""
        if not self.active:
            return int(value)
        t = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        dist.broadcast(t, 0)
        return int(t.item())

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of ``t`` over the ranks (a new tensor on ``t``'s device)."""
        if not self.active:
            return t
        out = t.detach().to(self.device, torch.float64 if t.dtype == torch.float64 else torch.float32, copy=True)
        dist.all_reduce(out)
        return out.div_(self.world).to(t.device, t.dtype)

    def all_true(self, flag: bool) -> bool:
        """True only when ``flag`` is True on every rank."""
        if not self.active:
            return bool(flag)
        t = torch.tensor([0.0 if flag else 1.0], device=self.device)
        dist.all_reduce(t)
        return bool(t.item() == 0.0)

    def gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        """The ranks' ``t`` (the same shape on every rank) concatenated along dim 0, in rank order."""
        if not self.active:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, 0)

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite every rank's tensors with rank 0's, in place."""
        if not self.active:
            return
        for t in tensors:
            dist.broadcast(t.data, 0)

    def gather_objects(self, obj) -> list:
        """Every rank's picklable ``obj``, in rank order (``[obj]`` for a single process)."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """Rank 0's picklable ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, 0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


SINGLE = Dist()


def from_env(device: torch.device) -> Dist:
    """The group torchrun describes in the environment (``RANK``, ``WORLD_SIZE``; the process group is initialised here
    with NCCL for a CUDA ``device``, gloo otherwise), or :data:`SINGLE` without it. ``DREAMER_EXT_DIST=1`` makes a
    one-process torchrun run a group of one that still runs every collective (a smoke test of the NCCL path on a
    single GPU). Raises ValueError for an inconsistent environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    force = os.environ.get("DREAMER_EXT_DIST", "0") == "1" and "RANK" in os.environ
    if world <= 1 and not force:
        return SINGLE
    rank = int(os.environ.get("RANK", "-1"))
    if not 0 <= rank < world:
        raise ValueError(f"RANK: expected 0 <= RANK < WORLD_SIZE={world}, got {os.environ.get('RANK')!r}")
    comm = torch.device("cpu")
    if device.type == "cuda":  # this rank's GPU (torchrun's LOCAL_RANK) becomes the current device
        comm = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(comm)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, comm, force=world == 1)
