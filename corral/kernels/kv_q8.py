"""Q8_0 storage for the KV cache (llama.cpp's `--cache-type-k q8_0` / `--cache-type-v q8_0`).

A cached key or value vector of head dim D is stored as D / 32 blocks of 32 int8 codes
with one float16 scale per block, value = code * scale: 8.5 bits per value instead of 16.
Quantization is ggml's `quantize_row_q8_0_ref` (and gguf-py's `quants.quantize`): per
block d = max|x| / 127, code = round-half-away-from-zero(x / d), d stored as float16.

Layout (the decode attention kernel reads it directly):
    codes  int8    (..., D)        the vectors' codes, in order
    scales float16 (..., D // 32)  scale of codes[..., 32 j : 32 j + 32]
"""

import torch

Q8_BLOCK = 32


def check_head_dim(head_dim: int) -> None:
    """Raise ValueError unless vectors of `head_dim` values split into Q8_0 blocks."""
    if head_dim % Q8_BLOCK:
        raise ValueError(
            f"a q8_0 KV cache needs a head dimension divisible by {Q8_BLOCK}, got {head_dim}"
        )


def quantize_q8_0(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., D) float -> (codes int8 (..., D), scales float16 (..., D // 32))."""
    check_head_dim(x.shape[-1])
    blocks = x.float().unflatten(-1, (-1, Q8_BLOCK))  # (..., D/32, 32)
    scale = blocks.abs().amax(-1, keepdim=True) / 127  # (..., D/32, 1)
    inverse = torch.where(scale == 0, 0.0, 1.0 / scale)
    scaled = blocks * inverse
    codes = torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)  # C's roundf
    return codes.to(torch.int8).flatten(-2), scale.squeeze(-1).to(torch.float16)


def dequantize_q8_0(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(codes (..., D), scales (..., D // 32)) -> values (..., D) in `dtype`."""
    blocks = codes.float().unflatten(-1, (-1, Q8_BLOCK))  # (..., D/32, 32)
    return (blocks * scales.float()[..., None]).flatten(-2).to(dtype)
