"""Small building blocks shared by the DMDNet modules."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

NEGATIVE_SLOPE = 0.2


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """LeakyReLU with the slope used everywhere in DMDNet."""
    return F.leaky_relu(x, NEGATIVE_SLOPE)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 (align_corners=False), the decoder's upsampling."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map, per pixel (biased variance)."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / (var + self.eps).sqrt()
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class ChannelAttention(nn.Module):
    """Rescales channels by a 1x1 conv of their global mean (no sigmoid, as released)."""

    def __init__(self, channels: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.proj(x.mean((2, 3), keepdim=True))


class GatedFeedForward(nn.Module):
    """EFFN: gated depthwise feed-forward, gelu(a) * b, without biases."""

    def __init__(self, channels: int, expansion: float):
        super().__init__()
        hidden = int(channels * expansion)
        self.expand = nn.Conv2d(channels, 2 * hidden, 1, bias=False)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=False)
        self.project = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.dwconv(self.expand(x)).chunk(2, dim=1)
        return self.project(F.gelu(a) * b)
