"""Numerical kernels of DMDNet: the selective scan and its backends."""
from .scan import (
    SCAN_IMPL_ENV,
    SCAN_MEMORY_BUDGET_BYTES,
    scan_backend,
    selective_scan,
    selective_scan_chunked,
    selective_scan_reference,
)
from .scan_numba import numba_unavailable_reason, selective_scan_numba

__all__ = [
    "SCAN_IMPL_ENV",
    "SCAN_MEMORY_BUDGET_BYTES",
    "numba_unavailable_reason",
    "scan_backend",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_numba",
    "selective_scan_reference",
]
