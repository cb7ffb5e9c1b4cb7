"""A small proximity estimator that stands in for MiDaS in DMDNet-Lite.

No pretrained depth model is available offline, so DMDNet-Lite learns its own
"depth" jointly with the separation loss: a light CNN that outputs a non-negative
proximity map (full resolution) and the three feature maps the depth-semantic
branch expects. Nothing supervises it to be metric depth; it learns whatever
ordering of pixels helps DAScan and DS-SSM separate the layers.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .depth import DepthFeatures
from .layers import lrelu


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class ProximityEstimator(nn.Module):
    """Image -> `DepthFeatures` (proximity map at full size, features at 1/4, 1/8, 1/16)."""

    def __init__(self, channels: tuple[int, int, int] = (16, 24, 32), stem_channels: int = 12):
        super().__init__()
        c1, c2, c3 = channels
        self.stem = nn.Sequential(_conv(3, stem_channels, 2), nn.LeakyReLU(0.2),
                                  _conv(stem_channels, c1, 2), nn.LeakyReLU(0.2))
        self.down2 = _conv(c1, c2, 2)
        self.down3 = _conv(c2, c3, 2)
        self.lateral2 = nn.Conv2d(c2, c3, 1)
        self.lateral1 = nn.Conv2d(c1, c3, 1)
        self.refine = _conv(c3, stem_channels)
        self.out = nn.Conv2d(stem_channels, 1, 3, padding=1)

    def forward(self, image: torch.Tensor) -> DepthFeatures:
        layer1 = self.stem(image)
        layer2 = lrelu(self.down2(layer1))
        layer3 = lrelu(self.down3(layer2))
        path = F.interpolate(layer3, size=layer2.shape[-2:], mode="bilinear", align_corners=False)
        path = F.interpolate(path + self.lateral2(layer2), size=layer1.shape[-2:], mode="bilinear",
                             align_corners=False) + self.lateral1(layer1)
        path = lrelu(self.refine(path))
        path = F.interpolate(path, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return DepthFeatures(F.softplus(self.out(path)), layer1, layer2, layer3)
