"""Training DMDNet (spec section 9) on synthetic pairs, resumable, in the released file formats.

`python -m dmdnet train --out checkpoints/lite` trains DMDNet-Lite with its own
proximity estimator; `--preset released --depth dpt_next_vit_large_384.pt` trains
the authors' configuration with MiDaS frozen, as they did.
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

from .checkpoints import (load_dmdnet_weights, load_memory_banks, load_midas_weights, read_checkpoint,
                          save_dmdnet_checkpoint, warm_start)
from .config import DMDNetConfig
from .depth import MidasDPT
from .losses import LossWeights, TrainingObserver, separation_loss
from .model import DMDNet
from .proximity import ProximityEstimator
from .evaluation import batch_psnr
from .synthesis import PairSampler, SynthesisSettings, list_images, short_side_range, validation_pairs

PRESETS = {"lite": DMDNetConfig.lite, "released": DMDNetConfig.released}
MODEL_NAME, MEMORY_NAME, STATE_NAME = "model_latest.pt", "memory_banks_latest.pt", "training_state.pt"


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
    synthesis: SynthesisSettings = field(default_factory=SynthesisSettings)
    """How training pairs are synthesised (validation pairs keep the defaults)."""
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


def build_models(preset: str, depth: Path | None) -> tuple[DMDNet, nn.Module, bool]:
    """(network, depth model, whether the depth model trains)."""
    config = PRESETS[preset]()
    model = DMDNet(config)
    if preset == "lite":
        return model, ProximityEstimator(config.depth_feature_channels), True
    if depth is None:
        raise ValueError("the released preset trains with MiDaS frozen: pass --depth dpt_next_vit_large_384.pt")
    midas = MidasDPT()
    load_midas_weights(midas, depth)
    return model, midas.requires_grad_(False), False


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to `min_lr`."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = min(1.0, (step - settings.warmup) / max(1, settings.steps - settings.warmup))
    return settings.min_lr + 0.5 * (settings.lr - settings.min_lr) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def validate(model: DMDNet, depth_model: nn.Module, pairs: tuple[torch.Tensor, ...], device) -> dict:
    """Transmission PSNR of the model and of the identity baseline on fixed synthetic pairs
    (the caller switches the models to eval mode and back)."""
    inputs, t_targets, _ = pairs
    outputs = []
    for image in inputs.split(4):
        image = image.to(device)
        outputs.append(model(image, depth_model(image))[0].cpu())
    prediction = torch.cat(outputs)
    return {"psnr_t": batch_psnr(prediction, t_targets), "psnr_identity": batch_psnr(inputs, t_targets)}


class Trainer:
    """Owns the models, optimiser and data of one training run in `settings.out`."""

    def __init__(self, settings: TrainSettings):
        self.settings = settings
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.depth_model, self.trains_depth = build_models(settings.preset, settings.depth)
        params = list(self.model.parameters()) + (
            list(self.depth_model.parameters()) if self.trains_depth else [])
        self.optimizer = torch.optim.Adam(params, lr=settings.lr)
        self.step = 0
        self.out = Path(settings.out)
        if (self.out / MODEL_NAME).is_file():
            self._resume()
        elif settings.init:
            self._warm_start(Path(settings.init))
        self.model.to(self.device)
        self.depth_model.to(self.device)
        self._train_mode()
        self.sampler = PairSampler(list_images(settings.data), settings.patch, settings.seed + self.step,
                                   settings.synthesis)
        self.validation = (validation_pairs(list_images([settings.validation]), settings.validation_size,
                                            settings.validation_count)
                           if settings.validation else None)

    def _train_mode(self) -> None:
        self.model.train()
        self.depth_model.train(self.trains_depth)

    def _resume(self) -> None:
        extra = load_dmdnet_weights(self.model, self.out / MODEL_NAME)
        load_memory_banks(self.model, self.out / MEMORY_NAME)
        if "proximity_estimator" in extra:
            self.depth_model.load_state_dict(extra["proximity_estimator"])
        state = read_checkpoint(self.out / STATE_NAME, "training state")
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(extra.get("iterations", 0))

    def _warm_start(self, model_path: Path) -> None:
        skipped = warm_start(self.model, self.depth_model if self.trains_depth else None,
                             model_path, model_path.with_name(MEMORY_NAME))
        tqdm.write(f"started from {model_path}; {len(skipped)} tensors start fresh or are dropped"
                   + "".join(f"\n  {name}" for name in skipped))

    def save(self) -> None:
        extra = {"epoch": 0, "iterations": self.step, "config": self.model.config.to_dict(),
                 "trained_short_side": short_side_range(self.settings.patch)[1]}
        if self.trains_depth:
            extra["proximity_estimator"] = {k: v.detach().cpu() for k, v in self.depth_model.state_dict().items()}
        save_dmdnet_checkpoint(self.model, self.out / MODEL_NAME, self.out / MEMORY_NAME, **extra)
        torch.save({"optimizer": self.optimizer.state_dict(), "settings": json.loads(
            json.dumps(asdict(self.settings), default=str))}, self.out / STATE_NAME)

    def train_step(self, batch: tuple[torch.Tensor, ...] | None = None) -> dict[str, float]:
        """One optimiser step on `batch` (input, T, R), or on a fresh synthetic batch."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, self.settings)
        batch = batch if batch is not None else self.sampler.sample(self.settings.batch)
        inputs, t_target, r_target = (x.to(self.device) for x in batch)
        observer = TrainingObserver()
        t, r = self.model(inputs, self.depth_model(inputs), observer)
        loss, parts = separation_loss(t, r, t_target, r_target, observer, LossWeights())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                 self.settings.grad_clip)
        self.optimizer.step()
        observer.evolve_memory()
        self.step += 1
        return {"loss": float(loss.detach()), **parts}

    def log(self, record: dict) -> None:
        with open(self.out / "log.jsonl", "a") as handle:
            handle.write(json.dumps({"step": self.step, **record}) + "\n")

    def run(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + 60 * self.settings.minutes if self.settings.minutes else math.inf
        bar = tqdm(total=self.settings.steps, initial=self.step, desc="training", unit="step")
        while self.step < self.settings.steps and time.monotonic() < deadline:
            parts = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.4f}", l1_t=f"{parts['l1_t']:.4f}")
            if self.validation is not None and self.step % self.settings.validate_every == 0:
                self.model.eval(), self.depth_model.eval()
                scores = validate(self.model, self.depth_model, self.validation, self.device)
                self._train_mode()
                self.log({"train": parts, "validation": scores})
                bar.write(f"step {self.step}: validation T-PSNR {scores['psnr_t']:.2f} dB "
                          f"(identity {scores['psnr_identity']:.2f} dB)")
            if self.step % self.settings.save_every == 0:
                self.save()
        bar.close()
        self.save()
