"""ggml's k-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K: super-blocks of 256 weights.

A super-block is split into sub-blocks (16 of 16 weights, or 8 of 32) that each carry a
small integer scale (and min), itself scaled by the super-block's fp16 `d` (and `dmin`).
Layouts from ggml-common.h, byte offsets within a super-block, all little-endian:

block_q2_K, 84 bytes, 16 sub-blocks of 16; x = (d * sc) * q - (dmin * m)
| off | field      | type | bytes | meaning                                              |
|-----|------------|------|-------|------------------------------------------------------|
|   0 | scales[16] | u8   |    16 | sub-block j: sc = scales[j] & 0xF, m = scales[j] >> 4 |
|  16 | qs[64]     | u8   |    64 | 2-bit quants (see "Quant order")                     |
|  80 | d          | f16  |     2 | super-scale of the scales                            |
|  82 | dmin       | f16  |     2 | super-scale of the mins                              |

block_q3_K, 110 bytes, 16 sub-blocks of 16; x = (d * (sc - 32)) * (q - 4 * !hbit)
| off | field      | type | bytes | meaning                                              |
|-----|------------|------|-------|------------------------------------------------------|
|   0 | hmask[32]  | u8   |    32 | high bit of each quant; a set bit means no -4 offset |
|  32 | qs[64]     | u8   |    64 | low 2 bits of the quants                             |
|  96 | scales[12] | u8   |    12 | 16 packed 6-bit scales (below)                       |
| 108 | d          | f16  |     2 | super-scale                                          |

block_q4_K, 144 bytes, 8 sub-blocks of 32; x = (d * sc) * q - (dmin * m)
| off | field      | type | bytes | meaning                                              |
|-----|------------|------|-------|------------------------------------------------------|
|   0 | d          | f16  |     2 | super-scale of the scales                            |
|   2 | dmin       | f16  |     2 | super-scale of the mins                              |
|   4 | scales[12] | u8   |    12 | 8 scales + 8 mins, 6 bits each (below)               |
|  16 | qs[128]    | u8   |   128 | 4-bit quants                                         |

block_q5_K, 176 bytes, 8 sub-blocks of 32; x = (d * sc) * q - (dmin * m)
| off | field      | type | bytes | meaning                                              |
|-----|------------|------|-------|------------------------------------------------------|
|   0 | d          | f16  |     2 | super-scale of the scales                            |
|   2 | dmin       | f16  |     2 | super-scale of the mins                              |
|   4 | scales[12] | u8   |    12 | 8 scales + 8 mins, packed as in Q4_K                 |
|  16 | qh[32]     | u8   |    32 | bit 4 of the quants                                  |
|  48 | qs[128]    | u8   |   128 | bits 0-3 of the quants                               |

block_q6_K, 210 bytes, 16 sub-blocks of 16; x = (d * sc) * (q - 32)
| off | field      | type | bytes | meaning                                              |
|-----|------------|------|-------|------------------------------------------------------|
|   0 | ql[128]    | u8   |   128 | bits 0-3 of the quants                               |
| 128 | qh[64]     | u8   |    64 | bits 4-5 of the quants                               |
| 192 | scales[16] | i8   |    16 | signed 8-bit sub-block scales                        |
| 208 | d          | f16  |     2 | super-scale                                          |

Q3_K scales, 16 x 6 bits in 12 bytes: scale j has its low 4 bits in byte j % 8 (low
nibble for j < 8, high nibble for j >= 8) and its high 2 bits in byte 8 + j % 4 at bit
2 * (j // 4):
    byte  0..7 : [ sc(j+8) bits 0-3 | sc(j) bits 0-3 ]
    byte 8..11 : [ sc(j+12) 4-5 | sc(j+8) 4-5 | sc(j+4) 4-5 | sc(j) 4-5 ]   (j = byte - 8)

Q4_K / Q5_K scales and mins, 8 + 8 x 6 bits in 12 bytes (j = 0..3):
    byte j     : [ sc(j+4) bits 4-5 | sc(j) bits 0-5 ]
    byte j + 4 : [ m(j+4) bits 4-5  | m(j) bits 0-5 ]
    byte j + 8 : [ m(j+4) bits 0-3  | sc(j+4) bits 0-3 ]

Quant order: a quant field of b bits packed into bytes is read in runs of 32 (64 for
Q6_K's ql) bytes; each run yields, bit slice by bit slice starting from the lowest,
consecutive groups of 32 (64) weights. So for Q2_K's qs, weights 0..31 are bits 0-1 of
qs[0..31], weights 32..63 bits 2-3 of qs[0..31], ..., weights 128..159 bits 0-1 of
qs[32..63]. A 1-bit field (hmask, qh of Q5_K) is one run: weights 32k..32k+31 are bit k.

Each formula is evaluated in float32 in exactly the order written (as gguf-py does),
which is what makes the results bit-exact; the last product and difference are taken in
place on the freshly converted quants (`q.mul_(dl).sub_(ml)`: same operations, fewer
temporaries, where the time goes for large tensors).
"""

import torch

from corral.quant.dequant import f16_field, register_dequantizer, unpack_bits
from corral.quant.ggml_types import GGMLType


def _unpack_runs(packed: torch.Tensor, bits: int, run: int) -> torch.Tensor:
    """Quant field (n, k) uint8 of `bits`-bit values -> (n, k * 8 // bits) uint8 in order."""
    n, k = packed.shape
    runs = packed.reshape(n, k // run, run)  # (n, k / run, run)
    fields = unpack_bits(runs, bits, 8 // bits)  # (n, k / run, 8 / bits, run)
    return fields.reshape(n, k * 8 // bits)  # (n, k * 8 / bits)


def _q4k_scales_mins(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K / Q5_K packed scales (n, 12) uint8 -> 6-bit scales and mins, each (n, 8) uint8."""
    packed = scales.reshape(-1, 3, 4)  # (n, 3, 4)
    lo_sc, lo_m, hi = packed[:, 0], packed[:, 1], packed[:, 2]  # (n, 4) each
    sc = torch.cat([lo_sc & 0x3F, (hi & 0x0F) | ((lo_sc >> 2) & 0x30)], dim=-1)  # (n, 8)
    m = torch.cat([lo_m & 0x3F, (hi >> 4) | ((lo_m >> 2) & 0x30)], dim=-1)  # (n, 8)
    return sc, m


def _q3k_scales(scales: torch.Tensor) -> torch.Tensor:
    """Q3_K packed scales (n, 12) uint8 -> signed scales (n, 16) int8 in [-32, 31]."""
    low = unpack_bits(scales[:, :8], 4, 2).flatten(1)  # (n, 2, 8) -> (n, 16)
    high = unpack_bits(scales[:, 8:], 2, 4).flatten(1)  # (n, 4, 4) -> (n, 16)
    return (low | (high << 4)).to(torch.int8) - 32


@register_dequantizer(GGMLType.Q2_K)
def dequantize_q2_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q2_K super-blocks (n, 84) uint8 -> (n, 256) float32."""
    n = blocks.shape[0]
    scales = blocks[:, :16]  # (n, 16)
    d = f16_field(blocks, 80)  # (n, 1)
    dmin = f16_field(blocks, 82)  # (n, 1)
    dl = (d * (scales & 0x0F).float()).unsqueeze(-1)  # (n, 16, 1)
    ml = (dmin * (scales >> 4).float()).unsqueeze(-1)  # (n, 16, 1)
    q = _unpack_runs(blocks[:, 16:80], 2, 32).reshape(n, 16, 16).float()  # (n, 16, 16)
    return q.mul_(dl).sub_(ml).reshape(n, 256)  # (n, 256)


@register_dequantizer(GGMLType.Q3_K)
def dequantize_q3_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q3_K super-blocks (n, 110) uint8 -> (n, 256) float32."""
    n = blocks.shape[0]
    d = f16_field(blocks, 108)  # (n, 1)
    dl = (d * _q3k_scales(blocks[:, 96:108]).float()).unsqueeze(-1)  # (n, 16, 1)
    low = _unpack_runs(blocks[:, 32:96], 2, 32).to(torch.int8)  # (n, 256)
    offset = ((_unpack_runs(blocks[:, :32], 1, 32) ^ 1) << 2).to(torch.int8)  # (n, 256)
    q = (low - offset).reshape(n, 16, 16).float()  # (n, 16, 16)
    return q.mul_(dl).reshape(n, 256)  # (n, 256)


def _k_sub_block_scales(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K (same header): per sub-block scale d*sc and offset dmin*m, (n, 8, 1) each."""
    d = f16_field(blocks, 0)  # (n, 1)
    dmin = f16_field(blocks, 2)  # (n, 1)
    sc, m = _q4k_scales_mins(blocks[:, 4:16])  # (n, 8) each
    return (d * sc.float()).unsqueeze(-1), (dmin * m.float()).unsqueeze(-1)


@register_dequantizer(GGMLType.Q4_K)
def dequantize_q4_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q4_K super-blocks (n, 144) uint8 -> (n, 256) float32."""
    n = blocks.shape[0]
    dl, ml = _k_sub_block_scales(blocks)  # (n, 8, 1) each
    q = _unpack_runs(blocks[:, 16:], 4, 32).reshape(n, 8, 32).float()  # (n, 8, 32)
    return q.mul_(dl).sub_(ml).reshape(n, 256)  # (n, 256)


@register_dequantizer(GGMLType.Q5_K)
def dequantize_q5_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q5_K super-blocks (n, 176) uint8 -> (n, 256) float32."""
    n = blocks.shape[0]
    dl, ml = _k_sub_block_scales(blocks)  # (n, 8, 1) each
    low = _unpack_runs(blocks[:, 48:], 4, 32)  # (n, 256)
    high = _unpack_runs(blocks[:, 16:48], 1, 32)  # (n, 256)
    q = (low | (high << 4)).reshape(n, 8, 32).float()  # (n, 8, 32)
    return q.mul_(dl).sub_(ml).reshape(n, 256)  # (n, 256)


@register_dequantizer(GGMLType.Q6_K)
def dequantize_q6_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q6_K super-blocks (n, 210) uint8 -> (n, 256) float32."""
    n = blocks.shape[0]
    d = f16_field(blocks, 208)  # (n, 1)
    scales = blocks[:, 192:208].view(torch.int8)  # (n, 16)
    dl = (d * scales.float()).unsqueeze(-1)  # (n, 16, 1)
    low = _unpack_runs(blocks[:, :128], 4, 64)  # (n, 256)
    high = _unpack_runs(blocks[:, 128:192], 2, 32)  # (n, 256)
    q = ((low | (high << 4)).to(torch.int8) - 32).reshape(n, 16, 16).float()  # (n, 16, 16)
    return q.mul_(dl).reshape(n, 256)  # (n, 256)
