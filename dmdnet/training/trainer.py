"""Training DMDNet (spec section 9) on synthetic and real pairs, resumable, in the released file formats.

`python -m dmdnet train --out checkpoints/lite` trains DMDNet-Lite with its own
proximity estimator; `--preset released --depth dpt_next_vit_large_384.pt` trains
the authors' configuration with MiDaS frozen, as they did. `--real DIR` mixes real pairs
into every batch and holds `dmdnet.training.real_pairs.VALIDATION_PAIRS` out of training: the
checkpoint that scores best on them (`selection_key`: photometry-invariant gain first) is kept
in `best/`. `--imagenet-prior` feeds DMDNet-Lite frozen ImageNet features
(`dmdnet.network.imagenet_prior`). With `--ema-decay` validation scores, and `best/` keeps, an
exponential moving average of the weights (`dmdnet.training.averaging.ExponentialAverage`); the
weights of the step are scored too and logged beside it (`STEP_WEIGHTS`), so one run compares both.

Under `torchrun` (`dmdnet.training.distributed`) every process trains a DistributedDataParallel copy on
its own batches (`batch` each, its own random stream), rank 0 validates, logs and writes the
files, and the memory banks take the same update on every rank: the one the batches of all
ranks together give. The L1 and gradient losses are per-sample means, so their averaged
gradient is that of the concatenated batch; the balance, alignment and triplet terms are
batch statistics and are taken over each process's own batch. A run resumes with any number
of processes (`steps` counts optimiser steps, each on `batch` x processes pairs).

Saves and resumes go through `dmdnet.training.run_folder`: one process holds `out`, and every
save makes the model, memory-bank and optimiser files and `best/` current together, so that a
run killed at any instant resumes from one consistent step. A resume keeps the run's recipe
and refuses model changes (`dmdnet.training.resumed_settings`), and says so in one line. A
validation's `log.jsonl` record is written after the save of its step; a resume that finds
the record of its step missing (the process stopped between the two) validates that step again.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import torch
import torch.nn as nn
from tqdm import tqdm

from ..checkpoints import (
    CheckpointError,
    checkpoint_bytes,
    dmdnet_checkpoint,
    load_dmdnet_weights,
    load_memory_banks,
    load_midas_weights,
    read_checkpoint,
    trained_steps,
)
from ..files import Stopped, uninterrupted
from ..network.config import DMDNetConfig
from ..network.depth import MidasDPT
from ..network.model import DMDNet
from ..network.precision import parse_dtype
from ..weights import MEMORY_NAME, MODEL_NAME, TRAINING_STATE_NAME, VGG_FILE, lite_depth_model
from .averaging import ExponentialAverage
from .distributed import Ranks
from .losses import LossWeights, TrainingObserver, separation_loss
from .memory import evolve_memory, evolve_memory_across_ranks
from .perceptual import VGGFeatures
from .real_pairs import VALIDATION_PAIRS, RealPairSampler, real_pairs, split_validation, validation_images
from .real_reflections import real_reflections
from .resumed_settings import resumed_settings, saved_form
from .run_folder import (
    RUN_STATE_NAME,
    Recovery,
    RunFolderError,
    check_free_space,
    commit,
    lock_run_folder,
    logged_validation,
    read_run_state,
    recover,
    trim_log,
)
from .synthesis import SYNTHESIS_PRESETS, PairSampler, SynthesisSettings, list_images, short_side_range, validation_pairs
from .validation import selection_key, validate, validate_real, validate_reflection_free
from .warm_start import warm_start

PRESETS = {"lite": DMDNetConfig.lite, "released": DMDNetConfig.released}
NATURAL_PHOTOS = Path("../shared/data/natural")
DEFAULT_DATA = tuple(NATURAL_PHOTOS / name for name in ("bsds500/train", "bsds500/val", "sun_hays80", "urban100",
                                                          "imagenet1000"))
"""Photos to synthesise training pairs from: every natural/ folder but the validation one."""
DEFAULT_VALIDATION = NATURAL_PHOTOS / "bsds500/test"
BEST_FOLDER = "best"
LOG_NAME = "log.jsonl"
STEP_WEIGHTS = "step_weights"
"""Log key of the scores of the step's own weights, when validation scores their average."""
REFLECTION_FREE = "reflection_free"
"""Log key of `validate_reflection_free` on the synthetic validation photos, as they are."""
WEIGHT_AVERAGE = "weight_average"
"""`training_state.pt` key of the exponential moving average of the weights."""


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
    fine_semantic: bool = False
    """With `imagenet_prior`, feed its finest features to levels 1 and 2 too (`DMDNetConfig.fine_semantic`)."""
    vgg: Path = VGG_FILE
    """VGG19 weights for the perceptual term (read only when a perceptual weight is not zero)."""
    perceptual_dtype: str = "float32"
    """The perceptual term's convolutions in "float32" or "bfloat16" (autocast; opt-in, see
    `dmdnet.training.perceptual`)."""
    steps: int = 20000
    lr: float = 4e-4
    min_lr: float = 2e-5
    warmup: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    """Decay of the exponential moving average of the weights that validation scores and `best/`
    keeps (0: none; validation scores the weights of the step)."""
    validate_every: int = 250
    save_every: int = 250
    validation_count: int = 12
    validation_size: int = 192
    validation_short_side: int | None = None
    """The short side the real validation pairs run at, which the saved model files then record as
    the scale their photos run at ("inference_short_side"); None: the largest trained short side
    (2 x `patch`), recorded as "trained_short_side" only. Weights may remove more where a photo is
    about one crop (docs/training.md, "The scale photos run at"): checkpoints are best judged at
    the scale they will run at."""
    minutes: float | None = None
    seed: int = 0
    device: str | None = None
    threads: int | None = None


def check_fine_semantic(imagenet_prior: bool, fine_semantic: bool) -> None:
    """Raises ValueError when `fine_semantic` is asked for without the features it feeds on."""
    if fine_semantic and not imagenet_prior:
        raise ValueError("--fine-semantic feeds the ImageNet prior's features to levels 1 and 2: add --imagenet-prior")


def build_models(preset: str, depth: Path | None, imagenet_prior: bool = False, fine_semantic: bool = False
                 ) -> tuple[DMDNet, nn.Module, bool]:
    """(network, depth model, whether the depth model trains)."""
    config = PRESETS[preset]()
    check_fine_semantic(imagenet_prior, fine_semantic)
    if imagenet_prior:
        if preset != "lite":
            raise ValueError("the ImageNet prior replaces DMDNet-Lite's proximity estimator: use --preset lite")
        config = config.with_imagenet_prior(fine_semantic)
    model = DMDNet(config)
    if preset == "lite":
        return model, lite_depth_model(config), True
    if depth is None:
        raise ValueError("the released preset trains with MiDaS frozen: pass --depth dpt_next_vit_large_384.pt")
    midas = MidasDPT()
    load_midas_weights(midas, depth)
    return model, midas.requires_grad_(False), False


class SeparationNetwork(nn.Module):
    """The depth model and DMDNet as one module, the unit DistributedDataParallel wraps.

    With `channels_last` (training on a CPU) its weights and inputs are laid out channels-last: the
    depthwise convolutions' forward and backward took 2-4x less time in that layout on this project's
    CPU, and the training pass 8-11% less (docs/benchmarks.md, "Training speed")."""

    def __init__(self, model: DMDNet, depth_model: nn.Module, channels_last: bool = False):
        super().__init__()
        self.model = model
        self.depth_model = depth_model
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def forward(self, image: torch.Tensor, observer: TrainingObserver | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        image = image.contiguous(memory_format=self.memory_format)
        t, r = self.model(image, self.depth_model(image), observer)
        return t.contiguous(), r.contiguous()  # the losses' own convolutions (VGG) ran slower channels-last


def score_line(scores: Mapping[str, dict]) -> str:
    """One line of the validation scores `Trainer.validate` returns (their averaged weights', if any)."""
    def line(kind: str, s: dict) -> str:
        if kind == REFLECTION_FREE:
            return f"{kind} photos, T against the input: PSNR {s['psnr_t']:.2f} dB, invariant {s['psnr_inv_t']:.2f} dB"
        return (f"{kind} T-PSNR {s['psnr_t']:.2f} dB (identity {s['psnr_identity']:.2f}), "
                f"invariant {s['psnr_inv_t']:.2f} dB (identity {s['psnr_inv_identity']:.2f})")
    return "; ".join(line(kind, s) for kind, s in scores.items() if kind != STEP_WEIGHTS)


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
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.ranks = ranks or Ranks.current(self.device)
        self.out = Path(settings.out)
        self.recovery = Recovery()
        self.run_lock = self._take_run_folder()
        saved = self._saved_state()
        settings, kept = resumed_settings(settings, saved.get("settings"), self.out) if saved else (settings, [])
        self.settings = settings
        torch.manual_seed(settings.seed)  # the same initial weights for the same seed, on every rank
        self.model, self.depth_model, self.trains_depth = build_models(settings.preset, settings.depth,
                                                                       settings.imagenet_prior, settings.fine_semantic)
        self.optimizer = torch.optim.Adam(list(self.trained_parameters().values()), lr=settings.lr)
        self.step = 0
        self.best: dict | None = None
        """The best real-validation score so far and its step (kept in `best/`)."""
        self.new_best: dict[str, bytes] = {}
        """The `best/` files of a validation, until the save of its step writes them."""
        self.saved_step: int | None = None
        self.steps_before = 0
        """Steps the `--init` weights had been trained, in their own runs (0 from scratch)."""
        if saved:
            self._resume(saved)
        elif settings.init:
            self._warm_start(Path(settings.init))
        self._check_room()
        if self.ranks.is_main:
            self._announce(saved, kept)
        self.model.to(self.device)
        self.depth_model.to(self.device)
        self.average = (ExponentialAverage(self.trained_parameters(), settings.ema_decay,
                                           saved.get(WEIGHT_AVERAGE) if saved else None)
                        if settings.ema_decay else None)
        self._check_same_start()
        self.network = self.ranks.data_parallel(SeparationNetwork(self.model, self.depth_model,
                                                                  channels_last=self.device.type == "cpu"))
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
        self.vgg = (VGGFeatures(settings.vgg, parse_dtype(settings.perceptual_dtype)).to(self.device)
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

    def _raise_on_every_rank(self, problem: str | None) -> None:
        """Raises RunFolderError on every rank when rank 0 found `problem`, so that none waits for it."""
        problem = self.ranks.all_gather_objects(problem)[0]
        if problem:
            raise RunFolderError(problem)

    def _take_run_folder(self) -> IO | None:
        """Rank 0 locks `out` and brings it to its recorded step (`run_folder.recover`); the
        open lock file, which holds the lock until `close` or the end of the process."""
        lock, problem = None, None
        if self.ranks.is_main:
            try:
                lock = lock_run_folder(self.out)
                self.recovery = recover(self.out)
            except RunFolderError as error:
                problem = str(error)
                if lock:
                    lock.close()
        self._raise_on_every_rank(problem)
        return lock

    def close(self) -> None:
        """Lets another process train in `out`."""
        if self.run_lock:
            self.run_lock.close()
            self.run_lock = None

    def trained_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters the optimiser trains, by name, in the optimiser's order."""
        trained = {f"network.{name}": p for name, p in self.model.named_parameters() if p.requires_grad}
        if self.trains_depth:
            trained.update({f"proximity_estimator.{name}": p for name, p in self.depth_model.named_parameters()
                            if p.requires_grad})
        return trained

    def _saved_state(self) -> Mapping | None:
        """The run's `training_state.pt`, or None when `out` holds no run yet."""
        path = self.out / TRAINING_STATE_NAME
        if not ((self.out / MODEL_NAME).is_file() or (self.out / RUN_STATE_NAME).is_file()):
            return None
        if not path.is_file():
            raise RunFolderError(f"{self.out} holds {MODEL_NAME} but not {TRAINING_STATE_NAME}, the optimiser "
                                 f"state to resume with (a save from before {RUN_STATE_NAME} existed was cut short); "
                                 f"start a new --out with --init {self.out / MODEL_NAME} to go on from its weights")
        state = read_checkpoint(path, "training state")
        if not isinstance(state, Mapping) or not isinstance(state.get("optimizer"), Mapping):
            raise CheckpointError(f"training state file {path} holds no optimiser state")
        return state

    def _resume(self, state: Mapping) -> None:
        extra = load_dmdnet_weights(self.model, self.out / MODEL_NAME)
        load_memory_banks(self.model, self.out / MEMORY_NAME)
        if "proximity_estimator" in extra:
            self.depth_model.load_state_dict(extra["proximity_estimator"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"training state file {self.out / TRAINING_STATE_NAME} does not fit this run's "
                                  f"optimiser ({(str(error).splitlines() or [''])[0]})") from None
        self.best = state.get("best")
        self.step = self.saved_step = int(extra.get("iterations", 0))
        self.steps_before = int(extra.get("steps_before", 0))
        self._check_one_step(state)

    def _check_one_step(self, state: Mapping) -> None:
        """Raises RunFolderError unless the model, the optimiser state and the run record are of
        one step, and `best/` of the best record's (a folder from before `run_state.json` can
        hold a save cut short between its files)."""
        optimiser_steps = [int(entry["step"]) for entry in state["optimizer"].get("state", {}).values()
                           if "step" in entry]
        steps = {MODEL_NAME: self.step, "the optimiser state": max(optimiser_steps, default=self.step),
                 TRAINING_STATE_NAME: state.get("step", self.step),
                 RUN_STATE_NAME: (read_run_state(self.out) or {}).get("step", self.step)}
        best_file, best = self.out / BEST_FOLDER / MODEL_NAME, {}
        if self.best and best_file.is_file():
            best = {"the best record": self.best["step"],
                    f"{BEST_FOLDER}/{MODEL_NAME}": read_checkpoint(best_file, "DMDNet model").get("iterations")}
        if len(set(steps.values())) > 1 or len(set(best.values())) > 1:
            raise RunFolderError(f"{self.out} holds files of different steps ("
                                 + ", ".join(f"{name} {step}" for name, step in {**steps, **best}.items())
                                 + f"): a save from before {RUN_STATE_NAME} existed was cut short; start a new --out "
                                 f"with --init {self.out / MODEL_NAME} to go on from its weights")

    def _check_room(self) -> None:
        """Before any step: room in `out` for a save (rank 0 checks, every rank stops)."""
        problem = None
        if self.ranks.is_main:
            weights = sum(t.numel() * t.element_size() for module in (self.model, self.depth_model)
                          for t in module.state_dict().values())
            trained = sum(p.numel() * p.element_size() for group in self.optimizer.param_groups
                          for p in group["params"])
            try:
                check_free_space(self.out, 2 * weights + 2 * trained)
            except RunFolderError as error:
                problem = str(error)
        self._raise_on_every_rank(problem)

    def _announce(self, saved: Mapping | None, kept: list[str]) -> None:
        """Says what the recovery did and which step and settings the run resumes with."""
        for note in self.recovery.notes:
            tqdm.write(f"{self.out}: {note}")
        if saved is None:
            return
        trim_log(self.out / LOG_NAME, self.step)
        source = (f"the step {RUN_STATE_NAME} records" if self.recovery.step is not None else
                  f"{MODEL_NAME}'s step; the folder is from before {RUN_STATE_NAME}, so its files were not hashed")
        settings = ("kept from the run, not as given: " + ", ".join(kept) if kept else
                    "the run's settings are kept" if saved.get("settings") else "saved without its settings")
        tqdm.write(f"resuming {self.out} at step {self.step} of {self.settings.steps} ({source}); {settings}")

    def _warm_start(self, model_path: Path) -> None:
        skipped = warm_start(self.model, self.depth_model if self.trains_depth else None,
                             model_path, model_path.with_name(MEMORY_NAME))
        self.steps_before = trained_steps(read_checkpoint(model_path, "DMDNet model"))
        if self.ranks.is_main:
            tqdm.write(f"started from {model_path}; {len(skipped)} tensors start fresh or are dropped"
                       + "".join(f"\n  {name}" for name in skipped))

    def weight_files(self, folder: str = "") -> dict[str, bytes]:
        """The model and memory-bank files (released formats) of the current weights, named
        relative to `out` (in `folder`), as `run_folder.commit` takes them."""
        extra = {"epoch": 0, "iterations": self.step, "steps_before": self.steps_before,
                 "config": self.model.config.to_dict(), "trained_short_side": short_side_range(self.settings.patch)[1]}
        if self.settings.validation_short_side:
            extra["inference_short_side"] = self.settings.validation_short_side
        if self.trains_depth:
            extra["proximity_estimator"] = {k: v.detach().cpu() for k, v in self.depth_model.state_dict().items()}
        names = [f"{folder}/{name}" if folder else name for name in (MODEL_NAME, MEMORY_NAME)]
        return dict(zip(names, map(checkpoint_bytes, dmdnet_checkpoint(self.model, **extra))))

    def save(self) -> None:
        """Makes the weights, the optimiser state and a new `best/` the run's step, together."""
        with uninterrupted():
            state = {"step": self.step, "optimizer": self.optimizer.state_dict(), "best": self.best,
                     "settings": saved_form(self.settings)}
            if self.average:
                state[WEIGHT_AVERAGE] = self.average.state_dict()
            commit(self.out, self.step, {**self.weight_files(), TRAINING_STATE_NAME: checkpoint_bytes(state),
                                         **self.new_best})
            self.new_best, self.saved_step = {}, self.step

    def sample(self) -> tuple[torch.Tensor, ...]:
        """A batch (input, T, R, real mask): `real_fraction` of it real pairs, the rest synthetic."""
        size = self.settings.batch
        real = round(size * self.settings.real_fraction) if self.real_sampler else 0
        parts = ([self.sampler.sample(size - real)] if real < size else []) + (
            [self.real_sampler.sample(real)] if real else [])
        mask = torch.arange(size) >= size - real
        return (*(torch.cat(tensors) for tensors in zip(*parts)), mask)

    def batch_loss(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, float], TrainingObserver]:
        """The training loss of `batch` (input, T, R[, real mask]), its named parts, and the observer
        that recorded the forward's memory reads."""
        inputs, t_target, r_target = (x.to(self.device) for x in batch[:3])
        real = batch[3] if len(batch) > 3 else None
        observer = TrainingObserver()
        t, r = self.network(inputs, observer)
        loss, parts = separation_loss(t, r, t_target, r_target, observer, self.settings.loss, real, self.vgg)
        return loss, parts, observer

    def train_step(self, batch: tuple[torch.Tensor, ...] | None = None) -> dict[str, float]:
        """One optimiser step on `batch` (input, T, R[, real mask]), or on a fresh batch."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, self.settings)
        batch = batch if batch is not None else self.sample()
        loss, parts, observer = self.batch_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                 self.settings.grad_clip)
        self.optimizer.step()
        if self.average:
            self.average.update()
        if self.ranks.distributed:
            evolve_memory_across_ranks(observer.reads, list(self.model.memory.buffers()), len(batch[0]),
                                                self.ranks.all_gather)
        else:
            evolve_memory(observer.reads)
        self.step += 1
        return {"loss": float(loss.detach()), **parts}

    def _scores(self) -> dict:
        """The current weights' scores on the synthetic and real validation pairs."""
        self.model.eval(), self.depth_model.eval()
        scores = {}
        if self.validation is not None:
            scores["validation"] = validate(self.model, self.depth_model, self.validation, self.device)
            scores[REFLECTION_FREE] = validate_reflection_free(self.model, self.depth_model, self.validation[1],
                                                               self.device)
        if self.real_validation:
            scores["real_validation"] = validate_real(
                self.model, self.depth_model, self.real_validation, self.device,
                self.settings.validation_short_side or short_side_range(self.settings.patch)[1])
        self._train_mode()
        return scores

    def validate(self) -> dict:
        """Scores on the synthetic and real validation pairs of the weights that `best/` keeps (their
        average, with the step's own under `STEP_WEIGHTS`); keeps the best real score's weights."""
        step_scores = self._scores() if self.average else None
        with self.average.in_place() if self.average else contextlib.nullcontext():
            scores = self._scores()
            key = selection_key(scores)
            best = () if self.best is None else (self.best.get("invariant_gain", -math.inf), self.best["psnr_t"])
            if key is not None and key > best:
                self.best = {"step": self.step, "invariant_gain": key[0], "psnr_t": key[1]}
                self.new_best = self.weight_files(BEST_FOLDER)
        return {**scores, STEP_WEIGHTS: step_scores} if step_scores else scores

    def validate_and_save(self, record: dict) -> dict:
        """Validates, saves the step (with a new `best/`), then logs `record` with the scores:
        in that order, so that a resume never finds the record of a step it redoes."""
        scores = self.validate()
        self.save()
        self.log({**record, **scores})
        return scores

    def log(self, record: dict) -> None:
        """Appends one record to log.jsonl (rank 0 only)."""
        if self.ranks.is_main:
            try:
                with open(self.out / LOG_NAME, "a") as handle:
                    handle.write(json.dumps({"step": self.step, "world_size": self.ranks.world_size, **record}) + "\n")
            except OSError as error:
                raise RunFolderError(f"cannot write {self.out / LOG_NAME} ({(error.strerror or str(error)).lower()})"
                                     ) from None

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
            if self.ranks.is_main and self.saved_step != self.step:
                self.save()
            raise

    def _validates(self) -> bool:
        return self.step % self.settings.validate_every == 0 and (self.validation is not None
                                                                  or bool(self.real_validation))

    def _run(self) -> None:
        main = self.ranks.is_main
        self.log({"event": "start", "real_training": self.real_sampler.names if self.real_sampler else [],
                  "real_reflections": [reflection.name for reflection in self.sampler.reflections],
                  "real_validation": [name for name, *_ in self.real_validation]})
        if main and self.step and self._validates() and not logged_validation(self.out / LOG_NAME, self.step):
            self.validate_and_save({"revalidated_on_resume": True})
        deadline = time.monotonic() + 60 * self.settings.minutes if self.settings.minutes else math.inf
        bar = tqdm(total=self.settings.steps, initial=self.step, desc="training", unit="step", disable=not main)
        crops_per_s = None  # training throughput of every rank together, smoothed over about ten steps
        while self.step < self.settings.steps and self.time_left(deadline):
            started = time.perf_counter()
            with uninterrupted():
                parts = self.train_step()
            current = self.settings.batch * self.ranks.world_size / (time.perf_counter() - started)
            crops_per_s = current if crops_per_s is None else 0.9 * crops_per_s + 0.1 * current
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.4f}", l1_t=f"{parts['l1_t']:.4f}", crops_s=f"{crops_per_s:.2f}")
            if self._validates():
                parts = self.ranks.mean_of(parts)
                if main:
                    scores = self.validate_and_save({"train": parts})
                    bar.write(f"step {self.step}: " + score_line(scores) + (
                        f"; the step's own weights: {score_line(scores[STEP_WEIGHTS])}" if STEP_WEIGHTS in scores
                        else ""))
            elif self.step % self.settings.save_every == 0 and main:
                self.save()
        bar.close()
        if main and self.saved_step != self.step:
            self.save()
