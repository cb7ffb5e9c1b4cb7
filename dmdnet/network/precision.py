"""Inference dtypes: float32/float64 everywhere, or bfloat16/float16 with float32 where it counts.

In half precision the convolutions, projections and feed-forwards run in the half type, but
the parts whose results are decisions or long accumulations keep float32:

* the selective scan: its state, A = -exp(A_log), D and the step bias (every scan path
  accumulates in float32; mamba-ssm's kernel takes A, D and the bias in float32);
* the DAScan sort keys: the stream's proximity map is computed in float32, since half-type
  values tie in bulk and ties reorder the scan;
* the MECM gate (a top-k of four experts, normalised by their spread) and the memory reads
  (softmax over slots, the two best slots per pixel), against float32 memory banks;
* the statistics of the channel layer norms (a mean subtracted from values much larger
  than the spread cancels in a half type);
* the frozen ImageNet encoder of DMDNet-Lite's ImageNet prior (sixteen blocks deep; its
  features come back in the half type);
* in `Pipeline`, the input at full size, the composition of a downscaled run and every
  output (float32).

Modules name their float32 tensors in a `float32_tensors` attribute; `cast_module` keeps them.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn as nn

HALF_DTYPES = (torch.bfloat16, torch.float16)
DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "float64": torch.float64,
               "fp64": torch.float64, "double": torch.float64, "bfloat16": torch.bfloat16,
               "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
               "half": torch.float16}
CLI_DTYPES = ("float32", "float64", "bfloat16", "float16")


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """torch.float32 or "float32"/"fp32"/"float64"/"bfloat16"/"bf16"/"float16"/... -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES.values():
            raise ValueError(f"unsupported dtype {dtype}: use one of {', '.join(CLI_DTYPES)}")
        return dtype
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"unsupported dtype {dtype!r}: use one of {', '.join(CLI_DTYPES)}")
    return DTYPE_NAMES[dtype]


def output_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype results come back in: float64 stays, anything narrower is widened to float32."""
    return torch.promote_types(dtype, torch.float32)


def float32_tensor_names(module: nn.Module) -> set[str]:
    """Full names of the parameters and buffers that the modules inside `module` keep in float32."""
    return {f"{prefix}.{name}".lstrip(".") for prefix, child in module.named_modules()
            for name in getattr(child, "float32_tensors", ())}


@torch.no_grad()
def cast_module(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Casts `module`'s floating-point parameters and buffers to `dtype` in place; in a half
    type the ones listed in `float32_tensors` become float32 instead."""
    kept = float32_tensor_names(module) if dtype in HALF_DTYPES else set()
    for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float32 if name in kept else dtype)
    return module

