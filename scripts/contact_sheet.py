"""Contact sheet of the example photos separated by the shipped weights: input | T | R.

    python scripts/contact_sheet.py [--out assets/contact_sheet.jpg] [--model ... --memory ...]

Runs `dmdnet.load_pipeline()` (the default weights unless files are given) on every photo in
`examples/` and lays out one row per photo, so anyone can see what the weights do. The
reflection is shown as the network outputs it, not brightened, with its mean in the caption.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dmdnet  # noqa: E402
from dmdnet.files import atomic_path  # noqa: E402
from dmdnet.images import image_files, to_uint8  # noqa: E402

TITLE_CHARACTERS_PER_INCH = 11
"""How many characters of the 10-point title a line holds per inch of figure width, with a margin
(the weights' label is longer than one line)."""
TITLE_LINE_INCHES = 0.2
"""Height of one line of the title; the header above the first row grows by it per line."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", default=str(ROOT / "examples"))
    parser.add_argument("--out", default=str(ROOT / "assets" / "contact_sheet.jpg"))
    parser.add_argument("--model")
    parser.add_argument("--memory")
    parser.add_argument("--width", type=float, default=12.0, help="figure width in inches")
    args = parser.parse_args()

    pipe = dmdnet.load_pipeline(model=args.model, memory=args.memory, device="cpu")
    photos = image_files(args.examples)
    rows = []
    for path in tqdm(photos, desc="separating", unit="photo"):
        result = pipe.separate(path)
        rows.append((path.name, to_uint8(result.image), to_uint8(result.transmission),
                     to_uint8(result.reflection)))

    aspects = [image.shape[0] / image.shape[1] for _, image, *_ in rows]
    caption_inches = 0.3
    title = textwrap.fill(pipe.weights.label, int(TITLE_CHARACTERS_PER_INCH * args.width))
    header_inches = 0.5 + TITLE_LINE_INCHES * (title.count("\n") + 1)
    height = sum(args.width / 3 * aspect + caption_inches for aspect in aspects) + header_inches
    figure, axes = plt.subplots(len(rows), 3, squeeze=False, figsize=(args.width, height),
                                gridspec_kw={"height_ratios": aspects, "wspace": 0.02, "hspace": 0.15})
    for row, (name, image, transmission, reflection) in zip(axes, rows):
        captions = (f"{name}: input", "transmission T", f"reflection R (mean {reflection.mean() / 255:.3f})")
        for axis, picture, caption in zip(row, (image, transmission, reflection), captions):
            axis.imshow(picture)
            axis.set_title(caption, fontsize=9)
            axis.set_axis_off()
    figure.suptitle(title, fontsize=10, y=1 - 0.12 / height, va="top")
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.005, top=1 - header_inches / height)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as partial:
        figure.savefig(partial, format=Path(args.out).suffix.lstrip(".") or "png", dpi=110, pil_kwargs={"quality": 88})
    plt.close(figure)
    print(f"wrote {args.out} ({len(rows)} photos)")


if __name__ == "__main__":
    main()
