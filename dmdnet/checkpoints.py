"""Checkpoint files: reading them safely, converting the released key names, clear errors.

Conversion follows timm's `checkpoint_filter_fn` pattern: pure functions from the
authors' state-dict names to this package's module names and back. Every file is
read with `torch.load(..., weights_only=True)`; anything wrong with a file ends
in one `CheckpointError` naming the file and what is wrong.
"""
from __future__ import annotations

import functools
import io
import mmap
import pickle
import pickletools
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import DMDNetConfig
from .files import atomic_path, uninterrupted

_MUGI_NAMES = {
    "norm1": "block1.0.seq.0", "expand1": "block1.0.seq.1", "dwconv": "block1.0.seq.2",
    "channel_attention.proj": "block1.2.seq.0.ca.1", "proj1": "block1.3.seq.0",
    "scale_left": "a_l", "scale_right": "a_r",
    "norm2": "block2.0.seq.0", "expand2": "block2.0.seq.1", "proj2": "block2.2.seq.0",
    "scale_out": "b",
}
_DM_BLOCK_NAMES = {
    "norm1": "norm1.body", "norm2": "norm2.body",
    "mamba.in_proj": "DSMamba.in_proj", "mamba.dwconv": "DSMamba.conv2d",
    "mamba.proximity_fuse": "DSMamba.fuse.0",
    "mamba.x_proj_weight": "DSMamba.x_proj_weight_channel",
    "mamba.dt_proj_weight": "DSMamba.dt_projs_weight_channel",
    "mamba.dt_proj_bias": "DSMamba.dt_projs_bias_channel",
    "mamba.a_log_transmission": "DSMamba.A_logs_ch_T",
    "mamba.a_log_reflection": "DSMamba.A_logs_ch_R",
    "mamba.skip_transmission": "DSMamba.Ds_ch_T", "mamba.skip_reflection": "DSMamba.Ds_ch_R",
    "mamba.depth_encoder": "DSMamba.depth_encoder.0",
    "mamba.depth_proj_weight": "DSMamba.depth_proj_weight_channel",
    "mamba.depth_gate": "DSMamba.conv_depth_sig.0",
    "mamba.out_norm": "DSMamba.out_norm", "mamba.out_proj": "DSMamba.out_proj",
    "ffn.expand": "EFFN.project_in", "ffn.dwconv": "EFFN.dwconv", "ffn.project": "EFFN.project_out",
    "mecm.gate.noise_fc": "MECM.gate.fc0", "mecm.gate.score_fc": "MECM.gate.fc1",
}
_EXPERT_NAMES = {"fusion": "fusion.0", "dilated_dwconv": "depth_conv.0"}


class CheckpointError(RuntimeError):
    """A weight file is missing, unreadable, or does not fit the model."""


def _local(table: Mapping[str, str], name: str) -> str:
    """Renames a module-local parameter path using the longest matching prefix in `table`."""
    for ours in sorted(table, key=len, reverse=True):
        if name == ours or name.startswith(ours + "."):
            return table[ours] + name[len(ours):]
    raise KeyError(name)


def _dm_block(name: str) -> str:
    expert = re.fullmatch(r"mecm\.experts\.(\d+)\.(.+)", name)
    if expert:
        return f"MECM.Memory_Experts.{expert[1]}.memory_module." + _local(_EXPERT_NAMES, expert[2])
    return _local(_DM_BLOCK_NAMES, name)


def _official_name(key: str, config: DMDNetConfig) -> str:
    """This package's parameter name -> the released checkpoint's name."""
    rules: list[tuple[str, Callable[[re.Match], str]]] = [
        (r"encoder\.stem\.(.+)", lambda m: f"Encoding_Branch.stem.seq.0.{m[1]}"),
        (r"encoder\.stages\.(\d+)\.blocks\.(\d+)\.(.+)",
         lambda m: f"Encoding_Branch.block{int(m[1]) + 1}.{m[2]}.{_local(_MUGI_NAMES, m[3])}"),
        (r"encoder\.stages\.(\d+)\.proj\.(.+)",
         lambda m: f"Encoding_Branch.block{int(m[1]) + 1}."
                   f"{config.encoder_blocks[int(m[1])] + 1}.seq.0.{m[2]}"),
        (r"depth_semantic_proj\.(\d+)\.(.+)", lambda m: f"conv_dim{int(m[1]) + 3}.0.{m[2]}"),
        (r"proximity_stem\.(.+)", lambda m: f"convert_d.0.{m[1]}"),
        (r"proximity_down\.(\d+)\.(.+)", lambda m: f"conv_level{int(m[1]) + 1}_d.0.{m[2]}"),
        (r"up_proj\.(\d+)\.(.+)", lambda m: f"conv_{int(m[1]) + 1}.0.{m[2]}"),
        (r"depth_branch\.(\d+)\.(\d+)\.(.+)",
         lambda m: f"DMBlock_DSBranch_level{int(m[1]) + 3}.blocks.{m[2]}.{_dm_block(m[3])}"),
        (r"dm_stacks\.(\d+)\.(\d+)\.(.+)",
         lambda m: f"DMBlock_level{int(m[1]) + 1}.blocks.{m[2]}.{_dm_block(m[3])}"),
        (r"decoder_mugi\.(\d+)\.(\d+)\.(.+)",
         lambda m: f"MuGIBlock_level{int(m[1]) + 1}.{m[2]}.{_local(_MUGI_NAMES, m[3])}"),
        (r"final_mugi\.(\d+)\.(.+)", lambda m: f"MuGIBlock_last.{m[1]}.{_local(_MUGI_NAMES, m[2])}"),
        (r"head\.(.+)", lambda m: f"out.seq.0.{m[1]}"),
        (r"global_gain\.(.+)", lambda m: m[0]),  # DMDNet-Lite only: no released name
    ]
    for pattern, rename in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return rename(match)
    raise KeyError(key)


@functools.lru_cache(maxsize=8)
def dmdnet_key_shapes(config: DMDNetConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter names and shapes for a configuration (built on the meta device)."""
    from .model import DMDNet

    with torch.device("meta"):
        model = DMDNet(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=8)
def _official_to_ours_names(config: DMDNetConfig) -> dict[str, str]:
    return {_official_name(key, config): key for key in dmdnet_key_shapes(config)}


def official_to_ours(state_dict: Mapping[str, torch.Tensor],
                     config: DMDNetConfig | None = None) -> dict[str, torch.Tensor]:
    """Released DMDNet state dict -> this package's names; unknown keys pass through unchanged.

    A DataParallel `module.` prefix is removed first.
    """
    names = _official_to_ours_names(config or DMDNetConfig.released())
    converted = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        converted[names.get(key, key)] = value
    return converted


def ours_to_official(state_dict: Mapping[str, torch.Tensor],
                     config: DMDNetConfig | None = None) -> dict[str, torch.Tensor]:
    """This package's DMDNet state dict -> the released names (inverse of `official_to_ours`)."""
    names = {ours: official for official, ours in
             _official_to_ours_names(config or DMDNetConfig.released()).items()}
    return {names.get(key, key): value for key, value in state_dict.items()}


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


def _read_memory_banks(path: str | Path) -> Mapping[str, object]:
    """The dict of banks in a `memory_banks_latest.pt`, unchecked against any model."""
    obj = read_checkpoint(path, "memory bank")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"memory bank file {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def load_memory_banks(model: torch.nn.Module, path: str | Path) -> None:
    """Loads the released `memory_banks_latest.pt` (22 tensors (E, C, C)) into `model.memory`."""
    obj = _read_memory_banks(path)
    expected = {k: tuple(v.shape) for k, v in model.memory.as_dict().items()}
    check_state_dict(obj, expected, path, "memory bank")
    model.memory.load(obj)


def save_dmdnet_checkpoint(model: torch.nn.Module, model_path: str | Path,
                           memory_path: str | Path, **extra: object) -> None:
    """Writes the released formats: {"network": official state dict, **extra} and the bank dict."""
    network = {k: v.detach().cpu() for k, v in ours_to_official(model.state_dict(), model.config).items()}
    save_files({model_path: {**extra, "network": network},
                memory_path: {k: v.detach().cpu() for k, v in model.memory.as_dict().items()}})


def save_files(contents: Mapping[str | Path, object]) -> None:
    """torch.save of each object to its path, each file written whole under a temporary name
    and renamed into place, all of them before a SIGINT/SIGTERM stops a command."""
    with uninterrupted():
        for path, obj in contents.items():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as partial:
                torch.save(obj, partial)


def _copy_matching(target: Mapping[str, torch.Tensor], source: Mapping[str, object]) -> list[str]:
    """Copies every source tensor whose name and shape exist in `target`; returns the rest, both ways."""
    skipped = []
    for name, value in source.items():
        if name in target and isinstance(value, torch.Tensor) and value.shape == target[name].shape:
            target[name].copy_(value)
        else:
            skipped.append(f"{name} (not used)")
    skipped += [f"{name} (not in the file)" for name in target if name not in source]
    return skipped


@torch.no_grad()
def warm_start(model: torch.nn.Module, estimator: torch.nn.Module | None, model_path: str | Path,
               memory_path: str | Path) -> list[str]:
    """Initialises `model` (and a Lite proximity `estimator`) from files of another configuration.

    Used to fine-tune a changed architecture from trained weights: every tensor whose name
    and shape match is copied, the others keep their fresh initialisation. Returns what was
    not copied, so the caller can report it.
    """
    obj = read_checkpoint(model_path, "DMDNet model")
    network = official_to_ours(network_state_from_file(obj, model_path), config_from_checkpoint(obj, model_path))
    skipped = (_copy_matching(model.state_dict(), network)
               + _copy_matching(model.memory.as_dict(), _read_memory_banks(memory_path)))
    if estimator is not None:
        skipped += _copy_matching(estimator.state_dict(), dict(obj.get("proximity_estimator") or {}))
    return skipped


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
    from .depth import midas_to_ours

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


def _mean_tensors(states: list[Mapping[str, object]], what: str) -> dict[str, torch.Tensor]:
    """Element-wise mean of dicts of tensors with the same names and shapes (others refused)."""
    first = states[0]
    for state in states:
        if set(state) != set(first) or not all(
                isinstance(state[k], torch.Tensor) and isinstance(v, torch.Tensor) and state[k].shape == v.shape
                for k, v in first.items()):
            raise CheckpointError(f"cannot average {what}: the files hold different tensors or shapes")
    return {k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype)
            if v.is_floating_point() else v for k, v in first.items()}


def average_checkpoints(model_paths: list[str | Path], memory_paths: list[str | Path],
                        out_model: str | Path, out_memory: str | Path) -> None:
    """Writes the weight average ("model soup") of runs fine-tuned from one starting point.

    Network and proximity-estimator tensors are averaged; memory slots are averaged and
    renormalised to unit length, as the banks' evolution keeps them. The other entries
    (config, trained scale) come from the first file and must agree across files;
    "iterations" is the largest of the runs'.
    """
    models = [read_checkpoint(path, "DMDNet model") for path in model_paths]
    if len(models) < 2 or not all(isinstance(m, Mapping) and "network" in m for m in models):
        raise CheckpointError("averaging needs two or more model files with a 'network' entry")
    for key in ("config", "trained_short_side"):
        if any(m.get(key) != models[0].get(key) for m in models):
            raise CheckpointError(f"cannot average models whose '{key}' differs")
    averaged = dict(models[0])
    for key in ("network", "proximity_estimator"):
        if key in averaged:
            averaged[key] = _mean_tensors([m.get(key) or {} for m in models], key)
    averaged["iterations"] = max(int(m.get("iterations", 0)) for m in models)
    banks = _mean_tensors([_read_memory_banks(path) for path in memory_paths], "memory banks")
    save_files({out_model: averaged, out_memory: {k: F.normalize(v, dim=-1) for k, v in banks.items()}})
