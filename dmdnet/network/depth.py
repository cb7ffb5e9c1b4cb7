"""MiDaS DPT with a NeXt-ViT-Large backbone: the depth model that feeds DMDNet.

The backbone is timm's `nextvit_large`; the DPT neck and head follow the MiDaS
release (`dpt_next_vit_large_384.pt`). `midas_to_ours` / `ours_to_midas` map
between that checkpoint's key names and this module's, so the released file
loads strictly and the seeded golden weights land on the right tensors.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from itertools import accumulate
from typing import NamedTuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

BACKBONE_DEPTHS = (3, 4, 30, 3)
"""Blocks per Next-ViT-Large stage; MiDaS numbers them as one flat `features` list."""
STRIDE = 32
"""Input height and width must be multiples of this (the backbone's last stage is at 1/32)."""

_MIDAS_BACKBONE = "pretrained.model."
_MIDAS_NECK = "scratch."
_STAGE_STARTS = tuple(accumulate((0,) + BACKBONE_DEPTHS[:-1]))
_NUM_LEVELS = len(BACKBONE_DEPTHS)


class DepthFeatures(NamedTuple):
    """What DMDNet takes from the depth model (all at the padded input size)."""

    depth: torch.Tensor
    """(B, 1, H, W) relative inverse depth, non-negative (larger = nearer)."""
    layer1: torch.Tensor
    """(B, 96, H/4, W/4) output of backbone stage 1."""
    layer2: torch.Tensor
    """(B, 256, H/8, W/8) output of backbone stage 2."""
    layer3: torch.Tensor
    """(B, 512, H/16, W/16) output of backbone stage 3."""


class ResidualConvUnit(nn.Module):
    """x + conv(relu(conv(relu(x)))), both convs 3x3 with bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """DPT fusion: add the refined skip, refine, resize (align_corners=True), 1x1 project."""

    def __init__(self, channels: int):
        super().__init__()
        # Refines the skip input; exists (and is in the checkpoint) even where no skip is fed.
        self.skip_unit = ResidualConvUnit(channels)
        self.out_unit = ResidualConvUnit(channels)
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(
        self,
        x: torch.Tensor,
        skip: torch.Tensor | None = None,
        size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        if skip is not None:
            x = x + self.skip_unit(skip)
        x = self.out_unit(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.project(x)


class DepthHead(nn.Module):
    """conv3x3 -> bilinear x2 (align_corners=True) -> conv3x3 -> relu -> conv1x1 -> relu."""

    def __init__(self, in_channels: int, hidden_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels // 2, 3, padding=1)
        self.conv2 = nn.Conv2d(in_channels // 2, hidden_channels, 3, padding=1)
        self.conv3 = nn.Conv2d(hidden_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.conv1(x), scale_factor=2, mode="bilinear", align_corners=True)
        return F.relu(self.conv3(F.relu(self.conv2(x))))


class MidasDPT(nn.Module):
    """MiDaS DPT-NeXt-ViT-L: image (fed as is, no normalisation or resize) to depth and features.

    The backbone keeps timm's classification `norm` and `head` although the
    forward pass never uses them: the MiDaS checkpoint stores them, and keeping
    them lets that file load strictly and convert back without loss.
    """

    def __init__(self, neck_channels: int = 256, head_channels: int = 32):
        super().__init__()
        self.backbone = timm.create_model("nextvit_large", pretrained=False)
        stage_channels = [info["num_chs"] for info in self.backbone.feature_info]
        self.reassemble = nn.ModuleList(
            nn.Conv2d(c, neck_channels, 3, padding=1, bias=False) for c in stage_channels
        )
        self.fusion = nn.ModuleList(FusionBlock(neck_channels) for _ in stage_channels)
        self.head = DepthHead(neck_channels, head_channels)

    def forward(self, x: torch.Tensor) -> DepthFeatures:
        """x: (B, 3, H, W) with H and W multiples of 32."""
        if x.shape[-2] % STRIDE or x.shape[-1] % STRIDE:
            raise ValueError(f"MidasDPT needs H and W divisible by {STRIDE}, got {tuple(x.shape)}")
        stages = []
        y = self.backbone.stem(x)
        for stage in self.backbone.stages:
            y = stage(y)
            stages.append(y)
        levels = [conv(s) for conv, s in zip(self.reassemble, stages)]
        # Coarsest level first; each fused map is resized to the next finer level.
        path = self.fusion[-1](levels[-1], size=levels[-2].shape[-2:])
        for i in range(len(levels) - 2, 0, -1):
            path = self.fusion[i](path, levels[i], size=levels[i - 1].shape[-2:])
        path = self.fusion[0](path, levels[0])
        return DepthFeatures(self.head(path), stages[0], stages[1], stages[2])


def _neck_prefixes() -> list[tuple[str, str]]:
    """(MiDaS prefix, our prefix) for every DPT neck and head module."""
    pairs = []
    for level in range(1, _NUM_LEVELS + 1):
        i = level - 1
        pairs += [
            (f"scratch.layer{level}_rn.", f"reassemble.{i}."),
            (f"scratch.refinenet{level}.resConfUnit1.", f"fusion.{i}.skip_unit."),
            (f"scratch.refinenet{level}.resConfUnit2.", f"fusion.{i}.out_unit."),
            (f"scratch.refinenet{level}.out_conv.", f"fusion.{i}.project."),
        ]
    pairs += [
        ("scratch.output_conv.0.", "head.conv1."),
        ("scratch.output_conv.2.", "head.conv2."),
        ("scratch.output_conv.4.", "head.conv3."),
    ]
    return pairs


_NECK_PREFIXES = _neck_prefixes()


def _swap_prefix(key: str, pairs: list[tuple[str, str]], reverse: bool) -> str:
    for midas, ours in pairs:
        old, new = (ours, midas) if reverse else (midas, ours)
        if key.startswith(old):
            return new + key[len(old):]
    raise ValueError(f"unknown depth-model key {key!r}")


def _backbone_key_to_ours(key: str) -> str:
    """ByteDance Next-ViT name (prefix stripped) -> timm name."""
    match = re.match(r"features\.(\d+)\.(.*)", key)
    if match:
        index, rest = int(match[1]), match[2]
        stage = max(s for s, start in enumerate(_STAGE_STARTS) if start <= index)
        if index >= _STAGE_STARTS[stage] + BACKBONE_DEPTHS[stage]:
            raise ValueError(f"block index out of range in {key!r}")
        rest = re.sub(r"^mlp\.conv([12])\.", r"mlp.fc\1.", rest)
        return f"stages.{stage}.blocks.{index - _STAGE_STARTS[stage]}.{rest}"
    if key.startswith("proj_head.0."):
        return "head.fc." + key[len("proj_head.0."):]
    return key


def _backbone_key_to_midas(key: str) -> str:
    """timm Next-ViT name -> ByteDance name (without the `pretrained.model.` prefix)."""
    match = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", key)
    if match:
        stage, block, rest = int(match[1]), int(match[2]), match[3]
        rest = re.sub(r"^mlp\.fc([12])\.", r"mlp.conv\1.", rest)
        return f"features.{_STAGE_STARTS[stage] + block}.{rest}"
    if key.startswith("head.fc."):
        return "proj_head.0." + key[len("head.fc."):]
    return key


def unwrap_checkpoint(checkpoint: Mapping) -> dict:
    """The plain state dict of a MiDaS file: unwraps `{"model": sd}`, strips a `module.` prefix."""
    state_dict = checkpoint.get("model", checkpoint)
    if not isinstance(state_dict, Mapping):
        raise ValueError("checkpoint['model'] is not a state dict")
    if all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def midas_to_ours(state_dict: Mapping) -> dict:
    """MiDaS checkpoint (plain, `{"model": ...}` or `module.`-prefixed) -> `MidasDPT` state dict.

    Every tensor is mapped, the classification head included; an unknown key
    raises ValueError instead of being dropped. The input is not modified.
    """
    out = {}
    for key, value in unwrap_checkpoint(state_dict).items():
        if key.startswith(_MIDAS_BACKBONE):
            new_key = "backbone." + _backbone_key_to_ours(key[len(_MIDAS_BACKBONE):])
        elif key.startswith(_MIDAS_NECK):
            new_key = _swap_prefix(key, _NECK_PREFIXES, reverse=False)
        else:
            raise ValueError(f"unknown depth-model key {key!r}")
        out[new_key] = value
    return out


def ours_to_midas(state_dict: Mapping) -> dict:
    """`MidasDPT` state dict -> MiDaS key names (the inverse of `midas_to_ours`)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            new_key = _MIDAS_BACKBONE + _backbone_key_to_midas(key[len("backbone."):])
        else:
            new_key = _swap_prefix(key, _NECK_PREFIXES, reverse=True)
        out[new_key] = value
    return out
