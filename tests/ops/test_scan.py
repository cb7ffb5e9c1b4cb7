"""The selective scan: chunked path against the sequential oracle, gradients, and backend dispatch."""
from __future__ import annotations

import importlib

import pytest
import torch

from dmdnet.ops import (
    scan,
    scan_backend,
    scan_numba,
    selective_scan,
    selective_scan_chunked,
    selective_scan_reference,
)


def make_inputs(
    batch: int = 2,
    channels: int = 4,
    n_state: int = 3,
    length: int = 17,
    groups: int = 2,
    dtype: torch.dtype = torch.float64,
    delta_scale: float = 1.0,
    seed: int = 0,
) -> dict:
    """Random problem with Mamba-like A < 0; returns the keyword arguments of the scan functions."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    return {
        "u": randn(batch, channels, length),
        "delta": randn(batch, channels, length) * delta_scale,
        "A": -torch.rand(channels, n_state, generator=generator, dtype=torch.float64).mul(3).add(0.1).to(dtype),
        "B": randn(batch, groups, n_state, length),
        "C": randn(batch, groups, n_state, length),
        "D": randn(channels),
        "delta_bias": randn(channels) * 0.5,
    }


def oracle(inputs: dict, **options) -> torch.Tensor:
    """The reference scan in float64, whatever the inputs' dtype."""
    as_double = {k: None if v is None else v.double() for k, v in inputs.items()}
    return selective_scan_reference(**as_double, **options)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("length", [1, 2, 3, 31, 97, 256])
@pytest.mark.parametrize("groups", [1, 2])
def test_chunked_matches_reference_float64(length, groups):
    inputs = make_inputs(length=length, groups=groups)
    expected = oracle(inputs)
    for sizes in ({}, {"chunk_length": 4}, {"chunk_length": 5, "segment_length": 13}):
        actual = selective_scan_chunked(**inputs, **sizes)
        assert actual.dtype == torch.float64 and actual.shape == expected.shape
        assert relative_error(actual, expected) < 1e-10, sizes


@pytest.mark.parametrize("length", [1, 7, 300])
def test_chunked_matches_reference_float32(length):
    inputs = make_inputs(batch=2, channels=8, n_state=4, length=length, dtype=torch.float32)
    expected = oracle(inputs)
    for sizes in ({}, {"chunk_length": 8, "segment_length": 50}):
        actual = selective_scan_chunked(**inputs, **sizes)
        assert actual.dtype == torch.float32
        assert relative_error(actual, expected) < 1e-4, sizes


@pytest.mark.parametrize("delta_softplus", [True, False])
@pytest.mark.parametrize("drop", [(), ("D",), ("delta_bias",), ("D", "delta_bias")])
def test_chunked_options(delta_softplus, drop):
    inputs = make_inputs(length=41)
    if not delta_softplus:
        inputs["delta"] = inputs["delta"].abs() * 0.3
    inputs.update({name: None for name in drop})
    expected = oracle(inputs, delta_softplus=delta_softplus)
    actual = selective_scan_chunked(**inputs, delta_softplus=delta_softplus, chunk_length=6)
    assert relative_error(actual, expected) < 1e-10


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_delta_stays_finite(dtype):
    inputs = make_inputs(length=50, dtype=dtype, delta_scale=20.0)
    inputs["delta"] = inputs["delta"].abs() + 20.0
    inputs["A"] = inputs["A"] * 10
    actual = selective_scan_chunked(**inputs, chunk_length=7)
    assert torch.isfinite(actual).all()
    assert relative_error(actual, oracle(inputs)) < (1e-4 if dtype == torch.float32 else 1e-10)


def test_half_precision_input_returns_its_dtype():
    inputs = make_inputs(length=20, dtype=torch.bfloat16)
    actual = selective_scan_chunked(**inputs)
    assert actual.dtype == torch.bfloat16
    assert relative_error(actual, oracle(inputs)) < 2e-2


def test_gradients_match_reference():
    inputs = make_inputs(batch=1, channels=4, n_state=2, length=11)
    names = ["u", "delta", "A", "B", "C", "D", "delta_bias"]
    weights = torch.randn(1, 4, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def gradients(function, **sizes):
        leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        (function(**leaves, **sizes) * weights).sum().backward()
        return [leaves[name].grad for name in names]

    expected = gradients(selective_scan_reference)
    actual = gradients(selective_scan_chunked, chunk_length=3, segment_length=7)
    for name, got, want in zip(names, actual, expected):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-11), name


def test_gradcheck_chunked():
    inputs = make_inputs(batch=1, channels=2, n_state=2, length=5, groups=1)
    leaves = tuple(inputs[k].clone().requires_grad_(True) for k in ("u", "delta", "A", "B", "C"))
    assert torch.autograd.gradcheck(
        lambda *args: selective_scan_chunked(*args, inputs["D"], inputs["delta_bias"], chunk_length=2),
        leaves,
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x: x.update(u=x["u"][0]), "u must be"),
        (lambda x: x.update(delta=x["delta"][..., :-1]), "delta shape"),
        (lambda x: x.update(A=x["A"][:-1]), "A must be"),
        (lambda x: x.update(B=x["B"][..., :-1]), "B must be"),
        (lambda x: x.update(C=x["C"][:, :, :-1]), "C must be"),
        (lambda x: x.update(B=x["B"].repeat(1, 3, 1, 1), C=x["C"].repeat(1, 3, 1, 1)), "must divide"),
        (lambda x: x.update(D=x["D"][:-1]), "D must be"),
        (lambda x: x.update(delta_bias=x["delta_bias"][None]), "delta_bias must be"),
    ],
)
def test_invalid_shapes_raise(change, message):
    inputs = make_inputs()
    change(inputs)
    for function in (selective_scan, selective_scan_chunked, selective_scan_reference):
        with pytest.raises(ValueError, match=message):
            function(**inputs)


@pytest.fixture
def without_numba(monkeypatch):
    """Make the dispatcher see numba as missing (tests/test_scan_numba.py covers the numba path)."""
    monkeypatch.setattr(scan_numba, "_probe_numba", lambda: (None, "ModuleNotFoundError: No module named 'numba'"))


def test_auto_uses_chunked_on_cpu_without_numba(monkeypatch, without_numba):
    monkeypatch.delenv(scan.SCAN_IMPL_ENV, raising=False)
    inputs = make_inputs(dtype=torch.float32)
    assert scan_backend("cpu", torch.float32) == "torch-chunked"
    assert torch.equal(selective_scan(**inputs), selective_scan_chunked(**inputs))


@pytest.mark.parametrize(
    "impl, backend, function",
    [("reference", "torch-reference", selective_scan_reference), ("chunked", "torch-chunked", selective_scan_chunked)],
)
def test_env_var_forces_torch_paths(monkeypatch, impl, backend, function):
    monkeypatch.setenv(scan.SCAN_IMPL_ENV, impl)
    inputs = make_inputs(dtype=torch.float32)
    assert scan_backend("cpu", torch.float32) == backend
    assert scan_backend(torch.device("cuda"), torch.float16) == backend
    assert torch.equal(selective_scan(**inputs), function(**inputs))


def test_forced_cuda_on_cpu_raises(monkeypatch):
    monkeypatch.setenv(scan.SCAN_IMPL_ENV, "cuda")
    with pytest.raises(RuntimeError, match="not CUDA"):
        selective_scan(**make_inputs(dtype=torch.float32))
    with pytest.raises(RuntimeError, match="not CUDA"):
        scan_backend("cpu", torch.float32)


def test_unknown_env_value_raises(monkeypatch):
    monkeypatch.setenv(scan.SCAN_IMPL_ENV, "fastest")
    with pytest.raises(ValueError, match=scan.SCAN_IMPL_ENV):
        scan_backend("cpu", torch.float32)


def test_cuda_dispatch_rules_with_a_stub_kernel(monkeypatch, without_numba):
    """Without a GPU: the kernel is chosen for CUDA float32/16/bf16 only, never for float64 or CPU."""
    monkeypatch.setattr(scan, "_probe_mamba_kernel", lambda: (selective_scan_reference, ""))
    monkeypatch.delenv(scan.SCAN_IMPL_ENV, raising=False)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert scan_backend("cuda", dtype) == "mamba_ssm-cuda"
        assert scan_backend("cuda:0", dtype) == "mamba_ssm-cuda"
    assert scan_backend("cuda", torch.float64) == "torch-chunked"
    assert scan_backend("cpu", torch.float32) == "torch-chunked"
    monkeypatch.setenv(scan.SCAN_IMPL_ENV, "cuda")
    assert scan_backend("cuda", torch.float32) == "mamba_ssm-cuda"
    with pytest.raises(RuntimeError, match="float64"):
        scan_backend("cuda", torch.float64)


def test_missing_kernel_falls_back(monkeypatch):
    monkeypatch.setattr(scan, "_probe_mamba_kernel", lambda: (None, "ImportError: no module"))
    monkeypatch.delenv(scan.SCAN_IMPL_ENV, raising=False)
    assert scan_backend("cuda", torch.float32) == "torch-chunked"
    monkeypatch.setenv(scan.SCAN_IMPL_ENV, "cuda")
    with pytest.raises(RuntimeError, match="selective_scan_cuda"):
        scan_backend("cuda", torch.float32)


def _mamba_kernel_importable() -> bool:
    try:
        importlib.import_module("selective_scan_cuda")
        importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except Exception:  # noqa: BLE001 - any load failure means there is no kernel to test
        return False
    return True


@pytest.mark.skipif(
    not (torch.cuda.is_available() and _mamba_kernel_importable()), reason="needs CUDA and mamba_ssm's compiled kernel"
)
def test_mamba_cuda_kernel_matches_reference(monkeypatch):
    monkeypatch.delenv(scan.SCAN_IMPL_ENV, raising=False)
    inputs = make_inputs(batch=2, channels=8, n_state=4, length=300, dtype=torch.float32)
    assert scan_backend("cuda", torch.float32) == "mamba_ssm-cuda"
    actual = selective_scan(**{k: v.cuda() for k, v in inputs.items()})
    assert actual.dtype == torch.float32 and actual.is_cuda
    assert relative_error(actual.cpu(), oracle(inputs)) < 1e-4
    chunked = selective_scan_chunked(**{k: v.cuda() for k, v in inputs.items()})
    assert relative_error(chunked.cpu(), oracle(inputs)) < 1e-4
