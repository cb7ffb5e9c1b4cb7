"""What a forward pass can report about itself, for the UI, parity tests and training.

Off by default. The model calls the hooks of a `ForwardObserver` passed to it:
`Diagnostics` keeps one record per DSMamba stream and per MECM call, in call order;
the trainer's observer keeps the memory queries it needs for the memory losses.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class CallSite:
    """Where in the network a block runs: level 1-5 and branch ("main", "depth_T", "depth_R")."""

    level: int
    branch: str = "main"


@dataclass
class ScanRecord:
    """One DSMamba stream: its proximity map and the DAScan order it produced."""

    level: int
    branch: str
    block: int
    stream: str
    """"T" (first stream, regional order) or "R" (second stream, global order)."""
    kind: str
    proximity: torch.Tensor
    """(B, 1, h, w) in [0, 1]; larger = nearer."""
    order: torch.Tensor
    """(B, h*w) pixel indices in scan order."""


@dataclass
class ExpertRecord:
    """One MECM call: gate coefficients and each selected expert's weighted contribution."""

    level: int
    branch: str
    stream: str
    coefficients: torch.Tensor
    """(B, E); zero for experts the gate did not select."""
    contributions: dict[int, torch.Tensor]
    """expert index -> (B, h, w) channel-mean magnitude of coef * expert output."""


class ForwardObserver:
    """Hooks a forward pass calls; each does nothing unless a subclass overrides it, except
    `add_global_gain`, which keeps the gain (the pipeline needs it to compose large photos)."""

    records_contributions = False
    """Whether MECM should compute per-expert contribution maps for `add_experts`."""
    global_gain: torch.Tensor | None = None
    """DMDNet-Lite's per-image gain on T, (B, 1, 1, 1); None for networks without one."""

    def add_global_gain(self, gain: torch.Tensor) -> None:
        self.global_gain = gain.detach()

    def add_scan(self, site: CallSite, block: int, stream: str, kind: str,
                 proximity: torch.Tensor, order: torch.Tensor) -> None:
        """One DSMamba stream's proximity map and scan order."""

    def add_experts(self, site: CallSite, stream: str, coefficients: torch.Tensor,
                    contributions: dict[int, torch.Tensor]) -> None:
        """One MECM call's gate coefficients (and contributions when recorded)."""

    def add_memory_read(self, site: CallSite, stream: str, bank: torch.Tensor, expert: int,
                        samples: torch.Tensor, query: torch.Tensor) -> None:
        """Expert `expert` of `bank` (E, C, C) read with `query` (len(samples), C)."""


@dataclass
class Diagnostics(ForwardObserver):
    """Collects scans and expert maps; tensors are detached copies on the CPU."""

    records_contributions = True

    scans: list[ScanRecord] = field(default_factory=list)
    experts: list[ExpertRecord] = field(default_factory=list)
    depth: torch.Tensor | None = None

    def add_scan(self, site: CallSite, block: int, stream: str, kind: str,
                 proximity: torch.Tensor, order: torch.Tensor) -> None:
        self.scans.append(ScanRecord(site.level, site.branch, block, stream, kind,
                                     proximity.detach().cpu(), order.detach().cpu()))

    def add_experts(self, site: CallSite, stream: str, coefficients: torch.Tensor,
                    contributions: dict[int, torch.Tensor]) -> None:
        self.experts.append(ExpertRecord(
            site.level, site.branch, stream, coefficients.detach().cpu(),
            {e: c.detach().cpu() for e, c in contributions.items()},
        ))
