"""DSMamba: the depth-synergised decoupling Mamba block (spec section 4).

Two streams share one selective-scan layer but scan pixels in different orders:
transmission features follow the regional DAScan order, reflection features the
global one, both steered by a proximity map derived from depth. Depth also enters
the SSM itself by blending its own B/C projections into the input's (DS-SSM).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dascan import global_order, regional_order
from .diagnostics import CallSite, ForwardObserver
from .layers import lrelu
from .ops.scan import selective_scan

NUM_DIRECTIONS = 2


def positional_encoding(height: int, width: int, channels: int) -> torch.Tensor:
    """(channels, height*width) sine-cosine code of pixel coordinates, as released.

    The released code builds [sin(x f), cos(x f), sin(y f), cos(y f)] and cuts it
    to `channels` entries, so for even widths only the x terms survive. It is
    computed in float32, like the reference.
    """
    half = channels // 2
    freq = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float32) / half))
    ys = torch.arange(height, dtype=torch.float32) / (height - 1)
    xs = torch.arange(width, dtype=torch.float32) / (width - 1)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    pos_x = grid_x.reshape(-1, 1) * freq
    pos_y = grid_y.reshape(-1, 1) * freq
    code = torch.cat([pos_x.sin(), pos_x.cos(), pos_y.sin(), pos_y.cos()], dim=1)
    if code.shape[1] >= channels:
        code = code[:, :channels]
    else:
        code = F.pad(code, (0, channels - code.shape[1]))
    return code.t()


def _both_directions(order: torch.Tensor) -> torch.Tensor:
    """(B, L) order -> (B, 2, L): forward and reversed."""
    return torch.stack([order, order.flip(-1)], dim=1)


def _gather_sequence(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, K or 1, D, L) in spatial order, index (B, K, L) -> (B, K, D, L) in scan order."""
    batch, directions, length = index.shape
    values = values.expand(batch, directions, values.shape[2], length)
    return torch.gather(values, 3, index[:, :, None, :].expand(-1, -1, values.shape[2], -1))


class DSMamba(nn.Module):
    """Selective-scan mixing of a (T, R) feature pair guided by a proximity feature map."""

    def __init__(self, channels: int, d_state: int = 16):
        super().__init__()
        c, n = channels, d_state
        self.channels = c
        self.d_state = n
        self.dt_rank = math.ceil(c / 16)
        k = NUM_DIRECTIONS
        self.in_proj = nn.Linear(c, 2 * c, bias=False)
        self.dwconv = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.proximity_fuse = nn.Conv2d(2 * c, 1, 3, padding=1)
        self.x_proj_weight = nn.Parameter(torch.zeros(k, self.dt_rank + 2 * n, c))
        self.dt_proj_weight = nn.Parameter(torch.zeros(k, c, self.dt_rank))
        self.dt_proj_bias = nn.Parameter(torch.zeros(k, c))
        a_log = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(k * c, 1)
        self.a_log_transmission = nn.Parameter(a_log.clone())
        self.a_log_reflection = nn.Parameter(a_log.clone())
        self.skip_transmission = nn.Parameter(torch.ones(k * c))
        self.skip_reflection = nn.Parameter(torch.ones(k * c))
        self.depth_encoder = nn.Conv2d(c, c, 1)
        self.depth_proj_weight = nn.Parameter(torch.zeros(k, 2 * n, c))
        self.depth_gate = nn.Conv2d(c, n, 1)
        self.out_norm = nn.LayerNorm(c)
        self.out_proj = nn.Linear(c, c, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Mamba-style initialisation for training from scratch."""
        c, r = self.channels, self.dt_rank
        bound = 1 / math.sqrt(c)
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        nn.init.uniform_(self.depth_proj_weight, -bound, bound)
        nn.init.uniform_(self.dt_proj_weight, -r ** -0.5, r ** -0.5)
        dt = torch.exp(torch.rand(self.dt_proj_bias.shape) * (math.log(0.1) - math.log(0.001))
                       + math.log(0.001)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x_t: torch.Tensor, x_r: torch.Tensor, proximity: torch.Tensor,
                site: CallSite | None = None, block: int = 0,
                observer: ForwardObserver | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        batch, c, h, w = x_t.shape
        depth_feat = lrelu(self.depth_encoder(proximity)).reshape(batch, c, h * w)
        depth_bc = torch.einsum("bdl,kcd->bkcl", depth_feat, self.depth_proj_weight)
        depth_weight = torch.sigmoid(lrelu(self.depth_gate(proximity))).reshape(batch, 1, -1, h * w)
        position = positional_encoding(h, w, c).to(x_t)[None, None]
        shared = (proximity, depth_bc, depth_weight, position)
        out_t = self._stream(x_t, *shared, self.a_log_transmission, self.skip_transmission,
                             regional=True, report=(site, block, "T", observer))
        out_r = self._stream(x_r, *shared, self.a_log_reflection, self.skip_reflection,
                             regional=False, report=(site, block, "R", observer))
        return out_t, out_r

    def _stream(self, x: torch.Tensor, proximity: torch.Tensor, depth_bc: torch.Tensor,
                depth_weight: torch.Tensor, position: torch.Tensor, a_log: torch.Tensor,
                skip: torch.Tensor, regional: bool, report: tuple) -> torch.Tensor:
        batch, c, h, w = x.shape
        length = h * w
        n, r = self.d_state, self.dt_rank
        xz = F.conv2d(x, self.in_proj.weight[:, :, None, None])
        x, z = xz.chunk(2, dim=1)
        x = F.silu(self.dwconv(x))

        stream_proximity = torch.sigmoid(lrelu(self.proximity_fuse(torch.cat([x, proximity], dim=1))))
        order = regional_order(stream_proximity) if regional else global_order(stream_proximity)
        site, block, stream, observer = report
        if observer is not None:
            observer.add_scan(site, block, stream, "regional" if regional else "global",
                                 stream_proximity, order)

        index = _both_directions(order)
        u = _gather_sequence(x.reshape(batch, 1, c, length), index)
        u = u + _gather_sequence(position, index)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", u, self.x_proj_weight)
        dt, b_in, c_in = x_dbl.split([r, n, n], dim=2)
        b_depth, c_depth = _gather_sequence(depth_bc, index).split([n, n], dim=2)
        weight = _gather_sequence(depth_weight, index)
        b_mix = (1 - weight) * b_in + weight * b_depth
        c_mix = (1 - weight) * c_in + weight * c_depth
        delta = torch.einsum("bkrl,kdr->bkdl", dt, self.dt_proj_weight)

        y = selective_scan(
            u.reshape(batch, -1, length), delta.reshape(batch, -1, length),
            -torch.exp(a_log.float()).to(u.dtype), b_mix, c_mix, skip,
            delta_bias=self.dt_proj_bias.reshape(-1), delta_softplus=True,
        ).reshape(batch, NUM_DIRECTIONS, c, length)

        unscanned = torch.zeros_like(y).scatter(3, index[:, :, None, :].expand_as(y), y)
        y = (unscanned[:, 0] + unscanned[:, 1]).transpose(1, 2)
        y = F.layer_norm(y, (c,), self.out_norm.weight, self.out_norm.bias, self.out_norm.eps)
        y = y * F.silu(z.reshape(batch, c, length).transpose(1, 2))
        return self.out_proj(y).transpose(1, 2).reshape(batch, c, h, w)
