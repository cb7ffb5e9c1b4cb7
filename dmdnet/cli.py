"""Command line: `python -m dmdnet separate PATH... --out DIR`.

`train`, `separate` and `evaluate` also run under `torchrun --nproc_per_node N -m dmdnet ...`:
the processes split the work (`dmdnet.training.distributed`) and rank 0 alone prints and writes
the results."""
from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from .datasets import BENCHMARK_SETS, BLENDED, LAYER_FOLDERS, dataset_pairs
from .files import Stopped, WriteError, remove_leftovers, stop_on_signals, uninterrupted
from .images import image_files

T = TypeVar("T")


class UsageError(Exception):
    """A bad argument: `main` prints the message as one line and exits with status 2."""


@dataclass
class Progress:
    """How far a command has got: what the line ending a SIGINT/SIGTERM stop reports."""

    total: int = 0
    unit: str = "images"
    done: int = 0

    def counted(self, items: Iterable[T]) -> Iterator[T]:
        """`items`, each counted as done once the next is asked for (or the loop ends)."""
        for item in items:
            yield item
            self.done += 1

    def stopped_line(self) -> str:
        return f"stopped after {self.done} of {self.total} {self.unit}; every written file is complete"


def check_all(*checks: Callable[[], object]) -> list:
    """Runs every check and returns their results; raises one UsageError naming the problems
    of all that failed, so that a user sees them together."""
    from .checkpoints import CheckpointError

    results, problems = [], []
    for check in checks:
        try:
            results.append(check())
        except (UsageError, ValueError, CheckpointError) as error:
            problems.append(str(error))
            results.append(None)
    if problems:
        raise UsageError("; ".join(problems))
    return results


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (with a pointer to --help), not usage plus error."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type for counts and sizes: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def collect_images(paths: list[str]) -> list[Path]:
    """Files as given plus the image files inside given folders (sorted, not recursive), each
    file once. Raises UsageError naming every path that does not exist."""
    missing = [name for name in paths if not Path(name).exists()]
    if missing:
        raise UsageError("not found: " + ", ".join(missing))
    found: dict[Path, Path] = {}
    for name in paths:
        path = Path(name)
        for file in image_files(path) if path.is_dir() else [path]:
            found.setdefault(file.resolve(), file)
    if not found:
        raise UsageError("no images found in: " + " ".join(paths))
    return list(found.values())


def output_names(images: list[Path]) -> list[str]:
    """One distinct output name (without suffix) per input, compared case-insensitively.

    An input's name is its stem; inputs whose stems clash (photo.jpg and photo.png, or
    a/photo.jpg and b/photo.jpg) are named by their path from the clashing files' common
    folder, "/" written as "_", suffix kept: photo.jpg, photo.png, a_photo.jpg. A name that
    still clashes (an input named photo.jpg.png beside those) gets -2, -3, ...
    """
    resolved = [path.resolve() for path in images]
    names = [path.stem for path in resolved]
    by_stem: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        by_stem.setdefault(name.casefold(), []).append(index)
    for clash in (group for group in by_stem.values() if len(group) > 1):
        common = Path(os.path.commonpath([resolved[index].parent for index in clash]))
        for index in clash:
            names[index] = "_".join(resolved[index].relative_to(common).parts)
    taken: set[str] = set()
    for index, name in enumerate(names):
        unique, number = name, 1
        while unique.casefold() in taken:
            number += 1
            unique = f"{name}-{number}"
        taken.add(unique.casefold())
        names[index] = unique
    return names


def check_output(out: Path) -> None:
    """Raises UsageError when --out is a file or its layer folders could not be created or
    written; creates nothing."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    for folder in (out / layer for layer in LAYER_FOLDERS):
        existing = next(path for path in (folder, *folder.parents) if path.exists())
        if not existing.is_dir():
            raise UsageError(f"--out {out}: cannot create {folder} ({existing} is a file)")
        if not os.access(existing, os.W_OK):
            raise UsageError(f"--out {out}: {existing} is not writable")


def prepare_output(out: Path) -> None:
    """Creates the layer folders under --out before any work, so a bad --out fails at once, and
    removes what killed runs left half-written there."""
    for folder in (out / layer for layer in LAYER_FOLDERS):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"--out {out}: cannot create {folder} ({error.strerror or error})") from None
        if not os.access(folder, os.W_OK):
            raise UsageError(f"--out {out}: {folder} is not writable")
        remove_leftovers(folder)




def add_weight_options(parser: argparse.ArgumentParser, default_dtype: str | None = "float32") -> None:
    """--model/--memory/--depth/--hub-repo/--device/--dtype/--native-scale/--short-side, shared by the
    CLI and app.py."""
    from .network.precision import CLI_DTYPES

    parser.add_argument("--model", help="DMDNet model file (model_latest.pt)")
    parser.add_argument("--memory", help="memory bank file (memory_banks_latest.pt)")
    parser.add_argument("--depth", help="MiDaS depth file (dpt_next_vit_large_384.pt)")
    parser.add_argument("--hub-repo", help="Hugging Face Hub repository to fetch missing files from")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--dtype", default=default_dtype, choices=CLI_DTYPES,
                        help="bfloat16/float16 keep the scan state, DAScan sort keys, MECM gates and memory "
                             "reads in float32 (fast on CUDA; slower than float32 on most CPUs)"
                             + ("" if default_dtype else " (default: bfloat16 on CUDA, else float32)"))
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--native-scale", action="store_true",
                       help="run photos at full size even where the weights were trained on smaller ones")
    scale.add_argument("--short-side", type=positive_int, metavar="PX",
                       help="run photos with a longer short side scaled down to PX (default: the scale the "
                            "weights record, from choose-scale or training)")


def _separate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import load_pipeline
    from .checkpoints import CheckpointError
    from .devices import resolve_device
    from .images import InvalidImageError, frame_count, save_png
    from .pipeline import find_weights
    from .training.distributed import Ranks

    out = Path(args.out)
    images, device, *_ = check_all(lambda: collect_images(args.paths), lambda: resolve_device(args.device),
                                   lambda: check_output(out),
                                   lambda: find_weights(args.model, args.memory, args.depth, args.hub_repo))
    names = output_names(images)
    args.progress.total = len(images)
    prepare_output(out)
    try:
        pipe = load_pipeline(args.model, args.memory, args.depth, device=device,
                             dtype=args.dtype, hub_repo=args.hub_repo, max_pixels=args.max_pixels,
                             native_scale=args.native_scale, short_side=args.short_side)
    except CheckpointError as error:
        raise UsageError(str(error)) from None
    ranks = Ranks.current(pipe.device)
    share = ranks.share(list(zip(images, names)))
    args.progress.total = len(share)
    written = 0
    for path, name in tqdm(share, desc=f"separating (rank 0: {len(share)} of {len(images)})"
                           if ranks.distributed else "separating", unit="image", disable=not ranks.is_main):
        try:
            result = pipe.separate(path)
            frames = frame_count(path)
        except InvalidImageError as error:
            tqdm.write(f"skipped {path}: {error}", file=sys.stderr)
            args.progress.done += 1
            continue
        try:
            with uninterrupted():  # both layers of an image, or neither; counted with them
                for layer, tensor in zip(LAYER_FOLDERS, (result.transmission, result.reflection)):
                    save_png(tensor, out / layer / f"{name}.png")
                args.progress.done += 1
        except OSError as error:
            tqdm.write(f"error: could not write {out / layer / name}.png ({error.strerror or error}); "
                       "stopped", file=sys.stderr)
            break
        written += 1
        if name != path.stem:
            tqdm.write(f"{path}: written as {name}.png (another input is also named {path.stem})")
        if frames > 1:
            tqdm.write(f"{path}: has {frames} frames; the first was separated")
    written = int(ranks.sum(written))
    if ranks.is_main:
        print(f"wrote {written} of {len(images)} images to {out}/transmission_layer and {out}/reflection_layer "
              f"({pipe.weights.label}, {ranks.describe(pipe.device)}, {pipe.dtype})")
    return 0 if written == len(images) else 1


def check_dataset(name: str) -> int:
    """The number of pairs in the dataset folder `name`; raises UsageError unless it has
    images in blended/."""
    if not (Path(name) / BLENDED).is_dir():
        raise UsageError(f"not a dataset folder (no {BLENDED}/ inside): {name}")
    try:
        return len(dataset_pairs(Path(name)))
    except ValueError as error:
        raise UsageError(str(error)) from None


def _evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import load_pipeline
    from .checkpoints import CheckpointError
    from .devices import resolve_device
    from .evaluation import evaluate_dataset, to_255, write_tables
    from .pipeline import find_weights
    from .training.distributed import Ranks

    device, _, *counts = check_all(lambda: resolve_device(args.device),
                                   lambda: find_weights(args.model, args.memory, args.depth, args.hub_repo),
                                   *(functools.partial(check_dataset, name) for name in args.datasets))
    args.progress.unit, args.progress.total = "pairs", sum(counts)
    try:
        pipe = load_pipeline(args.model, args.memory, args.depth, device=device,
                             dtype=args.dtype, hub_repo=args.hub_repo, native_scale=args.native_scale,
                             short_side=args.short_side)
    except CheckpointError as error:
        raise UsageError(str(error)) from None

    def separate(path: Path):
        result = pipe.separate(path)
        return to_255(result.transmission), to_255(result.reflection)

    ranks = Ranks.current(pipe.device)
    folders = list(map(Path, args.datasets))
    if ranks.distributed:
        args.progress.total = sum(len(ranks.share(dataset_pairs(folder))) for folder in folders)
    rows, skipped, without_truth = [], [], []
    for folder in folders:
        scores = evaluate_dataset(folder, separate, lambda pairs: tqdm(
            args.progress.counted(pairs), total=len(pairs), desc=folder.name, unit="image",
            disable=not ranks.is_main), select=ranks.share)
        rows += ranks.gather_lists(scores.rows)
        skipped += ranks.gather_lists(scores.skipped)
        without_truth += ranks.gather_lists(scores.without_truth)
    if not ranks.is_main:
        return 0
    if without_truth:
        print("not scored (no transmission_layer/ image): "
              + ", ".join(f"{pair['dataset']}/{pair['image']}" for pair in without_truth), file=sys.stderr)
    problems = [f"skipped {pair['dataset']}/{pair['image']}: {pair['reason']}" for pair in skipped]
    problems += [f"{folder}: no pair could be scored" for folder in folders
                 if not any(row["dataset"] == folder.name for row in rows)]
    for problem in problems:
        print(problem, file=sys.stderr)
    if rows:
        remove_leftovers(args.out)
        markdown = write_tables(rows, Path(args.out), skipped + without_truth)
        scale = (f"photos at a short side of at most {pipe.max_short_side} px" if pipe.max_short_side
                 else f"photos at full size up to {pipe.max_pixels / 1e6:.1f} MP")
        print(f"weights: {pipe.weights.label} ({ranks.describe(pipe.device)}, {pipe.dtype}; {scale})\n\n{markdown}")
        print(f"per-image scores and summary written to {args.out}/ (the pairs not scored in skipped.csv)")
    if problems:
        print(f"error: {len(problems)} problems, listed above" + ("" if rows else f"; no tables written to {args.out}/"),
              file=sys.stderr)
    return 1 if problems else 0


def mix_probabilities(weights: list[float]) -> tuple[float, ...]:
    """`--mix` weights -> probabilities summing to 1."""
    total = sum(weights)
    if min(weights) < 0 or total <= 0:
        raise UsageError("--mix needs non-negative weights with a positive sum")
    return tuple(w / total for w in weights)


def check_fraction(value: float, option: str = "--real-fraction") -> None:
    if not 0 <= value <= 1:
        raise UsageError(f"{option} must lie in [0, 1]")


def check_ema_decay(value: float) -> None:
    if not 0 <= value < 1:
        raise UsageError("--ema-decay must lie in [0, 1) (0: no average)")


def synthesis_settings(args: argparse.Namespace) -> SynthesisSettings:
    """The `--synthesis` preset with the parts that the other synthesis options set replaced."""
    from .training.synthesis import SYNTHESIS_PRESETS

    changes = {"strength": args.strength, "transmission_gain": args.transmission_gain,
               "blur_sigma": args.reflection_blur, "real_reflection_share": args.real_reflections,
               "no_reflection_share": args.no_reflection, "scene_light_share": args.scene_lights,
               "model_probabilities": args.mix and mix_probabilities(args.mix)}
    for value, option in ((args.real_reflections, "--real-reflections"), (args.no_reflection, "--no-reflection"),
                          (args.scene_lights, "--scene-lights")):
        if value is not None:
            check_fraction(value, option)
    return replace(SYNTHESIS_PRESETS[args.synthesis],
                   **{name: tuple(value) if isinstance(value, list) else value
                      for name, value in changes.items() if value is not None})


def _train(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError
    from .devices import resolve_device
    from .training.losses import LossWeights
    from .training.run_folder import RunFolderError
    from .training.trainer import Trainer, TrainSettings, check_fine_semantic

    real_l1_t, real_l1_r, real_gradient = args.real_loss
    loss = LossWeights(real_l1_t=real_l1_t, real_l1_r=real_l1_r, real_gradient=real_gradient,
                       perceptual=args.perceptual, real_perceptual=args.real_perceptual,
                       real_matched=args.real_matching == "gain-offset",
                       matched=args.synthetic_matching == "gain-offset", absolute_l1_t=args.absolute_l1)

    def check_vgg() -> None:
        if loss.uses_perceptual(bool(args.real) and args.real_fraction > 0) and not Path(args.vgg).is_file():
            raise UsageError(f"--vgg {args.vgg}: VGG19 file not found (needed by the perceptual term; "
                             "--perceptual 0 --real-perceptual 0 trains without it)")

    synthesis, *_ = check_all(lambda: synthesis_settings(args), lambda: resolve_device(args.device),
                              lambda: check_fraction(args.real_fraction), check_vgg,
                              lambda: check_ema_decay(args.ema_decay),
                              lambda: check_fine_semantic(args.imagenet_prior, args.fine_semantic))

    settings = TrainSettings(
        out=Path(args.out), data=[Path(p) for p in args.data],
        validation=Path(args.validation) if args.validation else None, preset=args.preset,
        depth=Path(args.depth) if args.depth else None, init=Path(args.init) if args.init else None,
        patch=args.patch, batch=args.batch,
        synthesis=synthesis,
        real=[Path(p) for p in args.real], real_fraction=args.real_fraction,
        loss=loss, imagenet_prior=args.imagenet_prior, fine_semantic=args.fine_semantic, vgg=Path(args.vgg),
        perceptual_dtype=args.perceptual_dtype,
        steps=args.steps, lr=args.lr, ema_decay=args.ema_decay, minutes=args.minutes, seed=args.seed, device=args.device,
        threads=args.threads, validate_every=args.validate_every, save_every=args.validate_every,
        validation_short_side=args.validation_short_side)
    try:
        trainer = Trainer(settings)
    except (CheckpointError, RunFolderError) as error:
        raise UsageError(str(error)) from None
    args.progress.unit, args.progress.total = "steps", settings.steps
    try:
        trainer.run()
    except RunFolderError as error:
        raise UsageError(str(error)) from None
    finally:
        args.progress.done = trainer.step
        trainer.close()
    if trainer.ranks.is_main:
        print(f"checkpoints in {settings.out}")
    return 0


def refuse_run_folder(out: Path) -> None:
    """Raises UsageError when --out is a training run's folder: new weights there would not
    match its optimiser state, and the run would resume with them."""
    from .training.run_folder import RUN_STATE_NAME
    from .weights import TRAINING_STATE_NAME

    held = [name for name in (TRAINING_STATE_NAME, RUN_STATE_NAME) if (out / name).exists()]
    if held:
        raise UsageError(f"--out {out} is a training run's folder (it holds {' and '.join(held)}); writing weights "
                         "there would leave the run to resume with them: give another --out")


def _average(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError
    from .training.averaging import average_checkpoints
    from .weights import MEMORY_NAME, MODEL_NAME

    runs, out = [Path(run) for run in args.runs], Path(args.out)
    refuse_run_folder(out)
    try:
        average_checkpoints([run / MODEL_NAME for run in runs], [run / MEMORY_NAME for run in runs],
                            out / MODEL_NAME, out / MEMORY_NAME)
    except CheckpointError as error:
        raise UsageError(str(error)) from None
    print(f"average of {len(runs)} runs written to {out}/")
    return 0


def _fit_files(args: argparse.Namespace, fit: Callable[[Path, Path, list[Path], Path], T]) -> T:
    """Runs `fit(model, memory, real folders, out)` for `calibrate` and `choose-scale`: the files and
    folders checked to exist first, the output folder checked not to be a run folder, and the fit's
    `CheckpointError`/`ValueError` reported as one line."""
    from .checkpoints import CheckpointError
    from .weights import MEMORY_NAME

    model = Path(args.model)
    memory = Path(args.memory) if args.memory else model.with_name(MEMORY_NAME)
    missing = [str(path) for path in (model, memory, *map(Path, args.real)) if not path.exists()]
    if missing:
        raise UsageError("not found: " + ", ".join(missing))
    refuse_run_folder(Path(args.out))
    try:
        return fit(model, memory, [Path(p) for p in args.real], Path(args.out))
    except (CheckpointError, ValueError) as error:
        raise UsageError(str(error)) from None


def _calibrate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .training.calibration import calibrate_files

    result = _fit_files(args, lambda *files: calibrate_files(
        *files, args.crops, progress=lambda pieces: tqdm(pieces, desc="fitting the gain", unit="image")))
    print(f"validation T-PSNR: identity {result.validation_identity:.2f} dB, "
          f"gain 1 {result.validation_before:.2f} dB")
    for ridge, score in result.validation_psnr.items():
        print(f"  ridge {ridge:g}: {score:.2f} dB" + ("  <- kept" if ridge == result.ridge else ""))
    print(f"gain fitted on {result.samples} images; files written to {args.out}/")
    return 0


def _choose_scale(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .training.inference_scale import choose_scale_files
    from .training.validation import invariant_gain, psnr_gain

    choice = _fit_files(args, lambda *files: choose_scale_files(
        *files, args.short_sides, progress=lambda sides: tqdm(sides, desc="scoring scales", unit="scale")))
    print(f"validation ({len(choice.validation_pairs)} pairs), gain over the input: invariant PSNR / PSNR")
    for side, scores in choice.scores.items():
        gains = f"{invariant_gain(scores):+.2f} / {psnr_gain(scores):+.2f} dB"
        print(f"  short side {side:4d} px: {gains}" + ("  <- kept" if side == choice.short_side else ""))
    print(f"files written to {args.out}/ (photos run at a short side of at most {choice.short_side} px)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .pipeline import DEFAULT_MAX_PIXELS
    from .training.losses import LossWeights
    from .training.perceptual import PERCEPTUAL_DTYPES
    from .training.synthesis import SYNTHESIS_PRESETS
    from .training.trainer import DEFAULT_DATA, DEFAULT_VALIDATION, PRESETS, TrainSettings
    from .weights import IMAGENET_PACKAGE, VGG_FILE

    parser = OneLineParser(prog="dmdnet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    separate = commands.add_parser("separate", help="split photos into transmission and reflection PNGs")
    separate.add_argument("paths", nargs="+", help="image files and/or folders of images")
    separate.add_argument("--out", required=True,
                          help="output folder: OUT/transmission_layer/NAME.png and OUT/reflection_layer/NAME.png")
    separate.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                          help="larger photos run downscaled and come back at full size "
                               f"(default {DEFAULT_MAX_PIXELS:,})")
    add_weight_options(separate)
    separate.set_defaults(run=_separate)

    evaluate = commands.add_parser("evaluate", help="PSNR/SSIM against ground truth, model and identity")
    evaluate.add_argument("datasets", nargs="*", default=list(BENCHMARK_SETS),
                          help="folders with blended/, transmission_layer/ and optionally reflection_layer/ "
                               "(default: the benchmark, " + ", ".join(BENCHMARK_SETS) + ")")
    evaluate.add_argument("--out", default="results/evaluation", help="folder for the CSV and Markdown tables")
    add_weight_options(evaluate)
    evaluate.set_defaults(run=_evaluate)

    train = commands.add_parser("train", help="train on synthetic pairs (resumes from --out)")
    train.add_argument("--out", required=True, help="checkpoint folder (model_latest.pt, memory_banks_latest.pt)")
    train.add_argument("--data", nargs="+", default=[str(path) for path in DEFAULT_DATA],
                       help="folders of natural photos to synthesise pairs from")
    train.add_argument("--validation", default=str(DEFAULT_VALIDATION),
                       help="folder of photos for fixed synthetic validation pairs")
    train.add_argument("--real", nargs="*", default=[],
                       help="folders of real pairs (blended/, transmission_layer/), e.g. "
                            "../shared/data/real_train/zhang_real82; dmdnet.training.real_pairs.VALIDATION_PAIRS "
                            "are held out to score checkpoints (best/ keeps the best)")
    train.add_argument("--real-fraction", type=float, default=TrainSettings.real_fraction,
                       help="share of each batch drawn from the real pairs")
    train.add_argument("--real-loss", type=float, nargs=3, metavar=("L1_T", "L1_R", "GRADIENT"),
                       default=(LossWeights.real_l1_t, LossWeights.real_l1_r, LossWeights.real_gradient),
                       help="weights of the T L1, R L1 (against clip(I - T)) and T gradient losses "
                            "on real pairs")
    train.add_argument("--real-matching", choices=["gain-offset", "none"], default="gain-offset",
                       help="score real pairs' T after mapping it onto the ground truth by its per-channel "
                            "least-squares gain and offset, so that they teach structure, not the capture's "
                            "brightness and colour (default), or as it is")
    train.add_argument("--synthetic-matching", choices=["gain-offset", "none"], default="none",
                       help="score synthetic pairs' T after the same gain/offset match, so that their layer "
                            "losses teach the reflection's structure (with --absolute-l1 for the photometry)")
    train.add_argument("--absolute-l1", type=float, default=LossWeights.absolute_l1_t,
                       help="weight of an L1 on the unmatched T of synthetic pairs, which teaches the absolute "
                            "brightness and colour when --synthetic-matching matches them away")
    train.add_argument("--perceptual", type=float, default=LossWeights.perceptual,
                       help="weight of the VGG19 perceptual term on synthetic pairs")
    train.add_argument("--real-perceptual", type=float, default=LossWeights.real_perceptual,
                       help="weight of the VGG19 perceptual term on real pairs")
    train.add_argument("--vgg", default=str(VGG_FILE),
                       help="VGG19 weights up to relu3_1, for the perceptual term")
    train.add_argument("--perceptual-dtype", choices=PERCEPTUAL_DTYPES, default=TrainSettings.perceptual_dtype,
                       help="the perceptual term's convolutions in float32 or under bfloat16 autocast (1.75x "
                            "faster on CPUs with AVX-512 BF16; gradients a few percent off float32's)")
    train.add_argument("--imagenet-prior", action="store_true",
                       help="feed DMDNet-Lite frozen ImageNet EfficientNet-Lite0 features and learn its "
                            f"proximity map on them (needs the {IMAGENET_PACKAGE} package)")
    train.add_argument("--fine-semantic", action="store_true",
                       help="with --imagenet-prior, feed its finest (stride 4) features to DMDNet-Lite's levels 1 "
                            "and 2 too, which the depth-semantic branch does not reach (hypercolumns)")
    train.add_argument("--preset", choices=list(PRESETS), default=TrainSettings.preset)
    train.add_argument("--depth", help="MiDaS file, for the released preset")
    train.add_argument("--init", help="start a new run from this model file (memory_banks_latest.pt beside "
                                      "it); tensors whose names and shapes match are copied")
    train.add_argument("--patch", type=int, default=TrainSettings.patch, help="training crop size (multiple of 32)")
    train.add_argument("--batch", type=int, default=TrainSettings.batch)
    train.add_argument("--synthesis", choices=list(SYNTHESIS_PRESETS), default="structured",
                       help="how synthetic pairs are made (dmdnet/training/synthesis.py): structured (half "
                            "of them real reflections of the --real training pairs over natural photos, when "
                            "--real is given) or veiled (the earlier five models); the options below change "
                            "one part of it")
    train.add_argument("--strength", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="range of the synthetic reflections' strength b")
    train.add_argument("--transmission-gain", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="range of the glass's attenuation a of the scene (screen blend and ghosting)")
    train.add_argument("--reflection-blur", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="range of the Gaussian blur's sigma on the reflection")
    train.add_argument("--mix", type=float, nargs=5,
                       metavar=("SCREEN", "ADDITIVE", "GHOSTING", "HIGHLIGHTS", "SHARP"),
                       help="relative frequencies of the image-formation models (normalised to sum to 1)")
    train.add_argument("--real-reflections", type=float, metavar="SHARE",
                       help="share of the synthetic pairs made of real reflections over natural photos")
    train.add_argument("--no-reflection", type=float, metavar="SHARE",
                       help="share of the synthetic pairs with no reflection (input = T, R = 0): scenes to "
                            "leave alone")
    train.add_argument("--scene-lights", type=float, metavar="SHARE",
                       help="share of the synthetic pairs whose scene gets a few small lamps, kept in T: bright "
                            "blobs that are not reflections")
    train.add_argument("--steps", type=int, default=TrainSettings.steps, help="total steps (the schedule's length)")
    train.add_argument("--lr", type=float, default=TrainSettings.lr)
    train.add_argument("--validation-short-side", type=positive_int, metavar="PX",
                       help="run the real validation pairs at this short side and record it in the model files "
                            "as the scale photos run at (default: 2 x --patch, the largest trained)")
    train.add_argument("--ema-decay", type=float, default=TrainSettings.ema_decay, metavar="DECAY",
                       help="validate, and keep in best/, an exponential moving average of the weights with this "
                            "decay (e.g. 0.999; 0: the weights of the step)")
    train.add_argument("--minutes", type=float, help="stop (and save) after this many minutes")
    train.add_argument("--validate-every", type=int, default=TrainSettings.validate_every)
    train.add_argument("--seed", type=int, default=TrainSettings.seed)
    train.add_argument("--device")
    train.add_argument("--threads", type=int, help="torch CPU threads")
    train.set_defaults(run=_train)

    average = commands.add_parser("average", help="average the weights of runs fine-tuned from one start")
    average.add_argument("runs", nargs="+", help="run folders (model_latest.pt, memory_banks_latest.pt)")
    average.add_argument("--out", required=True, help="folder for the averaged files")
    average.set_defaults(run=_average)

    calibrate = commands.add_parser(
        "calibrate", help="fit DMDNet-Lite's global gain on real training pairs (after train)")
    calibrate.add_argument("--model", required=True, help="DMDNet-Lite model file (model_latest.pt)")
    calibrate.add_argument("--memory", help="memory bank file (default: memory_banks_latest.pt beside --model)")
    calibrate.add_argument("--real", nargs="+", default=["../shared/data/real_train/zhang_real82"],
                           help="folders of real pairs; dmdnet.training.real_pairs.VALIDATION_PAIRS are held out "
                                "and choose the ridge strength")
    calibrate.add_argument("--crops", type=int, default=3, help="random crops per pair added to the fit")
    calibrate.add_argument("--out", required=True, help="folder for the calibrated files")
    calibrate.set_defaults(run=_calibrate)

    choose_scale = commands.add_parser(
        "choose-scale", help="choose the short side photos run at on the validation pairs (after train)")
    choose_scale.add_argument("--model", required=True, help="DMDNet-Lite model file (model_latest.pt)")
    choose_scale.add_argument("--memory", help="memory bank file (default: memory_banks_latest.pt beside --model)")
    choose_scale.add_argument("--real", nargs="+", default=["../shared/data/real_train/zhang_real82"],
                              help="folders holding dmdnet.training.real_pairs.VALIDATION_PAIRS, which score the scales")
    choose_scale.add_argument("--short-sides", nargs="+", type=positive_int, metavar="PX",
                              help="short sides to try (default: 0.75x to 2x the training crop)")
    choose_scale.add_argument("--out", required=True, help="folder for the files with the chosen scale")
    choose_scale.set_defaults(run=_choose_scale)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns its exit status: 0 done, 1 some inputs skipped, 2 a bad
    argument, 128 + the signal's number when SIGINT (130) or SIGTERM (143) stopped it."""
    from .devices import DeviceError
    from .training.distributed import LaunchError, launched_by_torchrun, process_group

    args = build_parser().parse_args(argv)
    args.progress = Progress()
    # One process: each command checks --device itself, together with its other arguments.
    device = getattr(args, "device", None) if launched_by_torchrun() else None
    try:
        with stop_on_signals(), process_group(device) as ranks:
            if ranks.distributed:
                args.device = str(ranks.device)
            try:
                return args.run(args)
            except Stopped as stop:
                exit_code = stop.exit_code
            # Printed once the stopped command's frames are gone: its progress bars have closed.
            if ranks.is_main:
                print(args.progress.stopped_line(), file=sys.stderr)
            return exit_code
    except (UsageError, LaunchError, DeviceError, WriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
