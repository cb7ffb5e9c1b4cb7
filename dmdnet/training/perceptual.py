"""The VGG19 perceptual loss of the reference (spec section 9), on the layers available offline.

The reference compares T with its target on VGG19 relu1_2 ... relu5_2. Only the layers up to
relu3_1 are on disk (`../shared/data/pretrained/vgg19_relu3_1`, ImageNet weights rescaled so that
every layer's mean activation is about 1). The loss here is the L1 distance of relu1_2, relu2_2
and relu3_1, equally weighted: the reference's per-layer weights (1/2.6, 1/4.8, 1/3.7, ...) even
out the raw layers' magnitudes, which these normalised weights already have.

The term costs more than the network's own pass (22 GFLOP a step on two 128 px crops against
19.6). `compute_dtype=torch.bfloat16` runs its convolutions under autocast (1.75x faster on a CPU
with AVX-512 BF16) and takes the distances in float32; it is opt-in (`train --perceptual-dtype`),
since its gradient differs from float32's by a few percent (docs/benchmarks.md).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoints import CheckpointError, check_state_dict, read_checkpoint
from ..weights import VGG_FILE

_CONVS = {"conv1": (3, 3, 1), "conv2": (64, 3, 3), "conv3": (64, 64, 3), "conv4": (128, 64, 3),
          "conv5": (128, 128, 3), "conv6": (256, 128, 3)}
"""The file's layers: (out, in, kernel). conv1 is the fixed RGB -> mean-subtracted BGR transform."""
_FEATURE_LAYERS = ("conv3", "conv5", "conv6")
"""relu1_2, relu2_2, relu3_1."""
_POOL_AFTER = ("conv3", "conv5")
PERCEPTUAL_DTYPES = ("float32", "bfloat16")
"""What `train --perceptual-dtype` offers for the term's convolutions."""


class VGGFeatures(nn.Module):
    """Frozen VGG19 up to relu3_1: RGB in [0, 1] -> (relu1_2, relu2_2, relu3_1), its convolutions
    in `compute_dtype` (float32, or bfloat16/float16 under autocast)."""

    def __init__(self, path: str | Path = VGG_FILE, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.compute_dtype = compute_dtype
        self.convs = nn.ModuleDict({name: nn.Conv2d(cin, cout, k) for name, (cout, cin, k) in _CONVS.items()})
        state = read_checkpoint(path, "VGG19 perceptual")
        if not isinstance(state, dict):
            raise CheckpointError(f"VGG19 perceptual file {path} is not a state dict")
        expected = {f"{name}.{part}": shape for name, (cout, cin, k) in _CONVS.items()
                    for part, shape in (("weight", (cout, cin, k, k)), ("bias", (cout,)))}
        check_state_dict(state, expected, path, "VGG19 perceptual")
        self.convs.load_state_dict(state)
        self.requires_grad_(False)
        self.eval()

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        with torch.autocast(image.device.type, dtype=self.compute_dtype,
                            enabled=self.compute_dtype != torch.float32):
            x = self.convs["conv1"](image)
            features = []
            for name in list(_CONVS)[1:]:
                x = F.relu(self.convs[name](F.pad(x, (1, 1, 1, 1), mode="reflect")))
                if name in _FEATURE_LAYERS:
                    features.append(x)
                if name in _POOL_AFTER:
                    x = F.max_pool2d(x, 2)
        return features


def perceptual_loss(vgg: VGGFeatures, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample (B,) mean over the three layers of the L1 distance of their activations, in
    `prediction`'s dtype whatever the VGG's compute dtype."""
    with torch.no_grad():
        target_features = vgg(target)
    distances = [(p.to(prediction.dtype) - t.to(prediction.dtype)).abs().flatten(1).mean(1)
                 for p, t in zip(vgg(prediction), target_features)]
    return torch.stack(distances).mean(0)
