"""Dense float types F32, F16 and BF16: one element per "block", read with dtype views.

| type | bytes | layout (little-endian)                      | to float32                  |
|------|-------|---------------------------------------------|-----------------------------|
| F32  |     4 | IEEE binary32                               | as is                       |
| F16  |     2 | IEEE binary16: sign, 5-bit exp, 10-bit frac | exact widening              |
| BF16 |     2 | the top 16 bits of a binary32               | bits << 16 (exact widening) |
"""

import torch

from corral.quant.dequant import register_dequantizer, reinterpret
from corral.quant.ggml_types import GGMLType


@register_dequantizer(GGMLType.F32)
def dequantize_f32(blocks: torch.Tensor) -> torch.Tensor:
    """F32 blocks (n, 4) uint8 -> (n, 1) float32, a view when the bytes are aligned."""
    return reinterpret(blocks, torch.float32)  # (n, 1)


@register_dequantizer(GGMLType.F16)
def dequantize_f16(blocks: torch.Tensor) -> torch.Tensor:
    """F16 blocks (n, 2) uint8 -> (n, 1) float32."""
    return reinterpret(blocks, torch.float16).float()  # (n, 1)


@register_dequantizer(GGMLType.BF16)
def dequantize_bf16(blocks: torch.Tensor) -> torch.Tensor:
    """BF16 blocks (n, 2) uint8 -> (n, 1) float32."""
    return reinterpret(blocks, torch.bfloat16).float()  # (n, 1)
