"""Building blocks whose memory-saving paths must not change results."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dmdnet.network.layers import GatedFeedForward


def _unbanded(ffn: GatedFeedForward, x: torch.Tensor) -> torch.Tensor:
    a, b = ffn.dwconv(ffn.expand(x)).chunk(2, dim=1)
    return ffn.project(F.gelu(a) * b)


@pytest.mark.parametrize("height, width", [(1, 1), (2, 5), (9, 7), (33, 20)])
@pytest.mark.parametrize("rows_per_band", [1, 2, 4])
def test_feed_forward_in_row_bands_equals_one_piece(height, width, rows_per_band):
    torch.manual_seed(height * width)
    ffn = GatedFeedForward(6, 2.66).double()
    x = torch.randn(2, 6, height, width, dtype=torch.float64)
    ffn.band_elements = 2 * ffn.dwconv.in_channels * width * rows_per_band
    with torch.no_grad():
        torch.testing.assert_close(ffn(x), _unbanded(ffn, x), rtol=1e-13, atol=1e-13)


def test_feed_forward_bands_only_large_maps():
    ffn = GatedFeedForward(4, 2.66)
    calls = []
    band = ffn._band
    ffn._band = lambda *args: calls.append(args[0].shape[-2]) or band(*args)
    ffn(torch.randn(1, 4, 8, 8))
    assert calls == [8]
    ffn.band_elements = ffn.dwconv.in_channels * 8 * 3
    ffn(torch.randn(1, 4, 8, 8))
    assert calls[1:] == [4, 5, 3]  # bands of 3, 3 and 2 rows, each with a one-row halo inside the image
