"""Architecture settings of DMDNet as one immutable object (timm-style presets)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

IMAGENET_FEATURE_CHANNELS = (24, 40, 112)
"""Channels of the ImageNet EfficientNet-Lite0 features at stride 4, 8, 16 (`dmdnet.network.imagenet_prior`)."""


@dataclass(frozen=True)
class DMDNetConfig:
    """Everything that shapes the network; the released model is `DMDNetConfig.released()`.

    Levels are numbered 1 (full resolution) to 5 (1/16). Tuples indexed by level
    list level 1 first.
    """

    dims: tuple[int, int, int, int, int] = (48, 96, 192, 384, 768)
    encoder_blocks: tuple[int, int, int, int] = (2, 2, 2, 2)
    """MuGI blocks of each encoder stage (levels 1-4, before downsampling)."""
    dm_blocks: tuple[int, int, int, int, int] = (1, 2, 2, 4, 4)
    """DM blocks of each level's main stack; the last block of a stack carries MECM. A level with
    0 blocks has no DSMamba/MECM there (and no memory banks): its features pass straight on."""
    decoder_blocks: tuple[int, int, int, int] = (2, 2, 2, 2)
    """MuGI blocks after upsampling into levels 1-4."""
    final_blocks: int = 1
    """MuGI blocks after the level-1 DM stack."""
    depth_feature_channels: tuple[int, int, int] = (96, 256, 512)
    """Channels of the depth model's features feeding levels 3, 4, 5."""
    num_experts: int = 4
    top_k: int = 2
    d_state: int = 16
    ffn_expansion: float = 2.66
    pad_multiple: int = 32
    transmission_skip: bool = False
    """Predict T as the input plus a learned correction (DMDNet-Lite); the released model predicts T directly."""
    global_gain: bool = False
    """Scale T by a per-image gain read from the input's statistics: the glass dims the whole scene
    while a reflection brightens it. Added and fitted after training by `dmdnet calibrate`
    (`dmdnet.training.calibration`) on real pairs of one capture; off in the presets, since a gain fitted
    on one set of real pairs did not carry over to photos taken otherwise (see docs/training.md)."""

    imagenet_prior: bool = False
    """DMDNet-Lite's depth-semantic branch reads frozen ImageNet EfficientNet-Lite0 features and its
    proximity map comes from a head on them (`dmdnet.network.imagenet_prior.ImageNetProximity`), as the
    released model reads MiDaS; without it a small estimator learns both from scratch."""
    fine_semantic: bool = False
    """The depth model's finest features (stride 4), upsampled, also feed levels 1 and 2, which the
    depth-semantic branch (levels 3-5) does not reach: hypercolumns of semantic features at every
    level, as ERRNet feeds VGG features at full resolution. DMDNet-Lite only; off in the presets."""

    @classmethod
    def released(cls) -> "DMDNetConfig":
        """The configuration of the authors' released checkpoint (68.5 M parameters)."""
        return cls()

    @classmethod
    def lite(cls) -> "DMDNetConfig":
        """DMDNet-Lite: every part of the method (DAScan, DS-SSM, MECM, the depth-semantic
        branch) at widths a 2-core CPU can train, paired with `ProximityEstimator`.

        Its DM blocks run on levels 2-5 only: the full-resolution scans of a level-1 block
        took 60% of the time of a 512x512 photo. Level 1 keeps its MuGI blocks."""
        return cls(dims=(16, 24, 32, 48, 64), encoder_blocks=(1, 1, 1, 1), dm_blocks=(0, 1, 1, 1, 1),
                   decoder_blocks=(1, 1, 1, 1), final_blocks=1, depth_feature_channels=(16, 24, 32),
                   transmission_skip=True)

    def with_imagenet_prior(self, fine_semantic: bool = False) -> "DMDNetConfig":
        """This configuration fed by the frozen ImageNet encoder (its 24/40/112 feature channels),
        at levels 1 and 2 too with `fine_semantic`."""
        return replace(self, imagenet_prior=True, depth_feature_channels=IMAGENET_FEATURE_CHANNELS,
                       fine_semantic=fine_semantic)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DMDNetConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
