"""CPU selective scan compiled with numba, with a hand-written backward (the contract of `scan_reference.py`).

The torch chunked scan spends most of its time launching thousands of small ops; here one compiled loop
per (batch, channel) keeps the state in a local array and walks the sequence once, in the inputs' own
float32 or float64 arithmetic (half types are scanned in float32). The forward takes the decays exp(dt * A)
from torch's vectorised exp (1.5x faster than a scalar exp in the loop): a bounded chunk of steps at a time
when no gradient is needed, all at once when one is, and then keeps them for the backward, whose kernel
ran 1.7x faster without its own scalar exp. The backward recomputes the states of one channel at a time
and runs the recurrence in reverse, so the decays are the one saved tensor of size batch * D * L * N.

numba is optional: this module imports without it, `numba_unavailable_reason` says whether the kernels
can be used, and the dispatcher in `scan.py` falls back to the torch chunked scan when they cannot.
Kernels compile on first use for each dtype (``cache=True`` keeps them in ``__pycache__`` across runs).
"""
from __future__ import annotations

import functools
import os
import threading
import warnings
from types import ModuleType
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .scan_reference import check_inputs, compute_dtype, prepare_delta

__all__ = ["SelectiveScanNumba", "numba_unavailable_reason", "selective_scan_numba"]

DECAY_CHUNK_ELEMENTS = 2 ** 21
"""Decays exp(dt * A) computed at once by a forward that needs no gradient (8 MiB in float32)."""

_kernel_lock = threading.Lock()
"""Serialises kernel launches: numba's fallback workqueue threading layer aborts on concurrent launches."""


class _Kernels(NamedTuple):
    """The compiled kernels and the numba module they came from."""

    numba: ModuleType
    forward: Callable[..., None]
    backward: Callable[..., None]


@functools.lru_cache(maxsize=1)
def _probe_numba() -> tuple[ModuleType | None, str]:
    """Import numba once; return (numba, "") or (None, why the import failed).

    numba's thread pool is sized to torch's thread count at this moment unless NUMBA_NUM_THREADS is set:
    idle pool threads spin, and two 1-thread training runs on 2 cores ran 3x slower with a 2-thread pool.
    """
    os.environ.setdefault("NUMBA_NUM_THREADS", str(torch.get_num_threads()))
    try:
        import numba
    except Exception as error:  # noqa: BLE001 - any failure to import means "no numba"
        return None, f"{type(error).__name__}: {error}"
    return numba, ""


def numba_unavailable_reason() -> str:
    """Why the numba kernels cannot be used ("" when numba imports)."""
    return _probe_numba()[1]


def _jit(numba: ModuleType, function: Callable[..., None]) -> Callable[..., None]:
    """numba.njit the kernel with its on-disk cache, or without one where numba finds no writable directory."""
    try:
        return numba.njit(parallel=True, cache=True, fastmath=False)(function)
    except RuntimeError as error:  # numba's "cannot cache function ...: no locator available"
        warnings.warn(f"compiling {function.__name__} without numba's disk cache: {error}", RuntimeWarning, 2)
        return numba.njit(parallel=True, cache=False, fastmath=False)(function)


@functools.lru_cache(maxsize=1)
def _kernels() -> _Kernels:
    """Compile (or load from numba's cache) the kernels; RuntimeError when numba is missing."""
    numba, reason = _probe_numba()
    if numba is None:
        raise RuntimeError(f"the numba selective scan needs numba ({reason})")
    prange = numba.prange

    def scan_forward(u, dt, decay, B, C, D, y, state, start):  # noqa: ANN001, ANN202 - numba infers the types
        """y[b, d, start:start + T] for every (batch, channel) in parallel, T = decay.shape[2].

        decay[b, d, i, n] = exp(dt * A) of step start + i; `state` (batch, D, N) carries h
        from one chunk of steps to the next. B, C are laid out (batch, G, L, N).
        """
        batch, channels, steps = decay.shape[0], decay.shape[1], decay.shape[2]
        groups, n_state = B.shape[1], B.shape[3]
        group_size = channels // groups
        zero = u.dtype.type(0)
        for task in prange(batch * channels):
            b, d = task // channels, task % channels
            g = d // group_size
            h = state[b, d]
            for i in range(steps):
                t = start + i
                u_t = u[b, d, t]
                dt_u = dt[b, d, t] * u_t
                y_t = zero
                for n in range(n_state):
                    h[n] = decay[b, d, i, n] * h[n] + dt_u * B[b, g, t, n]
                    y_t += C[b, g, t, n] * h[n]
                y[b, d, t] = y_t + D[d] * u_t

    def scan_backward(  # noqa: ANN202 - numba infers the types at the call
        u, dt, A, decay, B, C, D, grad_y, grad_u, grad_dt, grad_A, grad_B, grad_C, grad_D  # noqa: ANN001
    ):
        """Gradients of the scan; B, C and their gradients are laid out (batch, G, L, N), the forward's
        decays exp(dt * A) (batch, D, L, N).

        Task (slice s, batch b, group g) handles channels g * D/G + s, + S, ... of the group, with
        S = grad_B.shape[0]. It writes grad_u, grad_dt (batch, D, L), grad_A (batch, D, N) and grad_D
        (batch, D) of its channels and accumulates its slice of grad_B, grad_C (S, batch, G, L, N), so no
        two tasks write the same element. Per channel it reruns the forward, keeping the states
        h_0 = 0, h_1, ..., h_L, then walks back in time carrying grad_h, the gradient of the loss with
        respect to the current state.
        """
        batch, channels, length = u.shape
        groups, n_state = B.shape[1], B.shape[3]
        slices = grad_B.shape[0]
        group_size = channels // groups
        zero = u.dtype.type(0)
        for task in prange(slices * batch * groups):
            s, b, g = task % slices, task // slices // groups, task // slices % groups
            states = np.zeros((length + 1, n_state), u.dtype)
            grad_h = np.empty(n_state, u.dtype)
            grad_a_sum = np.empty(n_state, u.dtype)
            for d in range(g * group_size + s, (g + 1) * group_size, slices):
                decays = decay[b, d]
                for t in range(length):
                    dt_u = dt[b, d, t] * u[b, d, t]
                    for n in range(n_state):
                        states[t + 1, n] = decays[t, n] * states[t, n] + dt_u * B[b, g, t, n]
                grad_h[:] = zero
                grad_a_sum[:] = zero
                grad_d = zero
                for t in range(length - 1, -1, -1):
                    dt_t, u_t, gy_t = dt[b, d, t], u[b, d, t], grad_y[b, d, t]
                    dt_u = dt_t * u_t
                    grad_dt_u = zero
                    grad_dt_t = zero
                    for n in range(n_state):
                        grad_C[s, b, g, t, n] += gy_t * states[t + 1, n]
                        gh = grad_h[n] + gy_t * C[b, g, t, n]
                        grad_B[s, b, g, t, n] += gh * dt_u
                        grad_dt_u += gh * B[b, g, t, n]
                        grad_decay = gh * states[t, n] * decays[t, n]
                        grad_dt_t += grad_decay * A[d, n]
                        grad_a_sum[n] += grad_decay * dt_t
                        grad_h[n] = gh * decays[t, n]
                    grad_u[b, d, t] = grad_dt_u * dt_t + D[d] * gy_t
                    grad_dt[b, d, t] = grad_dt_t + grad_dt_u * u_t
                    grad_d += gy_t * u_t
                grad_A[b, d, :] = grad_a_sum
                grad_D[b, d] = grad_d

    return _Kernels(numba, _jit(numba, scan_forward), _jit(numba, scan_backward))


def _array(tensor: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy view of a CPU tensor (a copy only when it is not contiguous)."""
    return tensor.detach().contiguous().numpy()


def _time_minor(x: torch.Tensor) -> torch.Tensor:
    """(batch, G, N, L) -> contiguous (batch, G, L, N), the layout the kernels read B and C in."""
    return x.transpose(-1, -2).contiguous()


def _launch(kernels: _Kernels, kernel: Callable[..., None], *args: torch.Tensor | int) -> None:
    """Run a kernel on numpy views of CPU tensors (ints pass as they are), with as many threads
    as torch is allowed."""
    with _kernel_lock:
        kernels.numba.set_num_threads(min(torch.get_num_threads(), kernels.numba.config.NUMBA_NUM_THREADS))
        kernel(*(_array(arg) if isinstance(arg, torch.Tensor) else arg for arg in args))


class SelectiveScanNumba(torch.autograd.Function):
    """y = scan(u, dt, A, B, C, D) on CPU, dt being the final step sizes (softplus and bias already applied).

    All inputs share one dtype, float32 or float64; D is required (pass zeros for none). Shapes as in
    `scan.py`. The backward returns exact gradients for all six inputs (it is not itself differentiable).
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        u: torch.Tensor,
        dt: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor,
    ) -> torch.Tensor:
        kernels = _kernels()
        u, dt, A, B, C, D = (x.contiguous() for x in (u, dt, A, B, C, D))
        batch, channels, length = u.shape
        y = torch.empty_like(u)
        state = u.new_zeros(batch, channels, A.shape[1])
        b_time_minor, c_time_minor = _time_minor(B), _time_minor(C)
        keep_decay = any(ctx.needs_input_grad)
        steps = length if keep_decay else max(1, DECAY_CHUNK_ELEMENTS // state.numel())
        for start in range(0, length, steps):
            decay = (dt[:, :, start:start + steps, None] * A[:, None, :]).exp_()
            _launch(kernels, kernels.forward, u, dt, decay, b_time_minor, c_time_minor, D, y, state, start)
        ctx.save_for_backward(u, dt, A, B, C, D, decay if keep_decay else None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kernels = _kernels()
        u, dt, A, B, C, D, decay = ctx.saved_tensors
        batch, channels, length = u.shape
        groups, n_state = B.shape[1], B.shape[2]
        tasks = batch * groups
        threads = min(torch.get_num_threads(), kernels.numba.config.NUMBA_NUM_THREADS)
        slices = min(channels // groups, -(-threads // tasks))  # split groups only to fill idle threads
        grad_u, grad_dt = torch.empty_like(u), torch.empty_like(dt)
        grad_A = u.new_empty(batch, channels, n_state)
        grad_D = u.new_empty(batch, channels)
        grad_B = u.new_zeros(slices, batch, groups, length, n_state)
        grad_C = torch.zeros_like(grad_B)
        _launch(
            kernels, kernels.backward,
            u, dt, A, decay, _time_minor(B), _time_minor(C), D, grad_y,
            grad_u, grad_dt, grad_A, grad_B, grad_C, grad_D,
        )
        grad_B, grad_C = (x.sum(0).transpose(-1, -2) for x in (grad_B, grad_C))
        return grad_u, grad_dt, grad_A.sum(0), grad_B, grad_C, grad_D.sum(0)


def selective_scan_numba(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """Exact, differentiable selective scan of CPU tensors through the numba kernels.

    float32 and float64 are scanned in their own dtype, half types in float32; y comes back in u's dtype.
    dt = softplus(delta + delta_bias) is computed by torch, which also differentiates it.
    Raises RuntimeError when numba is not importable, ValueError for non-CPU tensors or bad shapes.
    """
    check_inputs(u, delta, A, B, C, D, delta_bias)
    if u.device.type != "cpu":
        raise ValueError(f"the numba selective scan runs on CPU tensors, got {u.device}")
    out_dtype = u.dtype
    dtype = compute_dtype(out_dtype)
    u, delta, A, B, C = (x.to(dtype) for x in (u, delta, A, B, C))
    D = u.new_zeros(u.shape[1]) if D is None else D.to(dtype)
    delta_bias = None if delta_bias is None else delta_bias.to(dtype)
    dt = prepare_delta(delta, delta_bias, delta_softplus)
    return SelectiveScanNumba.apply(u, dt, A, B, C, D).to(out_dtype)
