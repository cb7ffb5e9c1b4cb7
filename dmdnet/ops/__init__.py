"""Numerical kernels of DMDNet: the selective scan and its backends."""
from .scan import (
    SCAN_IMPL_ENV,
    SCAN_MEMORY_BUDGET_BYTES,
    scan_backend,
    selective_scan,
    selective_scan_chunked,
    selective_scan_reference,
)

__all__ = [
    "SCAN_IMPL_ENV",
    "SCAN_MEMORY_BUDGET_BYTES",
    "scan_backend",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_reference",
]
