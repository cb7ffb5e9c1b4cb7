"""The folder layout of paired sets, shared by evaluation and training: `blended/` (the photos),
`transmission_layer/` and optionally `reflection_layer/`, matched by file stem."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .images import image_files

BLENDED, TRANSMISSION, REFLECTION = "blended", "transmission_layer", "reflection_layer"
LAYER_FOLDERS = (TRANSMISSION, REFLECTION)
"""The layer folders, T first: also where `separate` writes its outputs."""
BENCHMARK_SETS = tuple(f"../shared/data/{name}" for name in (
    "real/sir2_solid", "real/sir2_wild", "real/locationaware_sirr", "synthetic/ceilnet_table2"))
"""What `evaluate` scores by default: SIR^2 Solid and Wild (the field's real benchmark), the
real Location-aware SIRR test pairs and CEILNet's synthetic test set."""


@dataclass
class PairFiles:
    name: str
    blended: Path
    transmission: Path | None
    reflection: Path | None


def dataset_pairs(folder: Path) -> list[PairFiles]:
    """Pairs of a dataset folder, matched by file stem; missing ground truth is None."""
    def by_stem(sub: str) -> dict[str, Path]:
        path = folder / sub
        if not path.is_dir():
            return {}
        return {p.stem: p for p in image_files(path)}
    blended = by_stem(BLENDED)
    if not blended:
        raise ValueError(f"{folder} has no {BLENDED}/ images")
    transmission, reflection = by_stem(TRANSMISSION), by_stem(REFLECTION)
    return [PairFiles(stem, path, transmission.get(stem), reflection.get(stem))
            for stem, path in sorted(blended.items())]
