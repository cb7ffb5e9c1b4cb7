"""End-to-end separation: image in, transmission and reflection layers out.

Pads to the network's multiple, runs depth and DMDNet, crops back. Photos larger
than `max_pixels`, or with a short side above `max_short_side`, run at a reduced size
and come back at full resolution: the reflection is upsampled and the transmission is
the full-resolution input minus the upsampled removed residual (input - T), so the
scene keeps its fine detail. `max_short_side` is the scale chosen for the weights, or the
one they were trained at, where their checkpoint records it (`load_pipeline`): a
reflection spans more pixels in a larger photo than the network ever saw.
Other images up to `max_pixels` (default about 2.1 MP, e.g. 1448x1448) run natively.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoints import (
    CheckpointError,
    checkpoint_problem,
    config_from_checkpoint,
    load_dmdnet_weights,
    load_memory_banks,
    load_midas_weights,
    load_proximity_estimator,
    read_checkpoint,
    trained_steps,
)
from .devices import default_device
from .images import ImageInput, to_tensor
from .network.config import DMDNetConfig
from .network.depth import MidasDPT
from .network.diagnostics import Diagnostics, ForwardObserver
from .network.model import DMDNet
from .network.precision import cast_module, output_dtype, parse_dtype
from .weights import (
    DEFAULT_WEIGHTS,
    DEPTH_FILE,
    MEMORY_FILE,
    MEMORY_NAME,
    MODEL_FILE,
    WeightFile,
    find_weight_file,
    lite_depth_model,
)

DEFAULT_MAX_PIXELS = 2_100_000


@dataclass
class SeparationResult:
    """Raw network outputs at the input's size; clamp to [0, 1] for display."""

    transmission: torch.Tensor
    reflection: torch.Tensor
    depth: torch.Tensor
    """(1, 1, H, W) relative inverse depth from the depth model (larger = nearer)."""
    image: torch.Tensor
    """The input as the network saw it before padding, (1, 3, H, W) in [0, 1]."""
    processed_size: tuple[int, int]
    """(h, w) the network ran at; smaller than the input only for photos over `max_pixels`."""
    diagnostics: Diagnostics | None = None


@dataclass(frozen=True)
class WeightsInfo:
    """What is loaded, for display: a short label and the files behind it."""

    label: str
    files: dict[str, str] = field(default_factory=dict)


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pads right and bottom to multiples of `multiple`: by reflection (as released) where the
    image is large enough for it, else by repeating the edge (tiny images)."""
    height, width = image.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    for pad, size, spec in ((pad_w, width, (0, pad_w, 0, 0)), (pad_h, height, (0, 0, 0, pad_h))):
        if pad:
            image = F.pad(image, spec, mode="reflect" if pad < size else "replicate")
    return image


def working_size(height: int, width: int, max_pixels: int,
                 max_short_side: int | None = None) -> tuple[int, int]:
    """The size the network runs at: native up to `max_pixels` pixels and a short side of
    `max_short_side`, else scaled down keeping aspect until both hold."""
    scale = math.sqrt(max_pixels / (height * width))
    if max_short_side:
        scale = min(scale, max_short_side / min(height, width))
    if scale >= 1:
        return height, width
    return max(1, math.floor(height * scale + 1e-6)), max(1, math.floor(width * scale + 1e-6))


class Pipeline:
    """A loaded depth model and DMDNet on one device and dtype (in a half type, float32 where
    precision matters: see `dmdnet.network.precision`; results always come back in `output_dtype`)."""

    def __init__(self, model: DMDNet, depth_model: nn.Module, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, max_pixels: int = DEFAULT_MAX_PIXELS,
                 weights: WeightsInfo | None = None, max_short_side: int | None = None):
        self.device = torch.device(device)
        self.dtype = dtype
        self.output_dtype = output_dtype(dtype)
        self.max_pixels = max_pixels
        self.max_short_side = max_short_side
        self.weights = weights or WeightsInfo("unnamed weights")
        self.model = cast_module(model.to(self.device), dtype).eval()
        self.depth_model = cast_module(depth_model.to(self.device), dtype).eval()

    @property
    def pad_multiple(self) -> int:
        return self.model.config.pad_multiple

    @torch.inference_mode()
    def separate(self, image: ImageInput, diagnostics: bool = False) -> SeparationResult:
        """Separates one image. `diagnostics=True` also records depth, scans and expert maps."""
        full = to_tensor(image).to(self.device, self.output_dtype)
        height, width = full.shape[-2:]
        size = working_size(height, width, self.max_pixels, self.max_short_side)
        work = full if size == (height, width) else F.interpolate(
            full, size=size, mode="bilinear", align_corners=False, antialias=True)

        padded = pad_to_multiple(work, self.pad_multiple).to(self.dtype)
        record = Diagnostics() if diagnostics else ForwardObserver()
        features = self.depth_model(padded)
        transmission, reflection = self.model(padded, features, record)
        crop = (..., slice(0, size[0]), slice(0, size[1]))
        transmission, reflection, depth = (x[crop].to(self.output_dtype)
                                           for x in (transmission, reflection, features.depth))
        if diagnostics:
            record.depth = depth.detach().cpu()

        if size != (height, width):
            def upsample(x: torch.Tensor) -> torch.Tensor:
                return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
            gain = 1.0 if record.global_gain is None else record.global_gain.to(self.output_dtype)
            transmission = gain * full + upsample(transmission - gain * work)
            reflection, depth = upsample(reflection), upsample(depth)
        return SeparationResult(transmission, reflection, depth, full, size, record if diagnostics else None)


def _released_pipeline_parts(config: DMDNetConfig, checkpoint: object, paths: dict
                             ) -> tuple[DMDNet, nn.Module, WeightsInfo]:
    if paths[DEPTH_FILE] is None:
        raise CheckpointError(f"no {DEPTH_FILE.role} file found for {paths[MODEL_FILE]} (pass a path, "
                              f"set {DEPTH_FILE.env_var}, or place it at {DEPTH_FILE.seed_path})")
    with torch.device("meta"):
        network = DMDNet(config)
        depth_model = MidasDPT()
    network.memory.to_empty(device="cpu")
    load_dmdnet_weights(network, paths[MODEL_FILE], checkpoint)
    load_midas_weights(depth_model, paths[DEPTH_FILE])
    info = WeightsInfo("DMDNet (authors' released weights) + MiDaS DPT-NeXt-ViT-L",
                       {spec.role: str(path) for spec, path in paths.items()})
    return network, depth_model, info


def _lite_pipeline_parts(config: DMDNetConfig, checkpoint: dict, paths: dict
                         ) -> tuple[DMDNet, nn.Module, WeightsInfo]:
    network = DMDNet(config)
    estimator = lite_depth_model(config)
    load_dmdnet_weights(network, paths[MODEL_FILE], checkpoint)
    load_proximity_estimator(estimator, checkpoint, paths[MODEL_FILE])
    default = paths[MODEL_FILE] == DEFAULT_WEIGHTS[MODEL_FILE]
    depth = ("frozen ImageNet EfficientNet-Lite0 features and a learned proximity head in place of MiDaS"
             if config.imagenet_prior else "learned proximity estimator in place of MiDaS")
    steps, total = int(checkpoint.get("iterations") or 0), trained_steps(checkpoint)
    trained = f"trained {total} steps" + (f", the last {steps} a fine-tune" if total > steps else "")
    about = f"{depth}; {trained}" if steps else depth  # the step tells runs' checkpoints apart
    label = (f"DMDNet-Lite, the project's own default weights (trained on synthetic and real pairs; {about})"
             if default else f"DMDNet-Lite ({about})")
    return network, estimator, WeightsInfo(label, {spec.role: str(path) for spec, path in paths.items()
                                                   if spec is not DEPTH_FILE})


def find_weights(model: str | Path | None = None, memory: str | Path | None = None,
                 depth: str | Path | None = None, hub_repo: str | None = None) -> dict[WeightFile, Path | None]:
    """The weight files `load_pipeline` would load (the depth file None where none is needed
    or found), checked from the files alone. Without a memory bank file given, the one beside
    the model file (its pair, as `train` and `calibrate` write them) comes before the other
    sources. Raises `CheckpointError` naming every file that is missing or not a checkpoint at
    all, in one message."""
    roles = ((MODEL_FILE, model), (MEMORY_FILE, memory), (DEPTH_FILE, depth))
    paths, problems = {}, {}
    for spec, explicit in roles:
        beside_model = paths[MODEL_FILE].with_name(MEMORY_NAME) if paths.get(MODEL_FILE) else None
        if spec is MEMORY_FILE and not explicit and beside_model and beside_model.is_file():
            paths[spec] = beside_model
            continue
        try:
            paths[spec] = find_weight_file(spec, explicit, hub_repo)
        except CheckpointError as error:
            problems[spec] = str(error)
    if not problems and all(path is None for path in paths.values()):
        if not DEFAULT_WEIGHTS[MODEL_FILE].is_file():
            raise CheckpointError(
                "no weights found: give the authors' files (paths, DMDNET_MODEL/DMDNET_MEMORY/"
                f"DMDNET_DEPTH, or the {MODEL_FILE.seed_path} layout), or restore the project's "
                f"default weights at {DEFAULT_WEIGHTS[MODEL_FILE].parent} (`pip install .` does not copy "
                "them: install the repository with `pip install -e .`)")
        paths = {**DEFAULT_WEIGHTS, DEPTH_FILE: None}
    for spec, path in paths.items():
        if path is not None:
            problems[spec] = checkpoint_problem(path, spec.role)
        elif spec is not DEPTH_FILE:
            problems[spec] = (f"no {spec.role} file found (pass a path, set {spec.env_var}, "
                              f"or place it at {spec.seed_path})")
    if any(problems.values()):
        raise CheckpointError("; ".join(problems[spec] for spec, _ in roles if problems.get(spec)))
    return paths


def recorded_short_side(checkpoint: object) -> int | None:
    """The short side a model file's photos run at: the one chosen for the weights
    ("inference_short_side", `python -m dmdnet choose-scale`), else the largest they were trained
    at ("trained_short_side"); None where the file records neither."""
    recorded = checkpoint if isinstance(checkpoint, dict) else {}
    return recorded.get("inference_short_side") or recorded.get("trained_short_side")


def load_pipeline(model: str | Path | None = None, memory: str | Path | None = None,
                  depth: str | Path | None = None, device: torch.device | str | None = None,
                  dtype: torch.dtype | str = torch.float32, hub_repo: str | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS, native_scale: bool = False,
                  short_side: int | None = None) -> Pipeline:
    """Builds a ready pipeline.

    Each file is found by `dmdnet.weights.find_weight_file` (explicit path, environment
    variable, the authors' folder layout, then `hub_repo`). With none of the authors'
    files anywhere, the project's own DMDNet-Lite weights shipped in `weights/` load.
    A model file that carries its own "config" and "proximity_estimator" (DMDNet-Lite)
    needs no MiDaS file. Any problem with a file raises `CheckpointError` naming it; files that
    are missing or not checkpoints at all are reported together, in one message.
    Photos with a longer short side than `short_side`, or else than the model file's
    `recorded_short_side`, run scaled down to it; `native_scale` runs every photo at full size.
    """
    paths = find_weights(model, memory, depth, hub_repo)
    checkpoint = read_checkpoint(paths[MODEL_FILE], MODEL_FILE.role)
    config = config_from_checkpoint(checkpoint, paths[MODEL_FILE])
    build = _lite_pipeline_parts if (isinstance(checkpoint, dict) and "proximity_estimator" in checkpoint) \
        else _released_pipeline_parts
    network, depth_model, info = build(config, checkpoint, paths)
    load_memory_banks(network, paths[MEMORY_FILE])
    return Pipeline(network, depth_model, device or default_device(), parse_dtype(dtype),
                    max_pixels, info, None if native_scale else short_side or recorded_short_side(checkpoint))
