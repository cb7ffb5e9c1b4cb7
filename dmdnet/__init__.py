"""DMDNet: depth-synergised Mamba with memory experts for reflection separation (AAAI 2026).

    import dmdnet
    pipe = dmdnet.load_pipeline()            # finds the weight files (see dmdnet.weights)
    result = pipe.separate("photo.jpg")      # result.transmission, result.reflection, result.depth
"""
from .checkpoints import CheckpointError
from .images import InvalidImageError
from .network.config import DMDNetConfig
from .network.diagnostics import Diagnostics
from .network.model import DMDNet
from .pipeline import Pipeline, SeparationResult, load_pipeline

__all__ = [
    "CheckpointError", "DMDNet", "DMDNetConfig", "Diagnostics", "InvalidImageError",
    "Pipeline", "SeparationResult", "load_pipeline",
]
