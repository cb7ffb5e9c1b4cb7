"""MuGI (mutually gated interactive) blocks and the dual-stream encoder built from them."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ChannelAttention, ChannelLayerNorm

Streams = tuple[torch.Tensor, torch.Tensor]


def cross_gate(x: torch.Tensor, y: torch.Tensor) -> Streams:
    """Each stream's first half gates the other stream's second half."""
    x1, x2 = x.chunk(2, dim=1)
    y1, y2 = y.chunk(2, dim=1)
    return x1 * y2, y1 * x2


class MuGIBlock(nn.Module):
    """Dual-stream block; both streams share every weight except the first skip scales."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.norm1 = ChannelLayerNorm(c, eps=1e-6)
        self.expand1 = nn.Conv2d(c, 2 * c, 1)
        self.dwconv = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.channel_attention = ChannelAttention(c)
        self.proj1 = nn.Conv2d(c, c, 1)
        self.scale_left = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.scale_right = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.norm2 = ChannelLayerNorm(c, eps=1e-6)
        self.expand2 = nn.Conv2d(c, 2 * c, 1)
        self.proj2 = nn.Conv2d(c, c, 1)
        self.scale_out = nn.Parameter(torch.zeros(1, c, 1, 1))

    def _part1(self, x: torch.Tensor) -> torch.Tensor:
        return self.dwconv(self.expand1(self.norm1(x)))

    def _part2(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand2(self.norm2(x))

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> Streams:
        x, y = cross_gate(self._part1(left), self._part1(right))
        x = self.proj1(self.channel_attention(x))
        y = self.proj1(self.channel_attention(y))
        left = left + x * self.scale_left
        right = right + y * self.scale_right
        x, y = cross_gate(self._part2(left), self._part2(right))
        return left + self.proj2(x) * self.scale_out, right + self.proj2(y) * self.scale_out


class MuGIStack(nn.ModuleList):
    """A sequence of MuGI blocks applied to both streams."""

    def __init__(self, channels: int, num_blocks: int):
        super().__init__(MuGIBlock(channels) for _ in range(num_blocks))

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> Streams:
        for block in self:
            left, right = block(left, right)
        return left, right


class EncoderStage(nn.Module):
    """MuGI blocks at one level, then 2x2 average pooling and a 1x1 conv to the next width."""

    def __init__(self, channels: int, next_channels: int, num_blocks: int):
        super().__init__()
        self.blocks = MuGIStack(channels, num_blocks)
        self.proj = nn.Conv2d(channels, next_channels, 1)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> Streams:
        left, right = self.blocks(left, right)
        return self.proj(F.avg_pool2d(left, 2)), self.proj(F.avg_pool2d(right, 2))


class DualStreamEncoder(nn.Module):
    """Image -> (T, R) features at five levels; both streams start from one shared conv."""

    def __init__(self, dims: tuple[int, ...], blocks: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Conv2d(3, dims[0], 3, padding=1)
        self.stages = nn.ModuleList(
            EncoderStage(dims[i], dims[i + 1], blocks[i]) for i in range(len(dims) - 1)
        )

    def forward(self, image: torch.Tensor) -> list[Streams]:
        x = self.stem(image)
        levels = [(x, x)]
        for stage in self.stages:
            levels.append(stage(*levels[-1]))
        return levels
