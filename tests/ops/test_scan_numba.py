"""The numba CPU selective scan: forward and gradients against the oracle, dispatch, and the missing-numba fallback."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

numba = pytest.importorskip("numba")

from test_scan import make_inputs  # noqa: E402

from dmdnet.ops import (  # noqa: E402 - only once numba is known to import  # noqa: E402
    scan,
    scan_backend,
    scan_numba,
    selective_scan,
    selective_scan_chunked,
    selective_scan_reference,
)
from dmdnet.ops.scan_numba import SelectiveScanNumba, selective_scan_numba  # noqa: E402

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference over the largest magnitude of the expected tensor (0 when both are 0)."""
    scale = expected.double().abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    return ((actual.double() - expected.double()).abs().max() / scale).item()


def oracle(inputs: dict[str, torch.Tensor | None], **options: bool) -> torch.Tensor:
    """The reference scan in float64, whatever the inputs' dtype."""
    return selective_scan_reference(**{k: None if v is None else v.double() for k, v in inputs.items()}, **options)


def gradients(function, inputs: dict[str, torch.Tensor | None], weights: torch.Tensor, **options: bool) -> dict:
    """Gradients of sum(function(inputs) * weights) with respect to every tensor input."""
    leaves = {k: None if v is None else v.clone().requires_grad_(True) for k, v in inputs.items()}
    (function(**leaves, **options) * weights).sum().backward()
    return {k: v.grad for k, v in leaves.items() if v is not None}


@pytest.fixture
def two_threads():
    """Run with two torch (hence numba) threads, so a single (batch, group) is split across threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("length", [1, 2, 37, 300])
@pytest.mark.parametrize("batch, groups", [(1, 1), (1, 2), (2, 1), (2, 2)])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_forward_matches_reference(length, batch, groups, dtype, tolerance):
    inputs = make_inputs(batch=batch, groups=groups, length=length, dtype=dtype)
    actual = selective_scan_numba(**inputs)
    assert actual.dtype == dtype and actual.shape == (batch, 4, length)
    assert relative_error(actual, oracle(inputs)) < tolerance


@pytest.mark.parametrize("chunk_steps", [1, 7, 64])
def test_forward_in_chunks_of_steps_matches_reference(chunk_steps, monkeypatch):
    """The decays are computed a bounded chunk of steps at a time; the state carries over."""
    inputs = make_inputs(batch=2, groups=2, length=150, dtype=torch.float64)
    monkeypatch.setattr(scan_numba, "DECAY_CHUNK_ELEMENTS", chunk_steps * 2 * 4 * inputs["A"].shape[1])
    assert relative_error(selective_scan_numba(**inputs), oracle(inputs)) < 1e-12


@pytest.mark.parametrize("delta_softplus", [True, False])
@pytest.mark.parametrize("drop", [(), ("D",), ("delta_bias",), ("D", "delta_bias")])
def test_forward_options(delta_softplus, drop):
    inputs = make_inputs(length=41)
    if not delta_softplus:
        inputs["delta"] = inputs["delta"].abs() * 0.3
    inputs.update({name: None for name in drop})
    actual = selective_scan_numba(**inputs, delta_softplus=delta_softplus)
    assert relative_error(actual, oracle(inputs, delta_softplus=delta_softplus)) < 1e-12


def test_half_precision_input_returns_its_dtype():
    inputs = make_inputs(length=20, dtype=torch.bfloat16)
    actual = selective_scan_numba(**inputs)
    assert actual.dtype == torch.bfloat16
    assert relative_error(actual, oracle(inputs)) < 2e-2


@pytest.mark.parametrize("delta_softplus", [True, False])
@pytest.mark.parametrize("batch, groups, length", [(1, 1, 1), (1, 1, 23), (2, 2, 37), (2, 1, 64)])
def test_gradients_match_reference(two_threads, batch, groups, length, delta_softplus):
    inputs = make_inputs(batch=batch, groups=groups, length=length, seed=length)
    weights = torch.randn(batch, 4, length, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = gradients(selective_scan_reference, inputs, weights, delta_softplus=delta_softplus)
    actual = gradients(selective_scan_numba, inputs, weights, delta_softplus=delta_softplus)
    for name in GRAD_NAMES:
        assert relative_error(actual[name], expected[name]) < 1e-9, name


def test_gradients_keep_every_decay_whatever_the_chunk(monkeypatch):
    """A forward that needs gradients computes all decays at once and hands them to the backward,
    which no longer recomputes them: a one-step chunk size must not cut them short."""
    inputs = make_inputs(batch=2, groups=2, length=150, seed=5)
    monkeypatch.setattr(scan_numba, "DECAY_CHUNK_ELEMENTS", 1)
    weights = torch.randn(2, 4, 150, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected = gradients(selective_scan_reference, inputs, weights)
    actual = gradients(selective_scan_numba, inputs, weights)
    for name in GRAD_NAMES:
        assert relative_error(actual[name], expected[name]) < 1e-9, name


def test_gradients_without_optional_inputs():
    inputs = make_inputs(length=19)
    inputs.update(D=None, delta_bias=None)
    weights = torch.randn(2, 4, 19, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = gradients(selective_scan_reference, inputs, weights)
    actual = gradients(selective_scan_numba, inputs, weights)
    assert actual.keys() == expected.keys() == {"u", "delta", "A", "B", "C"}
    for name in actual:
        assert relative_error(actual[name], expected[name]) < 1e-9, name


def test_float32_gradients_stay_float32():
    inputs = make_inputs(length=50, dtype=torch.float32)
    weights = torch.randn(2, 4, 50, generator=torch.Generator().manual_seed(3))
    actual = gradients(selective_scan_numba, inputs, weights)
    expected = gradients(selective_scan_reference, {k: v.double() for k, v in inputs.items()}, weights.double())
    for name in GRAD_NAMES:
        assert actual[name].dtype == torch.float32, name
        assert relative_error(actual[name], expected[name]) < 1e-5, name


def test_thread_count_does_not_change_results(two_threads):
    inputs = make_inputs(batch=1, groups=1, channels=5, length=30)
    weights = torch.randn(1, 5, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    two = gradients(selective_scan_numba, inputs, weights)
    torch.set_num_threads(1)
    one = gradients(selective_scan_numba, inputs, weights)
    for name in GRAD_NAMES:
        assert relative_error(two[name], one[name]) < 1e-13, name


def test_gradcheck_function():
    inputs = make_inputs(batch=2, channels=2, n_state=2, length=5, groups=2)
    dt = torch.nn.functional.softplus(inputs["delta"])
    tensors = (inputs["u"], dt, inputs["A"], inputs["B"], inputs["C"], inputs["D"])
    leaves = tuple(x.clone().requires_grad_(True) for x in tensors)
    assert torch.autograd.gradcheck(SelectiveScanNumba.apply, leaves)


def test_non_contiguous_inputs():
    inputs = make_inputs(length=12)
    inputs["u"] = inputs["u"].transpose(0, 1).contiguous().transpose(0, 1)
    inputs["B"] = inputs["B"].transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not inputs["u"].is_contiguous() and not inputs["B"].is_contiguous()
    assert relative_error(selective_scan_numba(**inputs), oracle(inputs)) < 1e-12


def test_auto_uses_numba_on_cpu(monkeypatch):
    monkeypatch.delenv(scan.SCAN_IMPL_ENV, raising=False)
    inputs = make_inputs(dtype=torch.float32)
    assert scan_backend("cpu", torch.float32) == "numba-cpu"
    assert scan_backend("cpu", torch.float64) == "numba-cpu"
    assert torch.equal(selective_scan(**inputs), selective_scan_numba(**inputs))


def test_env_var_forces_numba(monkeypatch):
    monkeypatch.setenv(scan.SCAN_IMPL_ENV, "numba")
    inputs = make_inputs()
    assert scan_backend("cpu", torch.float64) == "numba-cpu"
    assert torch.equal(selective_scan(**inputs), selective_scan_numba(**inputs))
    with pytest.raises(RuntimeError, match="not CPU"):
        scan_backend("cuda", torch.float32)


def test_cuda_tensors_never_take_numba(monkeypatch):
    monkeypatch.setattr(scan, "_probe_mamba_kernel", lambda: (None, "ImportError: no module"))
    monkeypatch.delenv(scan.SCAN_IMPL_ENV, raising=False)
    assert scan_backend("cuda", torch.float32) == "torch-chunked"
    assert scan_backend("cuda", torch.float64) == "torch-chunked"


def test_cuda_tensors_are_refused():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    with pytest.raises(ValueError, match="CPU tensors"):
        selective_scan_numba(**{k: v.cuda() for k, v in make_inputs().items()})


def test_missing_numba_falls_back_to_chunked(monkeypatch):
    """With `import numba` failing, auto mode takes the torch chunked path and a forced numba raises."""
    monkeypatch.setitem(sys.modules, "numba", None)
    scan_numba._probe_numba.cache_clear()
    try:
        monkeypatch.delenv(scan.SCAN_IMPL_ENV, raising=False)
        assert "numba" in scan_numba.numba_unavailable_reason()
        assert scan_backend("cpu", torch.float32) == "torch-chunked"
        inputs = make_inputs(dtype=torch.float32)
        assert torch.equal(selective_scan(**inputs), selective_scan_chunked(**inputs))
        monkeypatch.setenv(scan.SCAN_IMPL_ENV, "numba")
        with pytest.raises(RuntimeError, match="numba"):
            selective_scan(**inputs)
    finally:
        scan_numba._probe_numba.cache_clear()


def _fill_squares(out):  # noqa: ANN001, ANN202 - compiled by numba in the test below
    for i in numba.prange(out.shape[0]):
        out[i] = i * i


def test_kernels_compile_without_a_writable_cache(monkeypatch):
    """Where numba finds no cache directory (read-only install), the kernels compile uncached with a warning."""
    from numba.core import caching

    cache_impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # renamed after numba 0.60
    monkeypatch.setattr(cache_impl, "_locator_classes", [])
    with pytest.warns(RuntimeWarning, match="without numba's disk cache"):
        fill_squares = scan_numba._jit(numba, _fill_squares)
    out = np.zeros(5)
    fill_squares(out)
    assert out.tolist() == [0, 1, 4, 9, 16]


def test_module_imports_without_numba(monkeypatch):
    """A fresh copy of scan_numba executes with `import numba` failing, and reports numba as unavailable."""
    monkeypatch.setitem(sys.modules, "numba", None)
    spec = importlib.util.spec_from_file_location("dmdnet.ops.scan_numba_without_numba", scan_numba.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "numba" in module.numba_unavailable_reason()
    with pytest.raises(RuntimeError, match="needs numba"):
        module.selective_scan_numba(**make_inputs())
