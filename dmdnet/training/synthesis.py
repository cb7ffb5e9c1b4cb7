"""Synthetic training pairs: a natural photo seen through glass that reflects another.

Five image-formation models are mixed, because real reflections vary and the reference's
single strong, blurred screen blend teaches a network to lift veils and leave the rest:
- screen blend (the reference's): I = T + R - T*R, T = a*T0, R = b*blur(R0);
- additive with clipping (CEILNet): I = clip(T0 + b*blur(R0));
- ghosting (thick glass): R = b*(mix of R0 and a copy shifted a few pixels in any direction),
  lightly blurred, screen blend: the double edges of real window reflections;
- highlights: I = clip(T0 + b*M*blur(R0)^g), g in [1.5, 3], M a smooth random mask. Real
  reflections are often bright things (lamps, sky, windows) over part of the glass with
  little light elsewhere, while a plain b*R0 always lays a veil over the whole frame;
- sharp: R = b*M'*R0 nearly unblurred (sigma <= 1), M' a smooth mask in [0.3, 1], added with
  clipping: a camera focused near the glass sees the reflected scene in focus, stronger over
  part of the frame.
Targets are T0 and the reflection actually present in I (I's share not explained by T0
for the additive models), so that T + R reproduces the photo.

A share of the pairs may carry no reflection at all (`SynthesisSettings.no_reflection_share`:
input and T target the same photo, R target zero), so that the network also sees scenes it
should leave alone.

A share of the photos may carry scene lights (`SynthesisSettings.scene_light_share`, `with_scene_lights`):
small saturated lamps in the transmission, kept in its target, because every bright blob the five
models make comes from the reflection, and a network trained on them alone takes a photo's own lamps
and ceiling lights away.

A sixth source, real reflections (`composite`), lays the reflection layers of real training pairs
(`dmdnet.training.real_reflections`) over natural photos dimmed and tinted by the gains of a real
glass: real reflection structure, which the five models only approximate, over unlimited scenes.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..images import image_files

MODEL_NAMES = ("screen", "additive", "ghosting", "highlights", "sharp")
REAL_REFLECTIONS = "real reflections"
"""The name of the sixth source, `composite`."""
NO_REFLECTION = "no reflection"
"""The name of the pairs without a reflection (`SynthesisSettings.no_reflection_share`)."""
GLASS_GAIN_RANGE = (0.5, 1.05)
"""Per-channel gains a real glass (and the exposure of its pair's second shot) puts on the scene."""
KERNEL_SIZES = (5, 7, 9, 11)
KERNEL_PROBABILITIES = (0.1, 0.2, 0.3, 0.4)


def list_images(folders: list[str | Path]) -> list[Path]:
    """Image files directly inside each folder, sorted."""
    return [path for folder in folders for path in image_files(folder)]


def load_images(files: list[Path]) -> list[torch.Tensor]:
    """Decoded RGB uint8 tensors (3, H, W), kept in memory for fast sampling."""
    images = []
    for path in files:
        with Image.open(path) as image:
            images.append(torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1))
    return images


def gaussian_blur(image: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (C, H, W) tensor, reflection-padded."""
    x = torch.arange(size, dtype=image.dtype) - (size - 1) / 2
    kernel = torch.exp(-x**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = image.shape[0]
    padded = F.pad(image[None], (size // 2,) * 4, mode="reflect")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(c, 1, 1, size), groups=c)
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1).expand(c, 1, size, 1), groups=c)[0]


def short_side_range(patch: int) -> tuple[int, int]:
    """Spec augmentation: the short sides photos are rescaled to before P x P crops, [P, 2P]."""
    return patch, 2 * patch


def random_patch(image: torch.Tensor, patch: int, rng: np.random.Generator) -> torch.Tensor:
    """Spec augmentation: short side to a random even size in `short_side_range`, flip, rot90,
    P x P crop."""
    h, w = image.shape[-2:]
    shortest, longest = short_side_range(patch)
    short = 2 * int(rng.integers(shortest // 2, longest // 2 + 1))
    scale = short / min(h, w)
    size = (max(patch, round(h * scale)), max(patch, round(w * scale)))
    x = F.interpolate(image[None].float() / 255, size=size, mode="bilinear",
                      align_corners=False, antialias=True)[0].clamp(0, 1)
    if rng.random() < 0.5:
        x = x.flip(-1)
    if rng.random() < 0.5:
        x = torch.rot90(x, int(rng.integers(1, 4)), dims=(-2, -1))
    top = int(rng.integers(0, x.shape[-2] - patch + 1))
    left = int(rng.integers(0, x.shape[-1] - patch + 1))
    return x[:, top:top + patch, left:left + patch].contiguous()


@dataclass(frozen=True)
class SynthesisSettings:
    strength: tuple[float, float] = (0.15, 0.8)
    """Range of b, the reflection's strength."""
    transmission_gain: tuple[float, float] = (0.8, 1.0)
    """Range of a (screen blend only)."""
    blur_sigma: tuple[float, float] = (2.0, 5.0)
    """Range of the Gaussian blur's sigma on the reflection (screen blend and additive): small
    values give the in-focus reflections of a camera focused near the glass."""
    highlight_blur_sigma: tuple[float, float] = (0.5, 3.0)
    """Range of the blur's sigma on highlight reflections (bright reflected things are often
    close to in focus)."""
    sharp_strength: tuple[float, float] = (0.1, 0.5)
    """Range of b for sharp reflections (in focus, so weaker ones already read as structure)."""
    sharp_blur_sigma: tuple[float, float] = (0.0, 1.0)
    """Range of the blur's sigma on sharp reflections (0: none)."""
    ghost_shift: tuple[int, int] = (3, 15)
    """Range of the ghost's offset in pixels (thicker glass, larger offset)."""
    model_probabilities: tuple[float, float, float, float, float] = (0.25, 0.2, 0.2, 0.1, 0.25)
    """Relative frequencies of the models, in the order of `MODEL_NAMES`."""
    real_reflection_share: float = 0.0
    """Share of the pairs made by `composite` instead (when real reflections are given)."""
    no_reflection_share: float = 0.0
    """Share of the pairs with no reflection (input = T target, R target zero). The long veiled run
    learned to take bright scene structure for reflection (docs/training.md, "Scenes taken for
    reflections"); pairs of plain photos say what a scene without one looks like."""
    scene_light_share: float = 0.0
    """Share of the pairs whose scene (T, in input and target) gets a few lamps (`with_scene_lights`)."""
    real_reflection_strength: tuple[float, float] = (0.7, 1.3)
    """Range of the factor on a real reflection layer."""
    reflection_colour_jitter: float = 0.15
    """Each channel of a real reflection is scaled by a factor in [1 - jitter, 1 + jitter]."""
    glass_gain_jitter: float = 0.05
    """Each channel's glass gain moves by up to this much."""


SYNTHESIS_PRESETS = {
    "structured": SynthesisSettings(strength=(0.3, 0.85), blur_sigma=(1.0, 4.0), sharp_strength=(0.25, 0.6),
                                    real_reflection_share=0.5),
    "veiled": SynthesisSettings(),
}
"""Named syntheses. "structured" (the default): half the pairs real reflections over natural photos,
the five models with reflections as strong and sharp as real ones (`scripts/data_report.py`: the
median crop keeps as much structure as a real pair's once photometry is matched out). "veiled": the
five models as tuned until issue 29, mostly smooth veils."""


@dataclass(frozen=True)
class RealReflection:
    """The reflection layer of one real training pair and the gains of its glass."""

    name: str
    layer: torch.Tensor
    """(3, H, W) uint8."""
    glass_gain: torch.Tensor
    """(3, 1, 1), within `GLASS_GAIN_RANGE`."""


def smooth_mask(size: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """(1, H, W) mask in [0, 1]: a few smooth blobs covering a random share of the patch."""
    cells = int(rng.integers(2, 6))
    coarse = torch.from_numpy(rng.random((1, 1, cells, cells))).float()
    field = F.interpolate(coarse, size=size, mode="bicubic", align_corners=False)[0]
    return ((field - rng.uniform(0.2, 0.6)) / 0.25).clamp(0, 1)


def with_scene_lights(photo: torch.Tensor, rng: np.random.Generator, count: tuple[int, int] = (1, 4),
                      radius: tuple[float, float] = (1.5, 6.0)) -> torch.Tensor:
    """The (3, H, W) photo with `count` small light sources screen-blended in: each a clipped core
    of `radius` pixels in a Gaussian glow two to four radii wide, white to warm, anywhere in the frame."""
    height, width = photo.shape[-2:]
    rows = torch.arange(height, dtype=torch.float32)[:, None]
    columns = torch.arange(width, dtype=torch.float32)[None, :]
    light = torch.zeros_like(photo)
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        core = rng.uniform(*radius)
        squared = (rows - rng.uniform(0, height)) ** 2 + (columns - rng.uniform(0, width)) ** 2
        glow = rng.uniform(0.3, 0.8) * torch.exp(-squared / (2 * (core * rng.uniform(2, 4)) ** 2))
        profile = ((core + 0.5 - squared.sqrt()).clamp(0, 1) + glow).clamp(0, 1)
        colour = torch.tensor([1.0, rng.uniform(0.75, 1.0), rng.uniform(0.45, 1.0)])[:, None, None]
        light = torch.maximum(light, colour * profile)
    return 1 - (1 - photo) * (1 - light)


def random_blur(image: torch.Tensor, sigma_range: tuple[float, float], rng: np.random.Generator) -> torch.Tensor:
    """Gaussian blur with the reference's random kernel size and a sigma drawn from `sigma_range`."""
    size = int(rng.choice(KERNEL_SIZES, p=KERNEL_PROBABILITIES))
    return gaussian_blur(image, size, rng.uniform(*sigma_range))


def ghosted(reflection: torch.Tensor, shift_range: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """The reflection mixed with a copy of itself shifted a few pixels in a random direction: the
    second reflection off the far side of thick glass, usually the weaker of the two."""
    shift = rng.uniform(*shift_range)
    angle = rng.uniform(0, 2 * np.pi)
    dy, dx = round(shift * np.sin(angle)), round(shift * np.cos(angle))
    mix = rng.uniform(0.5, 0.8)
    return mix * reflection + (1 - mix) * torch.roll(reflection, (dy, dx), dims=(-2, -1))


def synthesize(transmission: torch.Tensor, reflection: torch.Tensor, rng: np.random.Generator,
               settings: SynthesisSettings = SynthesisSettings(), kind: str | None = None
               ) -> tuple[torch.Tensor, ...]:
    """(T0, R0) patches -> (input, T target, R target), all (3, P, P) in [0, 1], by the model `kind`
    (one of `MODEL_NAMES`), or by one drawn with `settings.model_probabilities`."""
    kind = kind or MODEL_NAMES[rng.choice(len(MODEL_NAMES), p=settings.model_probabilities)]
    size = tuple(reflection.shape[-2:])
    if kind == "sharp":
        b = rng.uniform(*settings.sharp_strength)
        sigma = rng.uniform(*settings.sharp_blur_sigma)
        sharp = gaussian_blur(reflection, 5, sigma) if sigma > 0.3 else reflection
        r = b * (0.3 + 0.7 * smooth_mask(size, rng)) * sharp
    else:
        b = rng.uniform(*settings.strength)
        if kind == "highlights":
            glow = random_blur(reflection, settings.highlight_blur_sigma, rng).clamp(0, 1)
            r = b * smooth_mask(size, rng) * glow ** rng.uniform(1.5, 3.0)
        elif kind == "ghosting":
            r = b * gaussian_blur(ghosted(reflection, settings.ghost_shift, rng), 5, rng.uniform(0.5, 1.5))
        else:
            r = b * random_blur(reflection, settings.blur_sigma, rng)
    if kind in ("additive", "highlights", "sharp"):
        blended = (transmission + r).clamp(0, 1)
        return blended, transmission, blended - transmission
    t = rng.uniform(*settings.transmission_gain) * transmission
    return t + r - t * r, transmission, r - t * r


def composite(transmission: torch.Tensor, reflection: torch.Tensor, glass_gain: torch.Tensor,
              rng: np.random.Generator, settings: SynthesisSettings = SynthesisSettings()
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(3, P, P) natural photo, (3, P, P) crop of a real reflection layer and (3, 1, 1) glass gain ->
    (input, T target, R target): I = clip(g * T + s * c * R), g the glass gain jittered, s the
    strength, c a colour jitter per channel. T's target is the undimmed photo, as on real pairs
    (the absolute photometry is learned as there); R's is what the glass added."""
    jitter = settings.glass_gain_jitter
    gain = (glass_gain + torch.from_numpy(rng.uniform(-jitter, jitter, (3, 1, 1))).float()).clamp(
        *GLASS_GAIN_RANGE)
    colour = torch.from_numpy(rng.uniform(1 - settings.reflection_colour_jitter,
                                          1 + settings.reflection_colour_jitter, (3, 1, 1))).float()
    dimmed = gain * transmission
    blended = (dimmed + rng.uniform(*settings.real_reflection_strength) * colour * reflection).clamp(0, 1)
    return blended, transmission, (blended - dimmed).clamp_min(0)


class PairSampler:
    """Draws random synthetic batches from a pool of natural photos, and real reflection layers
    to lay over them (`settings.real_reflection_share` of the pairs, when `reflections` are given)."""

    def __init__(self, files: list[Path], patch: int, seed: int | tuple[int, ...] = 0,
                 settings: SynthesisSettings = SynthesisSettings(),
                 reflections: Sequence[RealReflection] = ()):
        if len(files) < 2:
            raise ValueError("need at least two natural images to synthesise pairs")
        self.images = load_images(files)
        self.patch = patch
        self.settings = settings
        self.reflections = list(reflections)
        self.rng = np.random.default_rng(seed)

    def sample(self, batch: int, kind: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input, T target, R target), each (batch, 3, P, P), by the source `kind` (a model of
        `MODEL_NAMES`, `REAL_REFLECTIONS` or `NO_REFLECTION`), or by sources drawn as `settings`
        mixes them."""
        if kind == REAL_REFLECTIONS and not self.reflections:
            raise ValueError("no real reflections to composite")
        triples = [self._pair(kind) for _ in range(batch)]
        return tuple(torch.stack(part) for part in zip(*triples))

    def _any_patch(self) -> torch.Tensor:
        return random_patch(self.images[int(self.rng.integers(len(self.images)))], self.patch, self.rng)

    def _scene(self, photo: torch.Tensor) -> torch.Tensor:
        """The photo as the scene behind the glass: with lamps at `settings.scene_light_share` (a
        share of 0 draws no random number, so runs from before the option keep their crops)."""
        lit = self.settings.scene_light_share
        return with_scene_lights(photo, self.rng) if lit and self.rng.random() < lit else photo

    def _pair(self, kind: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        clean = self.settings.no_reflection_share
        if kind == NO_REFLECTION or (kind is None and clean and self.rng.random() < clean):
            t0 = self._scene(self._any_patch())
            return t0, t0.clone(), torch.zeros_like(t0)
        share = self.settings.real_reflection_share if self.reflections else 0.0
        if kind == REAL_REFLECTIONS or (kind is None and share and self.rng.random() < share):
            t0 = self._scene(self._any_patch())
            reflection = self.reflections[int(self.rng.integers(len(self.reflections)))]
            r0 = random_patch(reflection.layer, self.patch, self.rng)
            return composite(t0, r0, reflection.glass_gain, self.rng, self.settings)
        i, j = self.rng.choice(len(self.images), size=2, replace=False)
        t0 = self._scene(random_patch(self.images[i], self.patch, self.rng))
        r0 = random_patch(self.images[j], self.patch, self.rng)
        return synthesize(t0, r0, self.rng, self.settings, kind)


def validation_pairs(files: list[Path], size: int, count: int, seed: int = 1234
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed set of synthetic pairs (center crops) for comparable validation scores."""
    rng = np.random.default_rng(seed)
    images = load_images(files)
    def crop(image: torch.Tensor) -> torch.Tensor:
        x = image.float() / 255
        h, w = x.shape[-2:]
        side = min(h, w)
        x = x[:, (h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        return F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)[0].clamp(0, 1)
    triples = []
    for k in range(count):
        t0 = crop(images[(2 * k) % len(images)])
        r0 = crop(images[(2 * k + 1) % len(images)])
        triples.append(synthesize(t0, r0, rng))
    return tuple(torch.stack(part) for part in zip(*triples))
