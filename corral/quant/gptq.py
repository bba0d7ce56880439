"""GPTQ weights: unpack the int32 words of AutoGPTQ / GPTQModel checkpoints and dequantize.

A run of 32 b-bit values is stored in b int32 words read as one little-endian bit stream:
value j occupies stream bits [b*j, b*j + b), stream bit i being bit i % 32 of word i // 32.
For b = 2, 4, 8 no value crosses a word; for b = 3 the values 10 and 21 straddle two words:

    word 0: v0 .. v9 at bits 0..29,  v10 bits 0-1 at bits 30-31
    word 1: v10 bit 2 at bit 0,      v11 .. v20 at bits 1..30,  v21 bit 0 at bit 31
    word 2: v21 bits 1-2 at bits 0-1, v22 .. v31 at bits 2..31

``qweight`` (K*b/32, N) is packed down its rows (the K input features), ``qzeros``
(G, N*b/32) along its columns (the N outputs). The zero point convention depends on the
checkpoint format: AutoGPTQ's "gptq" (v1) stores zero - 1, and its reference dequantizer
reads the field and adds 1 (so a stored all-ones field means 2^b, not 0); GPTQModel's
"gptq_v2" stores the zero itself.
"""

from __future__ import annotations

import torch

from corral.weights.qtensor import QTensor

SUPPORTED_BITS = (2, 3, 4, 8)
RUN = 32  # values per run of `bits` words
CHECKPOINT_FORMATS = ("gptq", "gptq_v2")
_CHUNK_RUNS = 1 << 14  # runs unpacked at once: bounds the int64 working memory


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Unpack int32 words (R*bits/32, C), packed down axis 0, into int16 values (R, C)."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    n_words, n_cols = packed.shape
    if n_words % bits:
        raise ValueError(f"{n_words} words do not split into runs of {bits} words")
    n_runs = n_words // bits
    out = torch.empty(n_runs, RUN, n_cols, dtype=torch.int16, device=packed.device)
    mask = (1 << bits) - 1
    runs = packed.reshape(n_runs, bits, n_cols)  # (runs, bits, C)
    for first in range(0, n_runs, _CHUNK_RUNS):
        words = runs[first : first + _CHUNK_RUNS].to(torch.int64) & 0xFFFFFFFF  # unsigned
        for j in range(RUN):
            word, shift = divmod(bits * j, 32)
            value = words[:, word] >> shift  # (chunk, C)
            if shift + bits > 32:  # straddles into the next word
                value = value | (words[:, word + 1] << (32 - shift))
            out[first : first + _CHUNK_RUNS, j] = (value & mask).to(torch.int16)
    return out.reshape(n_runs * RUN, n_cols)  # (R, C)


def unpack_columns(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Unpack int32 words (R, C*bits/32), packed along axis 1, into int16 values (R, C)."""
    return unpack_rows(packed.t(), bits).t()  # (R, C)


def zero_points(qzeros: torch.Tensor, bits: int, checkpoint_format: str) -> torch.Tensor:
    """True zero points (G, N) int16 from stored ``qzeros`` (G, N*bits/32)."""
    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise ValueError(f"unknown GPTQ checkpoint format {checkpoint_format!r}")
    stored = unpack_columns(qzeros, bits)  # (G, N)
    return stored + 1 if checkpoint_format == "gptq" else stored


def dequantize_gptq(weight: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The dense (N, K) weight of a GPTQ QTensor, computed in float32 and cast to `dtype`.

    (code - zero) is a small integer and the scale a float16 value, so the float32 product
    is exact: the result equals any correct dequantizer's to the last bit.
    """
    codes = unpack_rows(weight.qweight, weight.bits)  # (K, N)
    groups = weight.g_idx.long()  # (K,)
    steps = (codes - weight.zeros[groups]).float()  # (K, N)
    dense = weight.scales[groups].float() * steps  # (K, N)
    return dense.t().to(dtype).contiguous()  # (N, K)
