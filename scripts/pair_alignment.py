"""How far the two shots of each real pair are shifted against each other (prints numbers; not a test).

    python scripts/pair_alignment.py [FOLDER ...]

A real pair is a photo through glass and a second shot without the glass; if the camera moved
between them, an L1 loss on the pair teaches blur. For each pair with a transmission, the global
translation of the transmission onto the blended photo, by phase correlation of the two images'
gradient magnitudes (the scene's edges, which both shots share; a tenth of a pixel), then the median,
mean and the pairs shifted by a pixel or more. Validation pairs are marked.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.registration import phase_cross_correlation

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dmdnet.training.real_pairs import VALIDATION_PAIRS, real_pairs  # noqa: E402

REAL_TRAINING = ROOT.parent / "shared/data/real_train/zhang_real82"


def edges(path: Path) -> np.ndarray:
    """Gradient magnitude of the image's luminance in [0, 1]."""
    gray = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255
    gy, gx = np.gradient(gray)
    return np.hypot(gx, gy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path, default=[REAL_TRAINING], help="real pair folders")
    parser.add_argument("--show", type=int, default=10, help="list this many of the most shifted pairs")
    args = parser.parse_args()
    shifts = []
    for pair in real_pairs(args.folders):
        (dy, dx), _, _ = phase_cross_correlation(edges(pair.blended), edges(pair.transmission), upsample_factor=10)
        shifts.append((float(np.hypot(dy, dx)), dy, dx, pair.name))
    sizes = np.array([shift[0] for shift in shifts])
    print(f"{len(shifts)} pairs: shift median {np.median(sizes):.2f} px, mean {sizes.mean():.2f} px, "
          f">= 1 px: {(sizes >= 1).sum()}, >= 2 px: {(sizes >= 2).sum()}")
    for size, dy, dx, name in sorted(shifts, reverse=True)[:args.show]:
        print(f"  {name}: {size:.2f} px (down {dy:+.1f}, right {dx:+.1f})"
              + ("  [validation]" if name in VALIDATION_PAIRS else ""))


if __name__ == "__main__":
    main()
