"""How well weights fit the real pairs they trained on, against the pairs held out from training.

    python -m dmdnet evaluate ../shared/data/real_train/zhang_real82 --out runs/z82
    python scripts/fit_gap.py runs/z82/per_image.csv [more per_image.csv ...]

Splits the per-image T-PSNR and photometry-invariant T-PSNR (PSNR-inv) that `evaluate` writes
into the training pairs and the held-out pairs (`dmdnet.training.real_pairs.VALIDATION_PAIRS`),
for the model and for identity. A small gain on
the training pairs says the network underfits them; a gain there that the held-out pairs do
not share says it memorises them.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dmdnet.evaluation import METRICS, summarize  # noqa: E402
from dmdnet.training.real_pairs import VALIDATION_PAIRS  # noqa: E402


def split_summary(per_image_csv: Path) -> dict[tuple[str, str], dict]:
    """`evaluate`'s T summary with the pairs grouped by split ("train" or "held out") instead
    of by folder, keyed by (split, method)."""
    with open(per_image_csv, newline="") as file:
        rows = [{**row, **{metric: float(row[metric]) for metric in METRICS},
                 "dataset": "held out" if f"{row['dataset']}/{row['image']}" in VALIDATION_PAIRS else "train"}
                for row in csv.DictReader(file)]
    return {(group["dataset"], group["method"]): group for group in summarize(rows) if group["layer"] == "T"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("per_image", nargs="+", type=Path, help="per_image.csv files written by evaluate")
    args = parser.parse_args()
    missing = [str(path) for path in args.per_image if not path.is_file()]
    if missing:
        parser.error(f"not found: {', '.join(missing)} (write it with `python -m dmdnet evaluate ... --out DIR`)")
    print("| per_image.csv | split | pairs | model T-PSNR | identity | gain | model PSNR-inv | identity | gain |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for path in args.per_image:
        groups = split_summary(path)
        for split in ("train", "held out"):
            if (split, "model") not in groups:
                continue
            model, identity = groups[(split, "model")], groups[(split, "identity")]
            print(f"| {path} | {split} | {model['images']} | " + " | ".join(
                f"{model[metric]:.2f} | {identity[metric]:.2f} | {model[metric] - identity[metric]:+.2f}"
                for metric in ("psnr", "psnr_inv")) + " |")


if __name__ == "__main__":
    main()
