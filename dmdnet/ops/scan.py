"""Selective scan (the Mamba S6 recurrence): picks one of four implementations of one contract
(`scan_reference` states it).

* `scan_reference.selective_scan_reference`: a plain loop over L, the test oracle.
* `scan_chunked.selective_scan_chunked`: exact, vectorised, memory-bounded torch code (CPU and GPU).
* `scan_numba.selective_scan_numba`: exact compiled CPU loops, used on CPU when numba imports.
* mamba_ssm's fused CUDA kernel, used when it is importable and the tensors suit it.

`selective_scan` picks one (environment variable ``DMDNET_SCAN_IMPL``) and
`scan_backend` names the one it would pick.
"""
from __future__ import annotations

import functools
import importlib
import os
from typing import Callable

import torch

from .scan_chunked import selective_scan_chunked
from .scan_numba import numba_unavailable_reason, selective_scan_numba
from .scan_reference import check_inputs, selective_scan_reference

__all__ = ["SCAN_IMPL_ENV", "kernel_unavailable_reason", "scan_backend", "selective_scan"]

SCAN_IMPL_ENV = "DMDNET_SCAN_IMPL"
"""Environment variable forcing a path: ``auto`` (default), ``reference``, ``chunked``, ``numba`` or ``cuda``."""

_BACKENDS = {
    "reference": "torch-reference",
    "chunked": "torch-chunked",
    "numba": "numba-cpu",
    "cuda": "mamba_ssm-cuda",
}
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)



@functools.lru_cache(maxsize=1)
def _probe_mamba_kernel() -> tuple[Callable[..., torch.Tensor] | None, str]:
    """Import mamba_ssm's compiled kernel once; return (selective_scan_fn, "") or (None, why it failed).

    Probes the extension module `selective_scan_cuda` itself: a mamba_ssm wheel built for another torch
    or CUDA imports fine in Python and only fails (ImportError, OSError, ...) when the .so is loaded.
    """
    try:
        importlib.import_module("selective_scan_cuda")
        interface = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except Exception as error:  # noqa: BLE001 - any failure to load the extension means "no kernel"
        return None, f"{type(error).__name__}: {error}"
    return interface.selective_scan_fn, ""


def kernel_unavailable_reason(device: torch.device, dtype: torch.dtype) -> str:
    """Why the mamba_ssm CUDA kernel cannot run for this device and dtype ("" when it can)."""
    if device.type != "cuda":
        return f"tensors are on {device}, not CUDA"
    if dtype not in _KERNEL_DTYPES:
        return f"the kernel supports float32/float16/bfloat16, not {dtype}"
    kernel, error = _probe_mamba_kernel()
    if kernel is None:
        return f"mamba_ssm's compiled extension selective_scan_cuda does not import ({error})"
    return ""


def _numba_unavailable_reason(device: torch.device) -> str:
    """Why the numba CPU kernels cannot run for this device ("" when they can)."""
    if device.type != "cpu":
        return f"tensors are on {device}, not CPU"
    return numba_unavailable_reason()


def _requested_impl() -> str:
    """The implementation forced by DMDNET_SCAN_IMPL, read now (default "auto")."""
    impl = os.environ.get(SCAN_IMPL_ENV, "auto").strip().lower() or "auto"
    if impl != "auto" and impl not in _BACKENDS:
        raise ValueError(f"{SCAN_IMPL_ENV}={impl!r}: expected one of auto, {', '.join(_BACKENDS)}")
    return impl


def scan_backend(device: torch.device | str, dtype: torch.dtype) -> str:
    """Name the path `selective_scan` takes for tensors of this device and dtype.

    One of "mamba_ssm-cuda", "numba-cpu", "torch-chunked", "torch-reference"; raises RuntimeError like
    `selective_scan` when DMDNET_SCAN_IMPL=cuda or numba is forced but that path cannot run.
    """
    impl = _requested_impl()
    device = torch.device(device)
    if impl in ("reference", "chunked"):
        return _BACKENDS[impl]
    if impl == "numba":
        reason = _numba_unavailable_reason(device)
        if reason:
            raise RuntimeError(f"{SCAN_IMPL_ENV}=numba but the numba CPU kernels cannot be used: {reason}")
        return _BACKENDS["numba"]
    reason = kernel_unavailable_reason(device, dtype)
    if impl == "cuda" and reason:
        raise RuntimeError(f"{SCAN_IMPL_ENV}=cuda but the mamba_ssm CUDA kernel cannot be used: {reason}")
    if not reason:
        return _BACKENDS["cuda"]
    return _BACKENDS["chunked"] if _numba_unavailable_reason(device) else _BACKENDS["numba"]


def _selective_scan_cuda(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> torch.Tensor:
    """Call mamba_ssm's selective_scan_fn with the dtypes its kernel insists on (A, D, bias in float32)."""
    kernel, _ = _probe_mamba_kernel()
    return kernel(
        u,
        delta.to(u.dtype),
        A.float(),
        B.to(u.dtype),
        C.to(u.dtype),
        None if D is None else D.float(),
        delta_bias=None if delta_bias is None else delta_bias.float(),
        delta_softplus=delta_softplus,
    )


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """Selective scan through the best available path (see `scan_backend`); y is (batch, D, L) in u's dtype.

    DMDNET_SCAN_IMPL (read at every call) forces "reference", "chunked", "numba" or "cuda"; "auto" uses the
    mamba_ssm kernel for float32/float16/bfloat16 CUDA tensors when it imports, the numba kernels for CPU
    tensors when numba imports, `selective_scan_chunked` otherwise.
    """
    check_inputs(u, delta, A, B, C, D, delta_bias)
    backend = scan_backend(u.device, u.dtype)
    if backend == _BACKENDS["cuda"]:
        scan = _selective_scan_cuda
    elif backend == _BACKENDS["numba"]:
        scan = selective_scan_numba
    elif backend == _BACKENDS["reference"]:
        scan = selective_scan_reference
    else:
        scan = selective_scan_chunked
    return scan(u, delta, A, B, C, D, delta_bias, delta_softplus)
