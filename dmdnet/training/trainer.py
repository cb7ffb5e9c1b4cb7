"""Training DMDNet (spec section 9) on synthetic and real pairs, resumable, in the released file formats.

`python -m dmdnet train --out checkpoints/lite` trains DMDNet-Lite with its own
proximity estimator; `--preset released --depth dpt_next_vit_large_384.pt` trains
the authors' configuration with MiDaS frozen, as they did. `--real DIR` mixes real pairs
into every batch and holds `dmdnet.training.real_pairs.VALIDATION_PAIRS` out of training: the
checkpoint that scores best on them (`selection_key`: photometry-invariant gain first) is kept
in `best/`. `--imagenet-prior` feeds DMDNet-Lite frozen ImageNet features
(`dmdnet.network.imagenet_prior`).

Under `torchrun` (`dmdnet.training.distributed`) every process trains a DistributedDataParallel copy on
its own batches (`batch` each, its own random stream), rank 0 validates, logs and writes the
files, and the memory banks take the same update on every rank: the one the batches of all
ranks together give. The L1 and gradient losses are per-sample means, so their averaged
gradient is that of the concatenated batch; the balance, alignment and triplet terms are
batch statistics and are taken over each process's own batch. A run resumes with any number
of processes (`steps` counts optimiser steps, each on `batch` x processes pairs).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from ..checkpoints import (
    load_dmdnet_weights,
    load_memory_banks,
    load_midas_weights,
    read_checkpoint,
    save_dmdnet_checkpoint,
    save_files,
)
from ..files import Stopped, uninterrupted
from ..network.config import DMDNetConfig
from ..network.depth import MidasDPT
from ..network.model import DMDNet
from ..weights import MEMORY_NAME, MODEL_NAME, TRAINING_STATE_NAME, VGG_FILE, lite_depth_model
from .distributed import Ranks
from .losses import LossWeights, TrainingObserver, separation_loss
from .memory import evolve_memory, evolve_memory_across_ranks
from .perceptual import VGGFeatures
from .real_pairs import VALIDATION_PAIRS, RealPairSampler, real_pairs, split_validation, validation_images
from .real_reflections import real_reflections
from .synthesis import SYNTHESIS_PRESETS, PairSampler, SynthesisSettings, list_images, short_side_range, validation_pairs
from .validation import selection_key, validate, validate_real
from .warm_start import warm_start

PRESETS = {"lite": DMDNetConfig.lite, "released": DMDNetConfig.released}
NATURAL_PHOTOS = Path("../shared/data/natural")
DEFAULT_DATA = tuple(NATURAL_PHOTOS / name for name in ("bsds500/train", "bsds500/val", "sun_hays80", "urban100",
                                                          "imagenet1000"))
"""Photos to synthesise training pairs from: every natural/ folder but the validation one."""
DEFAULT_VALIDATION = NATURAL_PHOTOS / "bsds500/test"
BEST_FOLDER = "best"


@dataclass
class TrainSettings:
    out: Path
    data: list[Path] = field(default_factory=list)
    validation: Path | None = None
    preset: str = "lite"
    depth: Path | None = None
    init: Path | None = None
    """A model file (memory banks beside it) to start from when `out` holds no run yet."""
    patch: int = 128
    batch: int = 4
    synthesis: SynthesisSettings = SYNTHESIS_PRESETS["structured"]
    """How training pairs are synthesised (validation pairs keep the "veiled" models). Its real
    reflections come from the training pairs of `real` (none without them)."""
    real: list[Path] = field(default_factory=list)
    """Folders of real pairs (`blended/`, `transmission_layer/`)."""
    real_fraction: float = 0.5
    """Share of each batch drawn from the real pairs (when there are any)."""
    real_validation: tuple[str, ...] = VALIDATION_PAIRS
    """Real pairs (`<folder>/<stem>`) never trained on; they score checkpoints."""
    loss: LossWeights = field(default_factory=LossWeights)
    imagenet_prior: bool = False
    """Feed DMDNet-Lite frozen ImageNet EfficientNet-Lite0 features (`DMDNetConfig.imagenet_prior`)."""
    vgg: Path = VGG_FILE
    """VGG19 weights for the perceptual term (read only when a perceptual weight is not zero)."""
    steps: int = 20000
    lr: float = 4e-4
    min_lr: float = 2e-5
    warmup: int = 200
    grad_clip: float = 1.0
    validate_every: int = 250
    save_every: int = 250
    validation_count: int = 12
    validation_size: int = 192
    minutes: float | None = None
    seed: int = 0
    device: str | None = None
    threads: int | None = None


def build_models(preset: str, depth: Path | None, imagenet_prior: bool = False
                 ) -> tuple[DMDNet, nn.Module, bool]:
    """(network, depth model, whether the depth model trains)."""
    config = PRESETS[preset]()
    if imagenet_prior:
        if preset != "lite":
            raise ValueError("the ImageNet prior replaces DMDNet-Lite's proximity estimator: use --preset lite")
        config = config.with_imagenet_prior()
    model = DMDNet(config)
    if preset == "lite":
        return model, lite_depth_model(config), True
    if depth is None:
        raise ValueError("the released preset trains with MiDaS frozen: pass --depth dpt_next_vit_large_384.pt")
    midas = MidasDPT()
    load_midas_weights(midas, depth)
    return model, midas.requires_grad_(False), False


class SeparationNetwork(nn.Module):
    """The depth model and DMDNet as one module, the unit DistributedDataParallel wraps."""

    def __init__(self, model: DMDNet, depth_model: nn.Module):
        super().__init__()
        self.model = model
        self.depth_model = depth_model

    def forward(self, image: torch.Tensor, observer: TrainingObserver | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(image, self.depth_model(image), observer)


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to `min_lr`."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = min(1.0, (step - settings.warmup) / max(1, settings.steps - settings.warmup))
    return settings.min_lr + 0.5 * (settings.lr - settings.min_lr) * (1 + math.cos(math.pi * progress))


class Trainer:
    """Owns the models, optimiser and data of one training run in `settings.out`, on this
    process's rank of `ranks` (all ranks of a distributed run construct one)."""

    def __init__(self, settings: TrainSettings, ranks: Ranks | None = None):
        self.settings = settings
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.ranks = ranks or Ranks.current(self.device)
        torch.manual_seed(settings.seed)  # the same initial weights for the same seed, on every rank
        self.model, self.depth_model, self.trains_depth = build_models(settings.preset, settings.depth,
                                                                       settings.imagenet_prior)
        params = [p for p in self.model.parameters() if p.requires_grad] + (
            [p for p in self.depth_model.parameters() if p.requires_grad] if self.trains_depth else [])
        self.optimizer = torch.optim.Adam(params, lr=settings.lr)
        self.step = 0
        self.best: dict | None = None
        """The best real-validation score so far and its step (kept in `best/`)."""
        self.out = Path(settings.out)
        if (self.out / MODEL_NAME).is_file():
            self._resume()
        elif settings.init:
            self._warm_start(Path(settings.init))
        self.model.to(self.device)
        self.depth_model.to(self.device)
        self._check_same_start()
        self.network = self.ranks.data_parallel(SeparationNetwork(self.model, self.depth_model))
        self._train_mode()
        train_pairs, held_out = split_validation(real_pairs(settings.real), settings.real_validation)
        self.sampler = PairSampler(list_images(settings.data), settings.patch,
                                   self.ranks.seed(settings.seed + self.step), settings.synthesis,
                                   real_reflections(train_pairs) if settings.synthesis.real_reflection_share else ())
        self.validation = (validation_pairs(list_images([settings.validation]), settings.validation_size,
                                            settings.validation_count)
                           if settings.validation else None)
        self.real_sampler = (RealPairSampler(train_pairs, settings.patch,
                                             self.ranks.seed(settings.seed + self.step + 1))
                             if settings.real and settings.real_fraction > 0 else None)
        self.real_validation = validation_images(held_out)
        self.vgg = (VGGFeatures(settings.vgg).to(self.device)
                    if settings.loss.uses_perceptual(self.real_sampler is not None) else None)

    def _check_same_start(self) -> None:
        """Every rank must have resumed from the same step (one `out` that all of them read)."""
        steps = self.ranks.all_gather_objects(self.step)
        if len(set(steps)) > 1:
            raise RuntimeError(f"the ranks resumed at different steps {steps}: every process must read the "
                               f"same {self.out} (on several machines, a folder they all share)")

    def _train_mode(self) -> None:
        self.model.train()
        self.depth_model.train(self.trains_depth)

    def _resume(self) -> None:
        extra = load_dmdnet_weights(self.model, self.out / MODEL_NAME)
        load_memory_banks(self.model, self.out / MEMORY_NAME)
        if "proximity_estimator" in extra:
            self.depth_model.load_state_dict(extra["proximity_estimator"])
        state = read_checkpoint(self.out / TRAINING_STATE_NAME, "training state")
        self.optimizer.load_state_dict(state["optimizer"])
        self.best = state.get("best")
        self.step = int(extra.get("iterations", 0))

    def _warm_start(self, model_path: Path) -> None:
        skipped = warm_start(self.model, self.depth_model if self.trains_depth else None,
                             model_path, model_path.with_name(MEMORY_NAME))
        if self.ranks.is_main:
            tqdm.write(f"started from {model_path}; {len(skipped)} tensors start fresh or are dropped"
                       + "".join(f"\n  {name}" for name in skipped))

    def save_weights(self, folder: Path) -> None:
        """The model and memory-bank files (released formats) of the current weights."""
        extra = {"epoch": 0, "iterations": self.step, "config": self.model.config.to_dict(),
                 "trained_short_side": short_side_range(self.settings.patch)[1]}
        if self.trains_depth:
            extra["proximity_estimator"] = {k: v.detach().cpu() for k, v in self.depth_model.state_dict().items()}
        folder.mkdir(parents=True, exist_ok=True)
        save_dmdnet_checkpoint(self.model, folder / MODEL_NAME, folder / MEMORY_NAME, **extra)

    def save(self) -> None:
        """The weights and the optimiser state: each file complete, all of one step."""
        with uninterrupted():
            self.save_weights(self.out)
            save_files({self.out / TRAINING_STATE_NAME: {
                "optimizer": self.optimizer.state_dict(), "best": self.best,
                "settings": json.loads(json.dumps(asdict(self.settings), default=str))}})

    def sample(self) -> tuple[torch.Tensor, ...]:
        """A batch (input, T, R, real mask): `real_fraction` of it real pairs, the rest synthetic."""
        size = self.settings.batch
        real = round(size * self.settings.real_fraction) if self.real_sampler else 0
        parts = ([self.sampler.sample(size - real)] if real < size else []) + (
            [self.real_sampler.sample(real)] if real else [])
        mask = torch.arange(size) >= size - real
        return (*(torch.cat(tensors) for tensors in zip(*parts)), mask)

    def train_step(self, batch: tuple[torch.Tensor, ...] | None = None) -> dict[str, float]:
        """One optimiser step on `batch` (input, T, R[, real mask]), or on a fresh batch."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, self.settings)
        batch = batch if batch is not None else self.sample()
        inputs, t_target, r_target = (x.to(self.device) for x in batch[:3])
        real = batch[3] if len(batch) > 3 else None
        observer = TrainingObserver()
        t, r = self.network(inputs, observer)
        loss, parts = separation_loss(t, r, t_target, r_target, observer, self.settings.loss, real, self.vgg)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                 self.settings.grad_clip)
        self.optimizer.step()
        if self.ranks.distributed:
            evolve_memory_across_ranks(observer.reads, list(self.model.memory.buffers()), len(inputs),
                                                self.ranks.all_gather)
        else:
            evolve_memory(observer.reads)
        self.step += 1
        return {"loss": float(loss.detach()), **parts}

    def validate(self) -> dict:
        """Scores on the synthetic and real validation pairs; keeps the best real score's weights."""
        self.model.eval(), self.depth_model.eval()
        scores = {}
        if self.validation is not None:
            scores["validation"] = validate(self.model, self.depth_model, self.validation, self.device)
        if self.real_validation:
            scores["real_validation"] = validate_real(self.model, self.depth_model, self.real_validation,
                                                      self.device, short_side_range(self.settings.patch)[1])
        self._train_mode()
        key = selection_key(scores)
        best = () if self.best is None else (self.best.get("invariant_gain", -math.inf), self.best["psnr_t"])
        if key is not None and key > best:
            self.best = {"step": self.step, "invariant_gain": key[0], "psnr_t": key[1]}
            self.save_weights(self.out / BEST_FOLDER)
        return scores

    def log(self, record: dict) -> None:
        """Appends one record to log.jsonl (rank 0 only)."""
        if self.ranks.is_main:
            with open(self.out / "log.jsonl", "a") as handle:
                handle.write(json.dumps({"step": self.step, "world_size": self.ranks.world_size, **record}) + "\n")

    def time_left(self, deadline: float) -> bool:
        """Before `deadline` (monotonic seconds) on every rank, so that all ranks stop together."""
        return deadline == math.inf or not self.ranks.any(time.monotonic() >= deadline)

    def run(self) -> None:
        """Trains to `steps` (or `minutes`), saving every `save_every` steps and at the end.

        A SIGINT/SIGTERM (`dmdnet.files.Stopped`) waits for the step under way, then the
        checkpoint of that step is saved and the `Stopped` goes on."""
        try:
            self._run()
        except Stopped:
            if self.ranks.is_main:
                self.save()
            raise

    def _run(self) -> None:
        main = self.ranks.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.log({"event": "start", "real_training": self.real_sampler.names if self.real_sampler else [],
                  "real_reflections": [reflection.name for reflection in self.sampler.reflections],
                  "real_validation": [name for name, *_ in self.real_validation]})
        deadline = time.monotonic() + 60 * self.settings.minutes if self.settings.minutes else math.inf
        bar = tqdm(total=self.settings.steps, initial=self.step, desc="training", unit="step", disable=not main)
        while self.step < self.settings.steps and self.time_left(deadline):
            with uninterrupted():
                parts = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.4f}", l1_t=f"{parts['l1_t']:.4f}")
            if self.step % self.settings.validate_every == 0 and (self.validation is not None
                                                                  or self.real_validation):
                parts = self.ranks.mean_of(parts)
                if main:
                    scores = self.validate()
                    self.log({"train": parts, **scores})
                    bar.write(f"step {self.step}: " + "; ".join(
                        f"{kind} T-PSNR {s['psnr_t']:.2f} dB (identity {s['psnr_identity']:.2f}), "
                        f"invariant {s['psnr_inv_t']:.2f} dB (identity {s['psnr_inv_identity']:.2f})"
                        for kind, s in scores.items()))
            if self.step % self.settings.save_every == 0 and main:
                self.save()
        bar.close()
        if main:
            self.save()
