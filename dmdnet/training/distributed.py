"""Many processes started by `torchrun`: the process group, this process's rank and device,
and the few collectives the trainer and the CLI need.

`torchrun --nproc_per_node N -m dmdnet train|separate|evaluate ...` starts N copies of the
command; each finds its rank in the environment torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT). `process_group` joins them: `nccl` between CUDA
devices (process `LOCAL_RANK` of a machine takes `cuda:LOCAL_RANK`), `gloo` on CPUs. A command
started without torchrun runs alone, exactly as before: `Ranks.current()` is then rank 0 of 1
and every collective returns its input.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from ..devices import default_device, resolve_device

T = TypeVar("T")
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class LaunchError(RuntimeError):
    """The processes cannot be placed as asked (a message for the command line)."""


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or anything that sets its variables)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def process_device(requested: str | None, local_rank: int, processes_here: int) -> torch.device:
    """The device of process `local_rank` of `processes_here` on one machine: `cuda:LOCAL_RANK`
    on CUDA (the default where there is one), else the CPU."""
    try:
        device = torch.device(requested) if requested else default_device()
    except RuntimeError:  # not a device name: resolve_device says so
        return resolve_device(requested)
    if device.type != "cuda":
        return resolve_device(requested)
    if device.index is not None and processes_here > 1:
        raise LaunchError(f"--device {requested}: under torchrun process LOCAL_RANK takes cuda:LOCAL_RANK; "
                         "pass --device cuda (or nothing)")
    if processes_here > torch.cuda.device_count():
        raise LaunchError(f"{processes_here} processes on this machine but {torch.cuda.device_count()} "
                         "CUDA devices: pass --nproc_per_node at most the number of GPUs")
    return torch.device("cuda", local_rank if device.index is None else device.index)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of one run, and collectives over all of them."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def current(cls, device: torch.device | str | None = None) -> "Ranks":
        """The ranks of the initialised process group (rank 0 of 1 without one)."""
        device = torch.device(device or "cpu")
        if not dist.is_available() or not dist.is_initialized():
            return cls(0, 1, device)
        return cls(dist.get_rank(), dist.get_world_size(), device)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that validates, logs, writes checkpoints and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self, device: torch.device | str) -> str:
        """Where the work runs, for messages: "cuda:0", or "8 processes on cuda"."""
        return f"{self.world_size} processes on {torch.device(device).type}" if self.distributed else str(device)

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous block of `items` (sizes differ by at most one): the blocks of
        all ranks, in rank order, are `items` again, each item in exactly one."""
        start = len(items) * self.rank // self.world_size
        end = len(items) * (self.rank + 1) // self.world_size
        return list(items[start:end])

    def seed(self, seed: int) -> int | tuple[int, int]:
        """A seed of this rank's own random stream: `seed` itself on rank 0 (so one process
        draws what it always drew), `(seed, rank)` for a numpy generator on the others."""
        return seed if self.rank == 0 else (seed, self.rank)

    def _on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device)

    def sum(self, value: float) -> float:
        """`value` summed over ranks."""
        if not self.distributed:
            return value
        total = self._on_device(torch.tensor([value], dtype=torch.float64))
        dist.all_reduce(total)
        return float(total.item())

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any rank (so that every rank takes the same branch)."""
        return self.sum(float(flag)) > 0

    def mean_of(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over ranks (every rank passes the same keys)."""
        if not self.distributed:
            return values
        names = sorted(values)
        total = self._on_device(torch.tensor([values[name] for name in names], dtype=torch.float64))
        dist.all_reduce(total)
        return dict(zip(names, (total / self.world_size).tolist()))

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """(world_size, *tensor.shape): every rank's `tensor` (same shape everywhere), in rank order."""
        if not self.distributed:
            return tensor[None]
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    def all_gather_objects(self, value: T) -> list[T]:
        """Every rank's picklable `value`, in rank order."""
        if not self.distributed:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def gather_lists(self, items: list[T]) -> list[T]:
        """On rank 0, the lists of all ranks concatenated in rank order (`share`'s inverse);
        an empty list on the others."""
        if not self.distributed:
            return items
        parts = [None] * self.world_size if self.is_main else None
        dist.gather_object(items, parts, dst=0)
        return [item for part in parts for item in part] if self.is_main else []

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def data_parallel(self, module: nn.Module) -> nn.Module:
        """`module` as DistributedDataParallel: gradients averaged over ranks after backward.

        Parameters some rank's batch leaves unused (experts no sample chose) are allowed.
        Buffers (the memory banks) are made equal once, from rank 0, and then never
        broadcast: every rank applies the same gathered update (`dmdnet.training.memory.evolve_memory_across_ranks`)."""
        if not self.distributed:
            return module
        keyword = ("forward_sync_buffers" if "forward_sync_buffers"
                   in inspect.signature(DistributedDataParallel).parameters else "broadcast_buffers")
        wrapped = DistributedDataParallel(
            module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=True, **{keyword: False})
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
        return wrapped


@contextmanager
def process_group(device: str | None = None) -> Iterator[Ranks]:
    """Joins the processes torchrun started (and leaves the group at the end); without torchrun,
    or with one process, yields rank 0 of 1 on `device` and starts nothing."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        yield Ranks(device=resolve_device(device))
        return
    local = process_device(device, int(os.environ["LOCAL_RANK"]),
                           int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])))
    if local.type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if local.type == "cuda" else "gloo")
    ranks = Ranks.current(local)
    try:
        yield ranks
        ranks.barrier()
    finally:
        dist.destroy_process_group()
