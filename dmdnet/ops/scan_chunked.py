"""Exact, vectorised, memory-bounded selective scan in plain torch (CPU and GPU).

Same contract as `scan_reference.selective_scan_reference`."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .scan_reference import check_inputs, compute_dtype, prepare_delta

__all__ = ["SCAN_MEMORY_BUDGET_BYTES", "selective_scan_chunked"]

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
    check_inputs(u, delta, A, B, C, D, delta_bias)
    out_dtype = u.dtype
    dtype = compute_dtype(out_dtype)
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
        dt = prepare_delta(delta[..., part], delta_bias, delta_softplus)
        y_part, state = _scan_segment(u[..., part], dt, A_log2, B[..., part], C[..., part], state, chunk_length)
        if D is not None:
            y_part = torch.addcmul(y_part, D[:, None], u[..., part])
        y[..., part] = y_part
    return y.to(out_dtype)
