"""The published import path of the DAScan orders (`dmdnet.network.dascan` holds them)."""
from .network.dascan import global_order, regional_order

__all__ = ["global_order", "regional_order"]
