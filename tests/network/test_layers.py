"""Building blocks whose memory-saving paths must not change results."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dmdnet.network.layers import ChannelLayerNorm, GatedFeedForward


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


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_channel_layer_norm_is_the_per_pixel_formula_in_the_input_layout(memory_format):
    """The fused layer norm on a channels-last view computes what the spec writes out per pixel."""
    norm = ChannelLayerNorm(6, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.normal_(generator=torch.Generator().manual_seed(1))
        norm.bias.normal_(generator=torch.Generator().manual_seed(2))
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    mean = x.mean(1, keepdim=True)
    expected = (x - mean) / ((x - mean).pow(2).mean(1, keepdim=True) + 1e-5).sqrt()
    expected = expected * norm.weight[:, None, None] + norm.bias[:, None, None]
    actual = norm(x.contiguous(memory_format=memory_format))
    assert actual.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_channel_layer_norm_normalises_half_types_in_float32():
    norm = ChannelLayerNorm(4, eps=1e-6)
    x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(4))
    actual = norm(x.bfloat16())
    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual, norm(x.bfloat16().float()).bfloat16(), rtol=0, atol=0)
