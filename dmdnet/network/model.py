"""DMDNet: dual-stream encoder, depth-semantic branch and DM-block decoder (spec section 7)."""
from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import DMDNetConfig
from .diagnostics import CallSite, ForwardObserver
from .dsmamba import DSMamba
from .layers import ChannelLayerNorm, GatedFeedForward, lrelu, upsample2x
from .mecm import MECM
from .mugi import DualStreamEncoder, MuGIStack

Streams = tuple[torch.Tensor, torch.Tensor]
DEPTH_BRANCH_LEVELS = (3, 4, 5)
FINE_SEMANTIC_LEVELS = (1, 2)
"""Levels that `DMDNetConfig.fine_semantic` feeds the depth model's stride-4 features to."""


class DepthInputs(Protocol):
    """What DMDNet needs from a depth model (MiDaS or the project's small estimator)."""

    depth: torch.Tensor
    layer1: torch.Tensor
    layer2: torch.Tensor
    layer3: torch.Tensor


def memory_bank_names(config: DMDNetConfig) -> dict[str, int]:
    """Official bank names ("memory_level5_T", "memory_DS5_T1", ...) -> their channel width.

    A level without DM blocks has no MECM, so no `memory_level{n}` banks."""
    names = {}
    for level in range(1, 6):
        for stream in "TR" if config.dm_blocks[level - 1] else "":
            names[f"memory_level{level}_{stream}"] = config.dims[level - 1]
    for level in DEPTH_BRANCH_LEVELS:
        for stream in "TR":
            for part in (1, 2):
                names[f"memory_DS{level}_{stream}{part}"] = config.dims[level - 1]
    return names


class DMBlock(nn.Module):
    """DSMamba and EFFN residual updates of both streams; the last block of a stack adds MECM."""

    def __init__(self, channels: int, config: DMDNetConfig, with_mecm: bool):
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels, eps=1e-5)
        self.mamba = DSMamba(channels, config.d_state)
        self.norm2 = ChannelLayerNorm(channels, eps=1e-5)
        self.ffn = GatedFeedForward(channels, config.ffn_expansion)
        self.mecm = MECM(channels, config.num_experts, config.top_k) if with_mecm else None

    def forward(self, x_t: torch.Tensor, x_r: torch.Tensor, proximity: torch.Tensor,
                banks: tuple[torch.Tensor, torch.Tensor], site: CallSite, block: int,
                observer: ForwardObserver | None) -> Streams:
        m_t, m_r = self.mamba(self.norm1(x_t), self.norm1(x_r), proximity, site, block, observer)
        x_t, x_r = x_t + m_t, x_r + m_r
        x_t = x_t + self.ffn(self.norm2(x_t))
        x_r = x_r + self.ffn(self.norm2(x_r))
        if self.mecm is not None:
            x_t = self.mecm(x_t, banks[0], site, "T", observer) + x_t
            x_r = self.mecm(x_r, banks[1], site, "R", observer) + x_r
        return x_t, x_r


class DMStack(nn.ModuleList):
    """DM blocks run in sequence, MECM on the last one."""

    def __init__(self, channels: int, num_blocks: int, config: DMDNetConfig):
        super().__init__(DMBlock(channels, config, with_mecm=i == num_blocks - 1)
                         for i in range(num_blocks))

    def forward(self, x_t: torch.Tensor, x_r: torch.Tensor, proximity: torch.Tensor,
                banks: tuple[torch.Tensor, torch.Tensor], site: CallSite,
                observer: ForwardObserver | None = None) -> Streams:
        for i, block in enumerate(self):
            x_t, x_r = block(x_t, x_r, proximity, banks, site, i, observer)
        return x_t, x_r


class MemoryBanks(nn.Module):
    """The 22 read-only (at inference) expert memories, kept as non-persistent buffers.

    They live beside the network weights, in their own file, as released.
    """

    def __init__(self, config: DMDNetConfig):
        super().__init__()
        self.float32_tensors = tuple(memory_bank_names(config))
        """Matched against in float32 under half-type features (`dmdnet.network.precision`)."""
        for name, channels in memory_bank_names(config).items():
            bank = F.normalize(torch.rand(config.num_experts, channels, channels), dim=1)
            self.register_buffer(name, bank, persistent=False)

    def get(self, name: str) -> torch.Tensor:
        return getattr(self, name)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.named_buffers())

    @torch.no_grad()
    def load(self, banks: dict[str, torch.Tensor]) -> None:
        """Copy banks in (names and shapes are checked by `dmdnet.checkpoints`)."""
        for name, value in banks.items():
            self.get(name).copy_(value)


STATISTIC_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
DARK_QUANTILES = (0.01, 0.05, 0.5)
STATISTICS = 3 * (2 + len(STATISTIC_QUANTILES)) + len(DARK_QUANTILES) + 1


def image_statistics(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 31) float32: each channel's mean, deviation and quantiles, quantiles of
    the dark channel (the minimum over RGB) and the mean saturation: how bright and how veiled a
    photo is, which a reflection changes as a whole."""
    flat = image.flatten(2).float()
    quantiles = torch.quantile(flat, flat.new_tensor(STATISTIC_QUANTILES), dim=2)  # (Q, B, 3)
    dark = flat.amin(1)
    return torch.cat([flat.mean(2), flat.std(2), quantiles.permute(1, 0, 2).flatten(1),
                      torch.quantile(dark, flat.new_tensor(DARK_QUANTILES), dim=1).t(),
                      (flat.amax(1) - dark).mean(1, keepdim=True)], dim=1)


class GlobalGain(nn.Module):
    """Per-image gain on T, a linear map of the input's statistics in log space (clamped to
    [e^-1.5, e^0.5]). Zero, so a gain of 1, until `dmdnet.training.calibration` fits it. One gain for all
    three channels: brightness and veil are physics every camera shares, while the colour cast
    between a photo through glass and one without is particular to each capture."""

    float32_tensors = ("fc.weight", "fc.bias")
    """A global factor on every pixel: computed in float32 (`dmdnet.network.precision`)."""
    log_range = (-1.5, 0.5)

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(STATISTICS, 1)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1, 1, 1) in the image's dtype."""
        log_gain = self.fc(image_statistics(image)).clamp(*self.log_range)
        return torch.exp(log_gain)[:, :, None, None].to(image.dtype)


def fine_semantic_projections(config: DMDNetConfig) -> nn.ModuleList:
    """The 1x1 convolutions of `DMDNetConfig.fine_semantic`, zero (the network starts as it would
    without them) and made without drawing from torch's generator, so that a run with them starts
    from the same weights as one without: an A/B that changes one thing."""
    with torch.random.fork_rng(devices=[]):
        projections = nn.ModuleList(nn.Conv2d(config.depth_feature_channels[0], config.dims[level - 1], 1)
                                    for level in FINE_SEMANTIC_LEVELS)
    for projection in projections:
        nn.init.zeros_(projection.weight)
        nn.init.zeros_(projection.bias)
    return projections


class DMDNet(nn.Module):
    """Maps a padded image and its depth features to transmission and reflection layers."""

    def __init__(self, config: DMDNetConfig | None = None):
        super().__init__()
        self.config = config = config or DMDNetConfig.released()
        dims = config.dims
        self.encoder = DualStreamEncoder(dims, config.encoder_blocks)
        self.depth_semantic_proj = nn.ModuleList(
            nn.Conv2d(ch, dims[level - 1], 1)
            for ch, level in zip(config.depth_feature_channels, DEPTH_BRANCH_LEVELS)
        )
        self.proximity_stem = nn.Conv2d(1, dims[0], 3, padding=1)
        self.proximity_down = nn.ModuleList(nn.Conv2d(dims[i], dims[i + 1], 1) for i in range(4))
        self.up_proj = nn.ModuleList(nn.Conv2d(dims[i + 1], dims[i], 1) for i in range(4))
        self.depth_branch = nn.ModuleList(DMStack(dims[level - 1], 1, config)
                                          for level in DEPTH_BRANCH_LEVELS)
        self.dm_stacks = nn.ModuleList(DMStack(dims[i], config.dm_blocks[i], config)
                                       for i in range(5))
        self.decoder_mugi = nn.ModuleList(MuGIStack(dims[i], config.decoder_blocks[i])
                                          for i in range(4))
        self.final_mugi = MuGIStack(dims[0], config.final_blocks)
        self.head = nn.Conv2d(dims[0], 3, 3, padding=1)
        if config.transmission_skip:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.global_gain = GlobalGain() if config.global_gain else None
        self.memory = MemoryBanks(config)
        self.fine_semantic_proj = fine_semantic_projections(config) if config.fine_semantic else None

    def _bank_pair(self, t_name: str, r_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.memory.get(t_name), self.memory.get(r_name)

    def _upsample_proj(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Level `level` -> level `level - 1`: bilinear x2 then 1x1 conv and lrelu."""
        return lrelu(self.up_proj[level - 2](upsample2x(x)))

    def _proximity_pyramid(self, depth: torch.Tensor) -> list[torch.Tensor]:
        pyramid = [lrelu(self.proximity_stem(depth))]
        for down in self.proximity_down:
            pyramid.append(lrelu(down(F.avg_pool2d(pyramid[-1], 2))))
        return pyramid

    def _depth_branch(self, level: int, semantic: torch.Tensor, encoded: Streams,
                      proximity: torch.Tensor, observer: ForwardObserver | None
                      ) -> tuple[Streams, Streams]:
        """Runs the level's depth-semantic stack once per target stream (T, then R)."""
        stack = self.depth_branch[DEPTH_BRANCH_LEVELS.index(level)]
        parts = []
        for stream, features in zip("TR", encoded):
            banks = self._bank_pair(f"memory_DS{level}_{stream}1", f"memory_DS{level}_{stream}2")
            site = CallSite(level, f"depth_{stream}")
            parts.append(stack(semantic, features, proximity, banks, site, observer))
        return parts[0], parts[1]

    def _level_input(self, level: int, encoded: Streams, decoded: Streams | None,
                     semantic: torch.Tensor | None, proximity: torch.Tensor,
                     observer: ForwardObserver | None) -> Streams:
        """What the DM stack of `level` starts from: the upsampled coarser result plus the
        encoder's features (and, with `fine_semantic`, the semantic features at levels 1-2), or, at
        levels 3-5, plus the depth-semantic branch's outputs."""
        if level not in DEPTH_BRANCH_LEVELS:
            x_t, x_r = decoded[0] + encoded[0], decoded[1] + encoded[1]
            return (x_t, x_r) if semantic is None else (x_t + semantic, x_r + semantic)
        (a_t, b_t), (a_r, b_r) = self._depth_branch(level, semantic, encoded, proximity, observer)
        if decoded is None:
            return a_t + b_t, a_r + b_r
        return decoded[0] + a_t + b_t, decoded[1] + a_r + b_r

    def forward(self, image: torch.Tensor, depth: DepthInputs,
                observer: ForwardObserver | None = None) -> Streams:
        """image: (B, 3, H, W) with H, W multiples of `config.pad_multiple`. Returns (T, R)."""
        multiple = self.config.pad_multiple
        if image.shape[-2] % multiple or image.shape[-1] % multiple:
            raise ValueError(f"DMDNet needs H and W padded to multiples of {multiple}, "
                             f"got {tuple(image.shape[-2:])}")
        semantic = {
            level: lrelu(proj(feature)) for level, proj, feature in zip(
                DEPTH_BRANCH_LEVELS, self.depth_semantic_proj,
                (depth.layer1, depth.layer2, depth.layer3))
        }
        if self.fine_semantic_proj is not None:
            for level, proj in zip(FINE_SEMANTIC_LEVELS, self.fine_semantic_proj):
                size = (image.shape[-2] >> (level - 1), image.shape[-1] >> (level - 1))
                upsampled = F.interpolate(depth.layer1, size=size, mode="bilinear", align_corners=False)
                semantic[level] = lrelu(proj(upsampled))
        proximity = self._proximity_pyramid(depth.depth)
        encoded = self.encoder(image)

        decoded: Streams | None = None
        guide = None
        for level in range(5, 0, -1):  # popping each level's inputs frees them once used
            own_proximity = proximity.pop()
            if any(self.config.dm_blocks[:level]):  # a DM stack here or finer steers by the guide
                guide = own_proximity if guide is None else (
                    self._upsample_proj(guide, level + 1) + own_proximity)
            x_t, x_r = self._level_input(level, encoded.pop(), decoded, semantic.pop(level, None),
                                         own_proximity, observer)
            decoded = None  # summed into x_t, x_r: free it before the level's blocks
            stack = self.dm_stacks[level - 1]
            if len(stack):
                banks = self._bank_pair(f"memory_level{level}_T", f"memory_level{level}_R")
                x_t, x_r = stack(x_t, x_r, guide, banks, CallSite(level), observer)
            if level > 1:
                decoded = self.decoder_mugi[level - 2](self._upsample_proj(x_t, level),
                                                       self._upsample_proj(x_r, level))
        x_t, x_r = self.final_mugi(x_t, x_r)
        t = image + self.head(x_t) if self.config.transmission_skip else lrelu(self.head(x_t))
        if self.global_gain is not None:
            gain = self.global_gain(image)
            if observer is not None:
                observer.add_global_gain(gain)
            t = t * gain
        return t, lrelu(self.head(x_r))


# ----------------------------------------------------------------------------------------
# The released checkpoint's names (timm's `checkpoint_filter_fn` pattern: pure functions
# from the authors' state-dict names to this module's names and back)

_MUGI_NAMES = {
    "norm1": "block1.0.seq.0", "expand1": "block1.0.seq.1", "dwconv": "block1.0.seq.2",
    "channel_attention.proj": "block1.2.seq.0.ca.1", "proj1": "block1.3.seq.0",
    "scale_left": "a_l", "scale_right": "a_r",
    "norm2": "block2.0.seq.0", "expand2": "block2.0.seq.1", "proj2": "block2.2.seq.0",
    "scale_out": "b",
}
_DM_BLOCK_NAMES = {
    "norm1": "norm1.body", "norm2": "norm2.body",
    "mamba.in_proj": "DSMamba.in_proj", "mamba.dwconv": "DSMamba.conv2d",
    "mamba.proximity_fuse": "DSMamba.fuse.0",
    "mamba.x_proj_weight": "DSMamba.x_proj_weight_channel",
    "mamba.dt_proj_weight": "DSMamba.dt_projs_weight_channel",
    "mamba.dt_proj_bias": "DSMamba.dt_projs_bias_channel",
    "mamba.a_log_transmission": "DSMamba.A_logs_ch_T",
    "mamba.a_log_reflection": "DSMamba.A_logs_ch_R",
    "mamba.skip_transmission": "DSMamba.Ds_ch_T", "mamba.skip_reflection": "DSMamba.Ds_ch_R",
    "mamba.depth_encoder": "DSMamba.depth_encoder.0",
    "mamba.depth_proj_weight": "DSMamba.depth_proj_weight_channel",
    "mamba.depth_gate": "DSMamba.conv_depth_sig.0",
    "mamba.out_norm": "DSMamba.out_norm", "mamba.out_proj": "DSMamba.out_proj",
    "ffn.expand": "EFFN.project_in", "ffn.dwconv": "EFFN.dwconv", "ffn.project": "EFFN.project_out",
    "mecm.gate.noise_fc": "MECM.gate.fc0", "mecm.gate.score_fc": "MECM.gate.fc1",
}
_EXPERT_NAMES = {"fusion": "fusion.0", "dilated_dwconv": "depth_conv.0"}


def _local(table: Mapping[str, str], name: str) -> str:
    """Renames a module-local parameter path using the longest matching prefix in `table`."""
    for ours in sorted(table, key=len, reverse=True):
        if name == ours or name.startswith(ours + "."):
            return table[ours] + name[len(ours):]
    raise KeyError(name)


def _dm_block(name: str) -> str:
    expert = re.fullmatch(r"mecm\.experts\.(\d+)\.(.+)", name)
    if expert:
        return f"MECM.Memory_Experts.{expert[1]}.memory_module." + _local(_EXPERT_NAMES, expert[2])
    return _local(_DM_BLOCK_NAMES, name)


def _official_name(key: str, config: DMDNetConfig) -> str:
    """This package's parameter name -> the released checkpoint's name."""
    rules: list[tuple[str, Callable[[re.Match], str]]] = [
        (r"encoder\.stem\.(.+)", lambda m: f"Encoding_Branch.stem.seq.0.{m[1]}"),
        (r"encoder\.stages\.(\d+)\.blocks\.(\d+)\.(.+)",
         lambda m: f"Encoding_Branch.block{int(m[1]) + 1}.{m[2]}.{_local(_MUGI_NAMES, m[3])}"),
        (r"encoder\.stages\.(\d+)\.proj\.(.+)",
         lambda m: f"Encoding_Branch.block{int(m[1]) + 1}."
                   f"{config.encoder_blocks[int(m[1])] + 1}.seq.0.{m[2]}"),
        (r"depth_semantic_proj\.(\d+)\.(.+)", lambda m: f"conv_dim{int(m[1]) + 3}.0.{m[2]}"),
        (r"proximity_stem\.(.+)", lambda m: f"convert_d.0.{m[1]}"),
        (r"proximity_down\.(\d+)\.(.+)", lambda m: f"conv_level{int(m[1]) + 1}_d.0.{m[2]}"),
        (r"up_proj\.(\d+)\.(.+)", lambda m: f"conv_{int(m[1]) + 1}.0.{m[2]}"),
        (r"depth_branch\.(\d+)\.(\d+)\.(.+)",
         lambda m: f"DMBlock_DSBranch_level{int(m[1]) + 3}.blocks.{m[2]}.{_dm_block(m[3])}"),
        (r"dm_stacks\.(\d+)\.(\d+)\.(.+)",
         lambda m: f"DMBlock_level{int(m[1]) + 1}.blocks.{m[2]}.{_dm_block(m[3])}"),
        (r"decoder_mugi\.(\d+)\.(\d+)\.(.+)",
         lambda m: f"MuGIBlock_level{int(m[1]) + 1}.{m[2]}.{_local(_MUGI_NAMES, m[3])}"),
        (r"final_mugi\.(\d+)\.(.+)", lambda m: f"MuGIBlock_last.{m[1]}.{_local(_MUGI_NAMES, m[2])}"),
        (r"head\.(.+)", lambda m: f"out.seq.0.{m[1]}"),
        (r"(global_gain|fine_semantic_proj)\.(.+)", lambda m: m[0]),  # DMDNet-Lite only: no released name
    ]
    for pattern, rename in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return rename(match)
    raise KeyError(key)


@functools.lru_cache(maxsize=8)
def dmdnet_key_shapes(config: DMDNetConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter names and shapes for a configuration (built on the meta device)."""
    with torch.device("meta"):
        model = DMDNet(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=8)
def _official_to_ours_names(config: DMDNetConfig) -> dict[str, str]:
    return {_official_name(key, config): key for key in dmdnet_key_shapes(config)}


def official_to_ours(state_dict: Mapping[str, torch.Tensor],
                     config: DMDNetConfig | None = None) -> dict[str, torch.Tensor]:
    """Released DMDNet state dict -> this package's names; unknown keys pass through unchanged.

    A DataParallel `module.` prefix is removed first.
    """
    names = _official_to_ours_names(config or DMDNetConfig.released())
    converted = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        converted[names.get(key, key)] = value
    return converted


def ours_to_official(state_dict: Mapping[str, torch.Tensor],
                     config: DMDNetConfig | None = None) -> dict[str, torch.Tensor]:
    """This package's DMDNet state dict -> the released names (inverse of `official_to_ours`)."""
    names = {ours: official for official, ours in
             _official_to_ours_names(config or DMDNetConfig.released()).items()}
    return {names.get(key, key): value for key, value in state_dict.items()}
