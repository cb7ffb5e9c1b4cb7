"""DSMamba: the depth-synergised decoupling Mamba block (spec section 4).

Two streams share one selective-scan layer but scan pixels in different orders:
transmission features follow the regional DAScan order, reflection features the
global one, both steered by a proximity map derived from depth. Depth also enters
the SSM itself by blending its own B/C projections into the input's (DS-SSM).
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.scan import selective_scan
from .dascan import global_order, regional_order
from .diagnostics import CallSite, ForwardObserver
from .layers import lrelu
from .precision import output_dtype

NUM_DIRECTIONS = 2


def positional_encoding(height: int, width: int, channels: int) -> torch.Tensor:
    """(channels, height*width) sine-cosine code of pixel coordinates, as released.

    The released code builds [sin(x f), cos(x f), sin(y f), cos(y f)] and cuts it
    to `channels` entries, so for even widths only the x terms survive (and only
    the terms that survive are computed). It is computed in float32, like the reference.
    """
    half = channels // 2
    freq = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float32) / half))
    ys = torch.arange(height, dtype=torch.float32) / (height - 1)
    xs = torch.arange(width, dtype=torch.float32) / (width - 1)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    terms = (fn(freq[:, None] * grid.reshape(1, -1)) for grid in (grid_x, grid_y) for fn in (torch.sin, torch.cos))
    code = torch.cat(list(itertools.islice(terms, math.ceil(channels / half) if half else 0))
                     or [torch.zeros(0, height * width)])
    return F.pad(code[:channels], (0, 0, 0, max(0, channels - code.shape[0])))


def _gather_sequence(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B or 1, D, L) in spatial order, index (B, L) -> (B, D, L) in scan order."""
    batch, length = index.shape
    values = values.expand(batch, values.shape[1], length)
    return torch.gather(values, 2, index[:, None, :].expand(-1, values.shape[1], -1))


class DSMamba(nn.Module):
    """Selective-scan mixing of a (T, R) feature pair guided by a proximity feature map."""

    float32_tensors = ("a_log_transmission", "a_log_reflection", "skip_transmission", "skip_reflection",
                       "dt_proj_bias", "proximity_fuse.weight", "proximity_fuse.bias")
    """The scan's A, D and step bias, and the conv that makes the DAScan sort keys (`dmdnet.network.precision`)."""

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
        depth_weight = torch.sigmoid(lrelu(self.depth_gate(proximity))).reshape(batch, -1, h * w)
        position = positional_encoding(h, w, c).to(x_t)
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
        tokens, order = self._tokens_in_scan_order(x, proximity, position, regional, report)
        decay = -torch.exp(a_log.float()).to(output_dtype(x.dtype))
        unscanned = x.new_zeros(batch, c, length)
        for k, index in enumerate((order, order.flip(-1))):  # one direction at a time bounds memory
            channels = slice(k * c, (k + 1) * c)
            y = self._scan(k, index, tokens, depth_bc, depth_weight, decay[channels], skip[channels])
            unscanned.scatter_add_(2, index[:, None, :].expand_as(y), y)
        y = unscanned.transpose(1, 2)
        y = F.layer_norm(y, (c,), self.out_norm.weight, self.out_norm.bias, self.out_norm.eps)
        z = F.conv2d(x, self.in_proj.weight[c:, :, None, None])  # the gate half of in_proj, made late
        y = y * F.silu(z.reshape(batch, c, length).transpose(1, 2))
        return self.out_proj(y).transpose(1, 2).reshape(batch, c, h, w)

    def _scan(self, k: int, index: torch.Tensor, tokens: torch.Tensor, depth_bc: torch.Tensor,
              depth_weight: torch.Tensor, decay: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """The selective scan of direction `k` along `index`; (B, C, L) in scan order."""
        n, r = self.d_state, self.dt_rank
        u = _gather_sequence(tokens, index)
        dt, b_in, c_in = torch.einsum("bdl,cd->bcl", u, self.x_proj_weight[k]).split([r, n, n], dim=1)
        b_depth, c_depth = _gather_sequence(depth_bc[:, k], index).split([n, n], dim=1)
        weight = _gather_sequence(depth_weight, index)
        b_mix = (1 - weight) * b_in + weight * b_depth
        c_mix = (1 - weight) * c_in + weight * c_depth
        delta = torch.einsum("brl,dr->bdl", dt, self.dt_proj_weight[k])
        return selective_scan(u, delta, decay, b_mix[:, None], c_mix[:, None], skip,
                              delta_bias=self.dt_proj_bias[k], delta_softplus=True)

    def _tokens_in_scan_order(self, x: torch.Tensor, proximity: torch.Tensor, position: torch.Tensor,
                              regional: bool, report: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """The scanned features (B, C, L) with their positional code, and the stream's DAScan order."""
        batch, c, h, w = x.shape
        x = F.silu(self.dwconv(F.conv2d(x, self.in_proj.weight[:c, :, None, None])))
        fuse_input = torch.cat([x, proximity], dim=1).to(self.proximity_fuse.weight.dtype)
        stream_proximity = torch.sigmoid(lrelu(self.proximity_fuse(fuse_input)))
        order = regional_order(stream_proximity) if regional else global_order(stream_proximity)
        site, block, stream, observer = report
        if observer is not None:
            observer.add_scan(site, block, stream, "regional" if regional else "global",
                              stream_proximity, order)
        return x.reshape(batch, c, h * w) + position, order
