"""Training losses (spec section 9); the memory banks' update rule is `dmdnet.training.memory`.

Every pair is scored by L1 and by an L1 loss on image gradients at three scales (edges kept
where T has them and not copied where R has them). The reference's VGG19 perceptual term is
`dmdnet.training.perceptual` (the layers up to relu3_1 that exist offline), on real pairs.

Real pairs are scored after the network's T is mapped onto the ground truth by its per-channel
least-squares gain and offset (`dmdnet.photometry`): the two shots differ as a whole in
brightness and colour (the glass dims and tints, exposures differ), which no network can know
from the photo and which otherwise dominates the gradient. Matched, only the reflection's
structure is left to learn; the synthetic pairs keep teaching the absolute photometry.
Synthetic pairs can be matched too (`LossWeights.matched`), with a separate, lighter L1 on the
unmatched T (`absolute_l1_t`) teaching the absolute photometry, so that it no longer dominates
the gradient of their layer losses.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..network.diagnostics import CallSite, ForwardObserver
from ..photometry import match_photometry
from .perceptual import VGGFeatures, perceptual_loss


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def gradient_loss(prediction: torch.Tensor, target: torch.Tensor, scales: int = 3) -> torch.Tensor:
    """Per-sample (B,) mean L1 distance of horizontal and vertical gradients over `scales` halvings."""
    total = prediction.new_zeros(prediction.shape[0])
    for scale in range(scales):
        if scale:
            prediction, target = F.avg_pool2d(prediction, 2), F.avg_pool2d(target, 2)
        for p, t in zip(image_gradients(prediction), image_gradients(target)):
            total = total + (p - t).abs().flatten(1).mean(1)
    return total / scales


def l1_per_sample(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (prediction - target).abs().flatten(1).mean(1)


def cv_squared(values: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation (unbiased variance over mean squared)."""
    if values.numel() < 2:
        return values.new_zeros(())
    return values.var() / (values.mean() ** 2 + eps)


@dataclass
class MemoryRead:
    site: CallSite
    stream: str
    bank: torch.Tensor
    expert: int
    samples: torch.Tensor
    """Indices, in the batch, of the samples whose queries these are."""
    query: torch.Tensor


@dataclass
class TrainingObserver(ForwardObserver):
    """Keeps gate coefficients and memory queries of one training forward pass."""

    gates: dict[str, list[torch.Tensor]] = field(default_factory=lambda: defaultdict(list))
    reads: list[MemoryRead] = field(default_factory=list)

    @staticmethod
    def target(site: CallSite, stream: str) -> str:
        """Which layer a call serves: main stacks by stream, depth branches by their target."""
        return stream if site.branch == "main" else site.branch[-1]

    def add_experts(self, site, stream, coefficients, contributions) -> None:
        self.gates[self.target(site, stream)].append(coefficients)

    def add_memory_read(self, site, stream, bank, expert, samples, query) -> None:
        self.reads.append(MemoryRead(site, stream, bank, expert, samples, query))

    def balance_loss(self, stream: str) -> torch.Tensor:
        """Mean over MECM calls serving `stream` of cv^2 of the experts' total coefficients."""
        return torch.stack([cv_squared(c.sum(0)) for c in self.gates[stream]]).mean()

    def memory_losses(self, stream: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(alignment, triplet) for `stream`, averaged over the main stacks and the two
        depth-branch streams, as the reference does."""
        groups = defaultdict(list)
        for read in self.reads:
            if self.target(read.site, read.stream) == stream:
                groups[(read.site.branch == "main", read.stream)].append(read)
        align, triplet = [], []
        for reads in groups.values():
            a, t = zip(*(_memory_read_losses(r) for r in reads))
            align.append(torch.stack(a).mean())
            triplet.append(torch.stack(t).mean())
        return torch.stack(align).mean(), torch.stack(triplet).mean()


def _memory_read_losses(read: MemoryRead) -> tuple[torch.Tensor, torch.Tensor]:
    memory = read.bank[read.expert].detach()
    scores = read.query @ memory.t()
    top = scores.topk(2, dim=1).indices
    positive, negative = memory[top[:, 0]], memory[top[:, 1]]
    align = F.mse_loss(read.query, positive)
    triplet = F.triplet_margin_loss(read.query, positive, negative, margin=1.0)
    return align, triplet


@dataclass(frozen=True)
class LossWeights:
    """Reference weights for the synthetic pairs; the `real_*` weights replace `l1_t`, `l1_r`,
    `gradient` and `perceptual` on real pairs, whose R target is only an estimate
    (`dmdnet.training.real_pairs.reflection_estimate`)."""

    l1_t: float = 1.0
    l1_r: float = 1.0
    gradient: float = 0.5
    perceptual: float = 0.0
    matched: bool = False
    """Score a synthetic pair's T after the per-channel gain/offset match as well (see `real_matched`)."""
    absolute_l1_t: float = 0.0
    """L1 of the unmatched T on synthetic pairs: the absolute photometry, when `matched` leaves it out."""
    balance_t: float = 0.008
    balance_r: float = 0.008
    align_t: float = 0.1
    align_r: float = 0.05
    triplet_t: float = 0.1
    triplet_r: float = 0.05
    real_l1_t: float = 1.0
    real_l1_r: float = 0.0
    real_gradient: float = 0.5
    real_perceptual: float = 0.1
    real_absolute_l1_t: float = 0.0
    real_matched: bool = True
    """Score a real pair's T after mapping it onto its ground truth by the per-channel
    least-squares gain and offset (`dmdnet.photometry.match_photometry`, differentiable)."""

    def uses_perceptual(self, with_real_pairs: bool) -> bool:
        """Whether training with these weights needs the VGG19 network."""
        return self.perceptual > 0 or (with_real_pairs and self.real_perceptual > 0)


def separation_loss(t: torch.Tensor, r: torch.Tensor, t_target: torch.Tensor, r_target: torch.Tensor,
                    observer: TrainingObserver, weights: LossWeights = LossWeights(),
                    real: torch.Tensor | None = None, vgg: VGGFeatures | None = None
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """The total training loss and its named parts (for logging). `real` (B,) marks the
    samples of a batch that are real pairs; their layer losses are weighted by `real_*` and
    also logged on their own (`real_l1_t`, ...). The perceptual term needs `vgg` and is
    computed only on the samples whose weight for it is not zero."""
    real = torch.zeros(t.shape[0], dtype=torch.bool, device=t.device) if real is None else real.to(t.device)
    matched = torch.where(real, weights.real_matched, weights.matched)
    absolute_t = t
    if matched.any():
        t = torch.where(matched[:, None, None, None], match_photometry(t, t_target), t)
    layer_terms = {"l1_t": l1_per_sample(t, t_target), "l1_r": l1_per_sample(r, r_target),
                   "gradient": gradient_loss(t, t_target)}
    if weights.absolute_l1_t or weights.real_absolute_l1_t:
        layer_terms["absolute_l1_t"] = l1_per_sample(absolute_t, t_target)
    perceptual_samples = torch.where(real, weights.real_perceptual, weights.perceptual) > 0
    if vgg is not None and perceptual_samples.any():
        per_sample = t.new_zeros(t.shape[0])
        per_sample[perceptual_samples] = perceptual_loss(vgg, t[perceptual_samples], t_target[perceptual_samples])
        layer_terms["perceptual"] = per_sample
    align_t, triplet_t = observer.memory_losses("T")
    align_r, triplet_r = observer.memory_losses("R")
    parts = {name: (1.0, torch.where(real, getattr(weights, f"real_{name}"), getattr(weights, name))
                    .to(per_sample.dtype).mul(per_sample).mean())
             for name, per_sample in layer_terms.items()}
    parts.update({
        "balance_t": (weights.balance_t, observer.balance_loss("T")),
        "balance_r": (weights.balance_r, observer.balance_loss("R")),
        "align_t": (weights.align_t, align_t), "align_r": (weights.align_r, align_r),
        "triplet_t": (weights.triplet_t, triplet_t), "triplet_r": (weights.triplet_r, triplet_r),
    })
    total = sum(weight * value for weight, value in parts.values())
    logged = {name: float(value.detach()) for name, (_, value) in parts.items()}
    for kind, mask in (("synthetic", ~real), ("real", real)):
        if mask.any() and real.any():
            logged.update({f"{kind}_{name}": float(values[mask].mean().detach())
                           for name, values in layer_terms.items()})
    return total, logged
