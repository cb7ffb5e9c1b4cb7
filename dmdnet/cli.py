"""Command line: `python -m dmdnet separate PATH... --out DIR`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def collect_images(paths: list[str]) -> list[Path]:
    """Files as given plus the image files inside given folders (sorted, not recursive)."""
    found = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(path)
    return found


def add_weight_options(parser: argparse.ArgumentParser) -> None:
    """--model/--memory/--depth/--hub-repo/--device/--dtype, shared by the CLI and app.py."""
    parser.add_argument("--model", help="DMDNet model file (model_latest.pt)")
    parser.add_argument("--memory", help="memory bank file (memory_banks_latest.pt)")
    parser.add_argument("--depth", help="MiDaS depth file (dpt_next_vit_large_384.pt)")
    parser.add_argument("--hub-repo", help="Hugging Face Hub repository to fetch missing files from")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])


def _separate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import load_pipeline
    from .checkpoints import CheckpointError
    from .images import InvalidImageError, save_png

    images = collect_images(args.paths)
    if not images:
        print("no images found in: " + " ".join(args.paths), file=sys.stderr)
        return 2
    try:
        pipe = load_pipeline(args.model, args.memory, args.depth, device=args.device,
                             dtype=args.dtype, hub_repo=args.hub_repo, max_pixels=args.max_pixels)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    failed = 0
    for path in tqdm(images, desc="separating", unit="image"):
        try:
            result = pipe.separate(path)
        except InvalidImageError as error:
            tqdm.write(f"skipped {path}: {error}", file=sys.stderr)
            failed += 1
            continue
        save_png(result.transmission, out / "transmission_layer" / f"{path.stem}.png")
        save_png(result.reflection, out / "reflection_layer" / f"{path.stem}.png")
    print(f"wrote {len(images) - failed} of {len(images)} images to {out}/transmission_layer "
          f"and {out}/reflection_layer ({pipe.weights.label}, {pipe.device}, {pipe.dtype})")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    from .pipeline import DEFAULT_MAX_PIXELS

    parser = argparse.ArgumentParser(prog="dmdnet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    separate = commands.add_parser("separate", help="split photos into transmission and reflection PNGs")
    separate.add_argument("paths", nargs="+", help="image files and/or folders of images")
    separate.add_argument("--out", required=True, help="output folder")
    separate.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                          help="larger photos run downscaled and come back at full size "
                               f"(default {DEFAULT_MAX_PIXELS:,})")
    add_weight_options(separate)
    separate.set_defaults(run=_separate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
