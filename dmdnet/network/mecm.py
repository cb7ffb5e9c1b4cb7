"""MECM: memory expert compensation (spec section 6).

A gate picks the top-k of E experts per sample; each expert reads its own
memory bank (rows are slots) twice: globally, to reweight channels, and per
pixel, to inpaint features from the two best-matching slots.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .diagnostics import CallSite, ForwardObserver
from .layers import lrelu
from .precision import output_dtype


class ExpertGate(nn.Module):
    """Deterministic top-k gate: scores plus normalised softplus "noise", softmax over the chosen."""

    float32_tensors = ("noise_fc.weight", "noise_fc.bias", "score_fc.weight", "score_fc.bias")
    """A top-k choice and a spread normalisation: computed in float32 (`dmdnet.network.precision`)."""

    def __init__(self, channels: int, num_experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.noise_fc = nn.Linear(channels, num_experts)
        self.score_fc = nn.Linear(channels, num_experts)
        nn.init.zeros_(self.score_fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = (x.amax((2, 3)) + x.mean((2, 3))).to(self.score_fc.weight.dtype)
        scores = lrelu(self.score_fc(pooled))
        noise = F.softplus(self.noise_fc(pooled))
        noise = (noise - noise.mean(1, keepdim=True)) / noise.std(1, keepdim=True)
        chosen = torch.topk(scores + noise, self.top_k, dim=1).indices
        masked = torch.full_like(scores, float("-inf")).scatter(1, chosen, scores.gather(1, chosen))
        return torch.softmax(masked, dim=1)


def global_query(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, C, H, W) -> (B, C): the query an expert matches against its memory slots (in `dtype`)."""
    return x.mean((2, 3), dtype=dtype)


class MemoryExpert(nn.Module):
    """One expert: global and spatial reads of its memory bank, fused by a dilated conv."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.fusion = nn.Conv2d(2 * channels, channels, 1)
        self.dilated_dwconv = nn.Conv2d(channels, channels, 3, padding=dilation,
                                        dilation=dilation, groups=channels)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Slot matching runs in the memory's dtype (float32 under a half-type `x`)."""
        query = global_query(x, memory.dtype)
        attention = torch.softmax(query @ memory.t(), dim=1)
        global_read = torch.sigmoid(query + attention @ memory).to(x.dtype)[:, :, None, None] * x
        fused = lrelu(self.fusion(torch.cat([global_read, self.spatial_read(x, memory)], dim=1)))
        return lrelu(self.dilated_dwconv(fused))

    @staticmethod
    def spatial_read(x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Per pixel, the softmax-weighted mix of the two best-matching memory slots."""
        batch, c, h, w = x.shape
        scores = torch.einsum("sc,bcl->bsl", memory, x.reshape(batch, c, h * w).to(memory.dtype))
        top_scores, top_slots = torch.topk(scores, 2, dim=1)
        weights = torch.softmax(top_scores, dim=1)
        read = (weights[:, 0, :, None] * memory[top_slots[:, 0]]
                + weights[:, 1, :, None] * memory[top_slots[:, 1]])
        return read.transpose(1, 2).reshape(batch, c, h, w).to(x.dtype)


class MECM(nn.Module):
    """Sum of the gate-weighted outputs of the experts each sample selected."""

    def __init__(self, channels: int, num_experts: int, top_k: int):
        super().__init__()
        self.gate = ExpertGate(channels, num_experts, top_k)
        self.experts = nn.ModuleList(MemoryExpert(channels, 2 * e + 1) for e in range(num_experts))

    def forward(self, x: torch.Tensor, bank: torch.Tensor, site: CallSite | None = None,
                stream: str = "T", observer: ForwardObserver | None = None) -> torch.Tensor:
        """x (B, C, H, W), bank (E, C, C) -> the compensation added to x."""
        coefficients = self.gate(x)
        out = torch.zeros_like(x)
        contributions = {}
        for e, expert in enumerate(self.experts):
            selected = torch.nonzero(coefficients[:, e] > 0).flatten()
            if selected.numel() == 0:
                continue
            inputs = x[selected]
            weighted = expert(inputs, bank[e]) * coefficients[selected, e, None, None, None].to(x.dtype)
            out = out.index_add(0, selected, weighted)
            if observer is not None:
                observer.add_memory_read(site, stream, bank, e, selected, global_query(inputs))
                if observer.records_contributions:
                    contribution = torch.zeros_like(x[:, 0], dtype=output_dtype(x.dtype))
                    contribution[selected] = weighted.abs().mean(1, dtype=contribution.dtype)
                    contributions[e] = contribution
        if observer is not None:
            observer.add_experts(site, stream, coefficients, contributions)
        return out
