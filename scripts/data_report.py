"""How much reflection structure the training pairs carry, per source (prints a table; not a test).

    python scripts/data_report.py [--synthesis structured|veiled] [--patch 128] [--count 256]

For each image-formation model of `dmdnet.training.synthesis`, the real reflections composited over
natural photos, the mix as the trainer draws it, and the crops of the real training pairs: the
identity PSNR (input against T's target) and the identity photometry-invariant PSNR (the input
mapped onto T's target by the per-channel gain and offset first, `dmdnet.photometry`), median and
mean over `--count` random crops at the training crop size. The second is the structure a
reflection leaves once dimming and tint are matched out: the lower, the more structure. Synthetic
pairs that carry less than real ones teach that a reflection is a veil.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dmdnet.photometry import match_photometry  # noqa: E402
from dmdnet.training.real_pairs import RealPairSampler, real_pairs, split_validation  # noqa: E402
from dmdnet.training.real_reflections import real_reflections  # noqa: E402
from dmdnet.training.synthesis import (  # noqa: E402
    MODEL_NAMES,
    REAL_REFLECTIONS,
    SYNTHESIS_PRESETS,
    PairSampler,
    list_images,
)
from dmdnet.training.trainer import DEFAULT_DATA  # noqa: E402

REAL_TRAINING = ROOT.parent / "shared/data/real_train/zhang_real82"
STRUCTURE_MARGIN = 0.5
"""The mix's median invariant PSNR may be at most this far above the real crops' (dB)."""
MODEL_CEILING = 26.0
"""No model's median invariant PSNR above this (dB)."""


def psnr_per_crop(estimate: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N,) PSNR in dB, the MSE over every value of a crop (inf if equal)."""
    return -10 * torch.log10((estimate - truth).square().flatten(1).mean(1))


def identity_scores(blended: torch.Tensor, transmission: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(identity PSNR, identity invariant PSNR) of each crop."""
    return (psnr_per_crop(blended, transmission),
            psnr_per_crop(match_photometry(blended, transmission), transmission))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthesis", choices=list(SYNTHESIS_PRESETS), default="structured")
    parser.add_argument("--patch", type=int, default=128, help="crop size (the trainer's --patch)")
    parser.add_argument("--count", type=int, default=1024, help="crops per source (medians of 256 moved 0.6 dB between seeds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", nargs="+", type=Path, default=list(DEFAULT_DATA), help="natural photos")
    parser.add_argument("--real", nargs="+", type=Path, default=[REAL_TRAINING], help="real pair folders")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    settings = SYNTHESIS_PRESETS[args.synthesis]
    training_pairs, _ = split_validation(real_pairs(args.real))
    reflections = real_reflections(training_pairs) if settings.real_reflection_share else ()
    sampler = PairSampler(list_images(args.data), args.patch, args.seed, settings, reflections)
    sources = [*MODEL_NAMES, *([REAL_REFLECTIONS] if reflections else [])]
    rows = {name: identity_scores(*sampler.sample(args.count, name)[:2]) for name in sources}
    rows["mix, as the trainer draws it"] = identity_scores(*sampler.sample(args.count)[:2])
    rows[f"real training pairs ({len(training_pairs)})"] = identity_scores(
        *RealPairSampler(training_pairs, args.patch, args.seed).sample(args.count)[:2])

    print(f"synthesis {args.synthesis}, {args.count} crops of {args.patch} px per row\n")
    print("| source | identity PSNR median / mean | identity PSNR-inv median / mean |")
    print("| --- | ---: | ---: |")
    medians = {}
    for name, scores in rows.items():
        finite = [score[torch.isfinite(score)] for score in scores]
        medians[name] = float(scores[1].median())
        print(f"| {name} | {float(scores[0].median()):.2f} / {float(finite[0].mean()):.2f} | "
              f"{medians[name]:.2f} / {float(finite[1].mean()):.2f} |")
    mix, real = list(medians.values())[-2:]
    above = [name for name in sources if medians[name] > MODEL_CEILING]
    print(f"\nmix against real crops: {mix - real:+.2f} dB invariant (at most +{STRUCTURE_MARGIN}); "
          f"sources above {MODEL_CEILING:.0f} dB: {', '.join(above) or 'none'}")


if __name__ == "__main__":
    main()
