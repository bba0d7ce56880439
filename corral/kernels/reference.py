"""Pure-torch twins of the fused kernels: the ground truth they are tested against.

`dequantize_packed` turns a `PackedWeight` back into float32 with GGUF's formulas,
evaluated in float32 in the same order as ggml (and `corral.quant`), so it is bit-exact
with dequantizing the original GGUF bytes. Every (sub-)block's values are `a * q + b`:

| type | q (unsigned field)   | sub-block | a, b per sub-block         | float32 order           |
|------|----------------------|-----------|----------------------------|-------------------------|
| Q4_0 | 4 bits               |        32 | d, -8 d                    | (q - 8) * d             |
| Q4_1 | 4 bits               |        32 | d, m                       | q * d + m               |
| Q5_0 | 4 + 1 bits           |        32 | d, -16 d                   | (q - 16) * d            |
| Q5_1 | 4 + 1 bits           |        32 | d, m                       | q * d + m               |
| Q8_0 | 8 bits (q + 128)     |        32 | d, -128 d                  | (q - 128) * d           |
| Q2_K | 2 bits               |        16 | d * sc, -dmin * m          | q * (d sc) - (dmin m)   |
| Q3_K | 2 + 1 bits           |        16 | d * sc, -4 d sc            | (q - 4) * (d sc)        |
| Q4_K | 4 bits               |        32 | d * sc, -dmin * m          | q * (d sc) - (dmin m)   |
| Q5_K | 4 + 1 bits           |        32 | d * sc, -dmin * m          | q * (d sc) - (dmin m)   |
| Q6_K | 4 + 2 bits           |        16 | d * sc, -32 d sc           | (q - 32) * (d sc)       |

GPTQ weights (qtype "GPTQ{bits}g{group}") are dequantized by their own twin,
`corral.kernels.gptq.dequantize_gptq_packed`: scale * (q - zero), in the file's column order.

`linear_reference` is `x @ W.T` on that weight, the large-M fallback of the kernels;
`swiglu_reference` is SwiGLU's silu(gate) * up on the output of an interleaved gate/up
weight (`packing.interleave_rows`).
"""

import torch

from corral.kernels.gptq import dequantize_gptq_packed, parse_gptq_qtype
from corral.kernels.packing import DENSE, PackedWeight, high_bits, low_bits, unpack_fields

# Offset subtracted from q before scaling, for the types whose formula has one.
_OFFSETS = {"Q4_0": 8, "Q5_0": 16, "Q8_0": 128, "Q3_K": 4, "Q6_K": 32}


def unpack_quants(pw: PackedWeight) -> torch.Tensor:
    """The unsigned quant of every weight of `pw`, (N, K) int32 (Q8_0: q + 128)."""
    q = unpack_fields(pw.tensors["qs"], low_bits(pw.qtype))  # (N, K)
    if high_bits(pw.qtype):
        q |= unpack_fields(pw.tensors["qh"], high_bits(pw.qtype)) << low_bits(pw.qtype)
    return q


def _k_sub_scales(pw: PackedWeight) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """K-quants: (d * sc, dmin * m or None, sub-block size), per sub-block (N, S) float32."""
    t, n = pw.tensors, pw.shape[0]
    if pw.qtype in ("Q4_K", "Q5_K"):
        scm = t["scales"].to(torch.int32)  # (N, K / 32)
        d = t["d"].float().repeat_interleave(8, dim=1)  # (N, K / 32)
        dmin = t["dmin"].float().repeat_interleave(8, dim=1)  # (N, K / 32)
        return d * (scm & 0xFF).float(), dmin * ((scm >> 8) & 0xFF).float(), 32
    d = t["d"].float().repeat_interleave(16, dim=1)  # (N, K / 16)
    if pw.qtype == "Q2_K":
        sc = t["scales"].contiguous().view(torch.uint8).reshape(n, -1)  # (N, K / 16)
        dmin = t["dmin"].float().repeat_interleave(16, dim=1)  # (N, K / 16)
        return d * (sc & 0x0F).float(), dmin * (sc >> 4).float(), 16
    sc = t["scales"].contiguous().view(torch.int8).reshape(n, -1)  # (N, K / 16), Q3_K, Q6_K
    return d * sc.float(), None, 16


def dequantize_packed(pw: PackedWeight) -> torch.Tensor:
    """The (N, K) float32 values of `pw`, bit-exact with ggml's dequantization."""
    if pw.qtype in DENSE:
        return pw.tensors["w"].float()
    if parse_gptq_qtype(pw.qtype):
        return dequantize_gptq_packed(pw)
    n, k = pw.shape
    q = unpack_quants(pw)  # (N, K)
    if pw.qtype in _OFFSETS:
        q = q - _OFFSETS[pw.qtype]
    if pw.qtype in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        q = q.float().reshape(n, k // 32, 32)  # (N, blocks, 32)
        x = q * pw.tensors["d"].float().unsqueeze(-1)
        if "dmin" in pw.tensors:
            x = x + pw.tensors["dmin"].float().unsqueeze(-1)
        return x.reshape(n, k)
    scale, offset, sub = _k_sub_scales(pw)  # (N, K / sub) each
    x = q.float().reshape(n, k // sub, sub) * scale.unsqueeze(-1)  # (N, subs, sub)
    if offset is not None:
        x = x - offset.unsqueeze(-1)
    return x.reshape(n, k)


def linear_reference(x: torch.Tensor, pw: PackedWeight) -> torch.Tensor:
    """`x @ W.T` for x (..., K): W dequantized to x's dtype, result in x's dtype."""
    w = dequantize_packed(pw).to(x.dtype)  # (N, K)
    return torch.nn.functional.linear(x, w)


def swiglu_reference(pairs: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for pairs (..., 2n) whose columns alternate gate 0, up 0, gate 1,
    ...: (..., n)."""
    return torch.nn.functional.silu(pairs[..., 0::2]) * pairs[..., 1::2]
