"""A recorded forward pass (two levels, both streams, one MECM call each) for the view tests."""
from __future__ import annotations

import pytest
import torch

from dmdnet.network.dascan import global_order, regional_order
from dmdnet.network.diagnostics import CallSite, Diagnostics


@pytest.fixture
def recorded_diagnostics() -> Diagnostics:
    record = Diagnostics()
    for level, (h, w) in ((2, (4, 5)), (1, (8, 10))):
        proximity = torch.rand(1, 1, h, w)
        record.add_scan(CallSite(level), 0, "T", "regional", proximity, regional_order(proximity))
        record.add_scan(CallSite(level), 0, "R", "global", proximity, global_order(proximity))
        record.add_experts(CallSite(level), "T", torch.tensor([[0.6, 0.0, 0.4, 0.0]]),
                           {0: torch.rand(1, h, w), 2: torch.rand(1, h, w)})
    return record
