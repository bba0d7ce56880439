"""ggml's legacy block types Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: 32 weights per block.

Block layouts (ggml-common.h), byte offsets within a block, all little-endian:

block_q4_0, 18 bytes, x[i] = d * (q[i] - 8)
| off | field  | type | bytes | meaning                                            |
|-----|--------|------|-------|----------------------------------------------------|
|   0 | d      | f16  |     2 | block scale                                        |
|   2 | qs[16] | u8   |    16 | 4-bit quants: qs[j] = q[j] | q[j + 16] << 4        |

block_q4_1, 20 bytes, x[i] = d * q[i] + m
| off | field  | type | bytes | meaning                                            |
|-----|--------|------|-------|----------------------------------------------------|
|   0 | d      | f16  |     2 | block scale                                        |
|   2 | m      | f16  |     2 | block minimum                                      |
|   4 | qs[16] | u8   |    16 | 4-bit quants, packed as in Q4_0                    |

block_q5_0, 22 bytes, x[i] = d * (q[i] - 16)
| off | field  | type | bytes | meaning                                            |
|-----|--------|------|-------|----------------------------------------------------|
|   0 | d      | f16  |     2 | block scale                                        |
|   2 | qh[4]  | u8   |     4 | bit 4 of q[i] is bit i of qh read as a u32         |
|   6 | qs[16] | u8   |    16 | bits 0-3 of the quants, packed as in Q4_0          |

block_q5_1, 24 bytes, x[i] = d * q[i] + m
| off | field  | type | bytes | meaning                                            |
|-----|--------|------|-------|----------------------------------------------------|
|   0 | d      | f16  |     2 | block scale                                        |
|   2 | m      | f16  |     2 | block minimum                                      |
|   4 | qh[4]  | u8   |     4 | bit 4 of the quants, as in Q5_0                    |
|   8 | qs[16] | u8   |    16 | bits 0-3 of the quants, packed as in Q4_0          |

block_q8_0, 34 bytes, x[i] = q[i] * d
| off | field  | type | bytes | meaning                                            |
|-----|--------|------|-------|----------------------------------------------------|
|   0 | d      | f16  |     2 | block scale                                        |
|   2 | qs[32] | i8   |    32 | signed 8-bit quants                                |

Each formula is evaluated in float32 in exactly this order (as gguf-py does), which is
what makes the results bit-exact; the products are taken in place on the freshly
converted quants (`q.float().mul_(d)`: same operations, one temporary less).
"""

import torch

from corral.quant.dequant import f16_field, register_dequantizer, unpack_bits
from corral.quant.ggml_types import GGMLType


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """4-bit quants (n, 16) uint8 -> (n, 32) uint8: all low nibbles, then all high ones."""
    return unpack_bits(qs, 4, 2).flatten(1)  # (n, 2, 16) -> (n, 32)


def _fifth_bits(qh: torch.Tensor) -> torch.Tensor:
    """qh (n, 4) uint8 -> bit 4 of each quant, (n, 32) uint8 in {0, 16}."""
    bits = unpack_bits(qh.unsqueeze(-1), 1, 8)  # (n, 4, 8, 1): byte j, bit k -> quant 8j + k
    return bits.flatten(1) << 4  # (n, 32)


@register_dequantizer(GGMLType.Q4_0)
def dequantize_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    """Q4_0 blocks (n, 18) uint8 -> (n, 32) float32."""
    d = f16_field(blocks, 0)  # (n, 1)
    q = _nibbles(blocks[:, 2:]).to(torch.int8) - 8  # (n, 32)
    return q.float().mul_(d)


@register_dequantizer(GGMLType.Q4_1)
def dequantize_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    """Q4_1 blocks (n, 20) uint8 -> (n, 32) float32."""
    d = f16_field(blocks, 0)  # (n, 1)
    m = f16_field(blocks, 2)  # (n, 1)
    q = _nibbles(blocks[:, 4:])  # (n, 32)
    return q.float().mul_(d).add_(m)


@register_dequantizer(GGMLType.Q5_0)
def dequantize_q5_0(blocks: torch.Tensor) -> torch.Tensor:
    """Q5_0 blocks (n, 22) uint8 -> (n, 32) float32."""
    d = f16_field(blocks, 0)  # (n, 1)
    q = _nibbles(blocks[:, 6:]) | _fifth_bits(blocks[:, 2:6])  # (n, 32)
    return (q.to(torch.int8) - 16).float().mul_(d)


@register_dequantizer(GGMLType.Q5_1)
def dequantize_q5_1(blocks: torch.Tensor) -> torch.Tensor:
    """Q5_1 blocks (n, 24) uint8 -> (n, 32) float32."""
    d = f16_field(blocks, 0)  # (n, 1)
    m = f16_field(blocks, 2)  # (n, 1)
    q = _nibbles(blocks[:, 8:]) | _fifth_bits(blocks[:, 4:8])  # (n, 32)
    return q.float().mul_(d).add_(m)


@register_dequantizer(GGMLType.Q8_0)
def dequantize_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    """Q8_0 blocks (n, 34) uint8 -> (n, 32) float32."""
    d = f16_field(blocks, 0)  # (n, 1)
    q = blocks[:, 2:].view(torch.int8)  # (n, 32)
    return q.float().mul_(d)
