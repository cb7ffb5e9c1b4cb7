"""The selective scan's contract, its input checks and the reference op (the test oracle).

Shapes (grouped B/C, no z gate), with mamba_ssm's `selective_scan_fn` semantics::

    u, delta: (batch, D, L)    A: (D, N)    B, C: (batch, G, N, L), G divides D
    D: (D,) or None            delta_bias: (D,) or None

Channel ``d`` reads group ``d // (D // G)`` of B and C. With
``dt = softplus(delta + delta_bias)`` (or without softplus) and ``h_0 = 0``::

    h_t = exp(dt_t * A[d]) * h_{t-1} + dt_t * B[g, :, t] * u_t
    y_t = sum_n C[g, n, t] * h_t[n] + D[d] * u_t

The fast backends (`scan_chunked`, `scan_numba`, mamba_ssm's CUDA kernel) share this contract and
the checks below; `scan.selective_scan` picks one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["check_inputs", "compute_dtype", "prepare_delta", "selective_scan_reference"]


def check_inputs(
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


def prepare_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
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
    check_inputs(u, delta, A, B, C, D, delta_bias)
    channels, length = u.shape[1], u.shape[2]
    group_size = channels // B.shape[1]
    dt = prepare_delta(delta, delta_bias, delta_softplus)
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


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other float type is scanned in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
