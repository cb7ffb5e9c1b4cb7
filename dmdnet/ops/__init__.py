"""Numerical kernels of DMDNet: the selective scan (`scan` dispatches to the reference op in
`scan_reference`, the torch `scan_chunked` or the compiled `scan_numba`)."""
from .scan import SCAN_IMPL_ENV, scan_backend, selective_scan
from .scan_chunked import SCAN_MEMORY_BUDGET_BYTES, selective_scan_chunked
from .scan_numba import numba_unavailable_reason, selective_scan_numba
from .scan_reference import selective_scan_reference

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
