"""Selective scan (the Mamba S6 recurrence) with mamba_ssm's `selective_scan_fn` semantics.

Shapes (grouped B/C, no z gate)::

    u, delta: (batch, D, L)    A: (D, N)    B, C: (batch, G, N, L), G divides D
    D: (D,) or None            delta_bias: (D,) or None

Channel ``d`` reads group ``d // (D // G)`` of B and C. With
``dt = softplus(delta + delta_bias)`` (or without softplus) and ``h_0 = 0``::

    h_t = exp(dt_t * A[d]) * h_{t-1} + dt_t * B[g, :, t] * u_t
    y_t = sum_n C[g, n, t] * h_t[n] + D[d] * u_t

Four implementations share that contract:

* `selective_scan_reference`: a plain loop over L, the test oracle.
* `selective_scan_chunked`: exact, vectorised, memory-bounded torch code (CPU and GPU).
* `scan_numba.selective_scan_numba`: exact compiled CPU loops, used on CPU when numba imports.
* mamba_ssm's fused CUDA kernel, used when it is importable and the tensors suit it.

`selective_scan` picks one (environment variable ``DMDNET_SCAN_IMPL``) and
`scan_backend` names the one it would pick.
"""
from __future__ import annotations

import functools
import importlib
import math
import os
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "SCAN_IMPL_ENV",
    "SCAN_MEMORY_BUDGET_BYTES",
    "scan_backend",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_reference",
]

SCAN_IMPL_ENV = "DMDNET_SCAN_IMPL"
"""Environment variable forcing a path: ``auto`` (default), ``reference``, ``chunked``, ``numba`` or ``cuda``."""

SCAN_MEMORY_BUDGET_BYTES = 64 * 2**20
"""Approximate peak of the live temporaries of one `selective_scan_chunked` call, the output excluded.

It sets the segment length. Short segments cost no extra steps and keep their working set in cache,
so a small budget is also the fast one (the process RSS grows more, as the allocator keeps freed pages).
"""

STEP_ELEMENTS = 2**18
"""Target size of the per-step state tensor: large enough to amortise per-op overhead, small enough for cache."""

MIN_SEGMENT_LENGTH = 1024
"""Shortest sequence segment the memory budget may force (a very wide batch can then exceed the budget)."""

_ROW_COPIES = 6
"""Temporaries of one segment, in (batch, D) rows per position: dt, the step layouts of dt and dt*u, outputs."""

_GROUP_COPIES = 3
"""Temporaries of one segment, in (batch, G, N) columns per position: step layouts of B and C, padding copy."""

_BACKENDS = {
    "reference": "torch-reference",
    "chunked": "torch-chunked",
    "numba": "numba-cpu",
    "cuda": "mamba_ssm-cuda",
}
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_inputs(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
) -> None:
    """Raise ValueError unless the shapes form one consistent selective-scan problem."""
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, D, L), got shape {tuple(u.shape)}")
    batch, channels, length = u.shape
    if length == 0:
        raise ValueError("the sequence length L must be at least 1")
    if delta.shape != u.shape:
        raise ValueError(f"delta shape {tuple(delta.shape)} must equal u shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"A must be (D={channels}, N), got shape {tuple(A.shape)}")
    n_state = A.shape[1]
    if B.dim() != 4:
        raise ValueError(f"B must be (batch, G, N, L), got shape {tuple(B.shape)}")
    groups = B.shape[1]
    expected = (batch, groups, n_state, length)
    for name, tensor in (("B", B), ("C", C)):
        if tuple(tensor.shape) != expected:
            raise ValueError(f"{name} must be (batch, G, N, L) = {expected}, got shape {tuple(tensor.shape)}")
    if groups == 0 or channels % groups:
        raise ValueError(f"the group count G={groups} of B/C must divide the channel count D={channels}")
    for name, tensor in (("D", D), ("delta_bias", delta_bias)):
        if tensor is not None and tuple(tensor.shape) != (channels,):
            raise ValueError(f"{name} must be ({channels},), got shape {tuple(tensor.shape)}")


def _prepare_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    """Return the step sizes dt: delta plus its per-channel bias, through softplus when asked."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    return F.softplus(delta) if delta_softplus else delta


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """Run the recurrence one position at a time, in the inputs' dtype (pass float64 for an oracle).

    Slow and deliberately literal: it is the ground truth the fast paths are tested against.
    """
    _check_inputs(u, delta, A, B, C, D, delta_bias)
    channels, length = u.shape[1], u.shape[2]
    group_size = channels // B.shape[1]
    dt = _prepare_delta(delta, delta_bias, delta_softplus)
    B_per_channel = B.repeat_interleave(group_size, dim=1)
    C_per_channel = C.repeat_interleave(group_size, dim=1)
    h = u.new_zeros(u.shape[0], channels, A.shape[1])
    outputs = []
    for t in range(length):
        decay = torch.exp(dt[:, :, t, None] * A)
        h = decay * h + (dt[:, :, t] * u[:, :, t])[:, :, None] * B_per_channel[..., t]
        outputs.append((h * C_per_channel[..., t]).sum(-1))
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + D[:, None] * u
    return y


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other float type is scanned in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _auto_chunk_length(step_row_elements: int, length: int) -> int:
    """Pick the chunk length T: enough chunks for a step tensor of ~STEP_ELEMENTS, at most ~sqrt(L) of them."""
    chunks = max(1, STEP_ELEMENTS // step_row_elements)
    return max(math.ceil(length / chunks), math.isqrt(length - 1) + 1)


def _auto_segment_length(batch: int, channels: int, groups: int, n_state: int, element_size: int) -> int:
    """Longest segment whose temporaries fit SCAN_MEMORY_BUDGET_BYTES (not below MIN_SEGMENT_LENGTH)."""
    bytes_per_position = element_size * (_ROW_COPIES * batch * channels + _GROUP_COPIES * batch * groups * n_state)
    return max(MIN_SEGMENT_LENGTH, SCAN_MEMORY_BUDGET_BYTES // bytes_per_position)


def _scan_step(
    h: torch.Tensor, dt: torch.Tensor, dt_u: torch.Tensor, A_log2: torch.Tensor, B: torch.Tensor
) -> torch.Tensor:
    """One recurrence step for every chunk at once: exp(dt*A) * h + dt*u*B, with A_log2 = A * log2(e).

    exp2 is used because torch's CPU exp2 is about three times faster than its exp. Everything is out of
    place except updates of freshly made tensors that no backward needs, so autograd works.
    """
    decay = (dt * A_log2).exp2_()
    h = decay * h
    return h.addcmul_(dt_u, B)


def _by_step(x: torch.Tensor, chunks: int, chunk_length: int) -> torch.Tensor:
    """(..., S) -> (T, ..., K), contiguous, so position t of every chunk is one contiguous slice.

    S is zero-padded to K*T first: a zero dt leaves the state unchanged through the padding. The move is
    written as a 2-D transpose because torch copies those much faster than a general permutation.
    """
    padding = chunks * chunk_length - x.shape[-1]
    if padding:
        x = F.pad(x, (0, padding))
    positions_last = x.reshape(-1, chunk_length)
    return positions_last.t().contiguous().view(chunk_length, *x.shape[:-1], chunks)


def _scan_segment(
    u: torch.Tensor,
    dt: torch.Tensor,
    A_log2: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor,
    chunk_length: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scan one sequence segment that starts from `state`; return its outputs (no D term) and final state.

    u, dt: (batch, D, S); A_log2 = A * log2(e) as (G, N, D/G, 1); B, C: (batch, G, N, S);
    state: (batch, G, N, D/G). The segment is cut into K chunks of length T and the inputs are laid out
    (T, batch, G, N|1, D/G|1, K), so step t of all chunks is one contiguous slice:

    1. from a zero state, run the T steps of all chunks together, keeping only each chunk's final state;
    2. carry the true state across the K chunks with each chunk's total decay exp(A * sum(dt)), which
       only shrinks since A <= 0 (no division, no overflow);
    3. rerun the T steps from each chunk's true starting state and contract with C at every step.

    Recomputing the per-step decays in step 3 keeps every temporary the size of one step.
    """
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], B.shape[2]
    if chunk_length is None:
        chunk_length = _auto_chunk_length(batch * channels * n_state, length)
    chunk_length = min(chunk_length, length)
    chunks = math.ceil(length / chunk_length)

    # unbind once: per-step indexing would make autograd allocate a full-size gradient per step.
    dt_steps = _by_step(dt.unflatten(1, (groups, -1)), chunks, chunk_length).unsqueeze(3)
    chunk_decay = torch.exp2(dt_steps.sum(0) * A_log2).unbind(-1)
    dt_steps = dt_steps.unbind(0)
    dt_u_steps = _by_step((dt * u).unflatten(1, (groups, -1)), chunks, chunk_length).unsqueeze(3).unbind(0)
    B_steps = _by_step(B, chunks, chunk_length).unsqueeze(4).unbind(0)
    C_steps = _by_step(C, chunks, chunk_length).unsqueeze(4).unbind(0)

    h = u.new_zeros(batch, groups, n_state, channels // groups, chunks)
    for t in range(chunk_length):
        h = _scan_step(h, dt_steps[t], dt_u_steps[t], A_log2, B_steps[t])

    chunk_starts = []
    for final, decay in zip(h.unbind(-1), chunk_decay):
        chunk_starts.append(state)
        state = torch.addcmul(final, decay, state)

    h = torch.stack(chunk_starts, dim=-1)
    outputs = []
    for t in range(chunk_length):
        h = _scan_step(h, dt_steps[t], dt_u_steps[t], A_log2, B_steps[t])
        outputs.append((h * C_steps[t]).sum(2))
    y = torch.stack(outputs).view(chunk_length, -1).t().contiguous()
    return y.view(batch, channels, chunks * chunk_length)[..., :length], state


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    *,
    chunk_length: int | None = None,
    segment_length: int | None = None,
) -> torch.Tensor:
    """Exact, vectorised, differentiable selective scan in plain torch (the CPU path, and CUDA float64).

    float32 and float64 are scanned in their own dtype, half types in float32; y comes back in u's dtype.
    The sequence is processed in segments whose temporaries stay near SCAN_MEMORY_BUDGET_BYTES
    (a million-pixel image included), each one split into chunks scanned side by side (see `_scan_segment`).
    `chunk_length` and `segment_length` override the automatic sizes (tests and benchmarks use them).
    The budget bounds inference; under autograd the saved activations still grow like batch * D * N * L.
    """
    _check_inputs(u, delta, A, B, C, D, delta_bias)
    out_dtype = u.dtype
    dtype = _compute_dtype(out_dtype)
    u, delta, A, B, C = (x.to(dtype) for x in (u, delta, A, B, C))
    D = None if D is None else D.to(dtype)
    delta_bias = None if delta_bias is None else delta_bias.to(dtype)

    batch, channels, length = u.shape
    groups, n_state = B.shape[1], B.shape[2]
    group_size = channels // groups
    if segment_length is None:
        segment_length = _auto_segment_length(batch, channels, groups, n_state, u.element_size())
    A_log2 = (A * math.log2(math.e)).reshape(groups, group_size, n_state).transpose(1, 2).unsqueeze(-1)

    y = u.new_empty(batch, channels, length)
    state = u.new_zeros(batch, groups, n_state, group_size)
    for start in range(0, length, segment_length):
        part = slice(start, min(start + segment_length, length))
        dt = _prepare_delta(delta[..., part], delta_bias, delta_softplus)
        y_part, state = _scan_segment(u[..., part], dt, A_log2, B[..., part], C[..., part], state, chunk_length)
        if D is not None:
            y_part = torch.addcmul(y_part, D[:, None], u[..., part])
        y[..., part] = y_part
    return y.to(out_dtype)


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


def _kernel_unavailable_reason(device: torch.device, dtype: torch.dtype) -> str:
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
    from . import scan_numba  # imported here: scan_numba imports this module

    return scan_numba.numba_unavailable_reason()


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
    reason = _kernel_unavailable_reason(device, dtype)
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
    _check_inputs(u, delta, A, B, C, D, delta_bias)
    backend = scan_backend(u.device, u.dtype)
    if backend == _BACKENDS["cuda"]:
        scan = _selective_scan_cuda
    elif backend == _BACKENDS["numba"]:
        from .scan_numba import selective_scan_numba as scan
    elif backend == _BACKENDS["reference"]:
        scan = selective_scan_reference
    else:
        scan = selective_scan_chunked
    return scan(u, delta, A, B, C, D, delta_bias, delta_softplus)
