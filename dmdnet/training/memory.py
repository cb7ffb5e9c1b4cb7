"""The memory banks' update rule (spec section 9): after each step, every slot a query read moves
towards it, outside autograd; a distributed run makes the update of all ranks' batches together."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .losses import MemoryRead


@torch.no_grad()
def evolve_memory(reads: list[MemoryRead]) -> None:
    """Updates every bank that was read (`TrainingObserver.reads`), outside autograd (call after
    backward)."""
    for read in reads:
        evolve_slots(read.bank[read.expert], read.query)


@torch.no_grad()
def evolve_memory_across_ranks(reads: list[MemoryRead], banks: list[torch.Tensor], batch: int,
                               all_gather: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """The update `evolve_memory` makes for the batches of all ranks concatenated in rank
    order, made identically on every rank of a distributed run.

    The update is not a sum of per-rank updates (its weights are a softmax over all the
    queries of a read), so the queries themselves are shared: each rank lays out, for
    every expert of every bank in `banks` (the same list, in the same order, on every
    rank), a (batch, C + 1) block holding its queries in their samples' rows and a
    last column marking the rows that read it; one `all_gather` ((world, n) from (n,))
    brings every rank the blocks of all."""
    by_bank = {(id(read.bank), read.expert): read for read in reads}
    blocks = []
    for bank in banks:
        for expert in range(bank.shape[0]):
            block = bank.new_zeros(batch, bank.shape[-1] + 1)
            read = by_bank.get((id(bank), expert))
            if read is not None:
                block[read.samples, :-1] = read.query.detach().to(bank.dtype)
                block[read.samples, -1] = 1
            blocks.append(block.flatten())
    gathered = all_gather(torch.cat(blocks))
    offset = 0
    for bank in banks:
        width = bank.shape[-1] + 1
        for expert in range(bank.shape[0]):
            rows = gathered[:, offset:offset + batch * width].reshape(-1, width)
            offset += batch * width
            queries = rows[rows[:, -1] > 0, :-1]
            if len(queries):
                evolve_slots(bank[expert], queries)


def evolve_slots(memory: torch.Tensor, query: torch.Tensor) -> None:
    """One expert's memory (slots, C) moves towards the queries (n, C) that read it: each query
    is added to its best slot, weighted by a softmax over the queries, and slots renormalised."""
    query = query.detach().to(memory.dtype)
    scores = query @ memory.t()
    best = scores.argmax(1)
    weight = torch.softmax(scores, dim=0)[torch.arange(len(best)), best]
    added = torch.zeros_like(memory).index_add(0, best, query * weight[:, None])
    memory.copy_(F.normalize(memory + added, dim=1))
