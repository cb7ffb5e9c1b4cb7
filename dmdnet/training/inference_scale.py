"""Choosing the scale photos run at, after training (`python -m dmdnet choose-scale`).

DMDNet-Lite trains on P x P crops of photos rescaled to a short side between P and 2P, and
`load_pipeline` runs larger photos scaled down to 2P (the largest short side training saw).
The scale that removes most is not always that one: the Mamba blocks scan every pixel of a
level in one sequence, and a network trained on P x P crops may do best where a whole photo
is about one crop. How much that matters depends on the weights (measured in
docs/training.md, "The scale photos run at"), so the short side is chosen per model file on
the held-out validation pairs, by the rule that ranks checkpoints (`selection_key`: the
invariant gain to 0.01 dB, then PSNR), and recorded in the file as "inference_short_side".
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..checkpoints import read_lite_checkpoint, read_memory_banks, save_files
from ..pipeline import Pipeline, load_pipeline
from ..weights import MEMORY_NAME, MODEL_NAME
from .real_pairs import real_pairs, split_validation, validation_images
from .validation import invariant_gain, pipeline_scores, psnr_gain, selection_key

CROP_MULTIPLES = (0.75, 0.875, 1.0, 1.125, 1.25, 1.5, 2.0)
"""The short sides tried, as multiples of the training crop (half the trained short side)."""


@dataclass
class ScaleChoice:
    short_side: int
    scores: dict[int, dict]
    """`pipeline_scores` on the validation pairs for each short side tried."""
    validation_pairs: list[str]


def candidate_short_sides(trained_short_side: int) -> list[int]:
    """The short sides `choose_short_side` tries for weights trained up to `trained_short_side`."""
    crop = trained_short_side / 2
    return sorted({max(8, round(multiple * crop)) for multiple in CROP_MULTIPLES})


def choose_short_side(pipeline: Pipeline, pairs: list, short_sides: Iterable[int],
                      progress: Callable[[list[int]], Iterable[int]] = iter) -> ScaleChoice:
    """Scores `pipeline` on (name, image, target) validation pairs at each short side and leaves it
    running at the best one (highest invariant gain to 0.01 dB, then PSNR)."""
    scores = {}
    for side in progress(sorted(short_sides)):
        pipeline.max_short_side = side
        scores[side] = pipeline_scores(pipeline, pairs)
    best = max(scores, key=lambda side: selection_key({"real_validation": scores[side]}))
    pipeline.max_short_side = best
    return ScaleChoice(best, scores, [name for name, *_ in pairs])


def choose_scale_files(model_path: Path, memory_path: Path, real: list[Path], out: Path,
                       short_sides: Iterable[int] | None = None, device: str = "cpu",
                       progress: Callable[[list[int]], Iterable[int]] = iter) -> ScaleChoice:
    """Chooses the short side of a DMDNet-Lite model file on the validation pairs under `real`
    (`dmdnet.training.real_pairs.VALIDATION_PAIRS`) and writes the model file, with the choice
    under "inference_short_side" and its scores under "inference_short_side_fit", and its memory
    banks, unchanged, into `out`. Without `short_sides`, `candidate_short_sides` of the trained scale."""
    checkpoint = read_lite_checkpoint(model_path)
    if short_sides is None:
        if not checkpoint.get("trained_short_side"):
            raise ValueError(f"{model_path} records no trained scale: give the short sides to try")
        short_sides = candidate_short_sides(int(checkpoint["trained_short_side"]))
    _, validation = split_validation(real_pairs(real))
    if not validation:
        raise ValueError("choosing a scale needs the held-out validation pairs under " + ", ".join(map(str, real)))
    pipeline = load_pipeline(model_path, memory_path, device=device)
    choice = choose_short_side(pipeline, validation_images(validation), short_sides, progress)
    fit = {"validation_inv_gain": {side: round(invariant_gain(s), 4) for side, s in choice.scores.items()},
           "validation_psnr_gain": {side: round(psnr_gain(s), 4)
                                    for side, s in choice.scores.items()},
           "validation_pairs": choice.validation_pairs}
    save_files({out / MODEL_NAME: {**checkpoint, "inference_short_side": choice.short_side,
                                   "inference_short_side_fit": fit},
                out / MEMORY_NAME: dict(read_memory_banks(memory_path))})
    return choice
