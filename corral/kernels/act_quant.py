"""Activations quantized to int8 per weight group (llama.cpp's q8_1 blocks), in torch.

The int8 dot-product matvec (`corral.kernels.triton.matvec_int8`) multiplies packed weight
words by int8 activation codes with `dp4a`. This module holds the layout both sides agree
on and the torch twin of the quantizing kernel (`corral.kernels.triton.int8_act`):

- each row of x (M, K) is cut into blocks of one weight group (128 / bits weights: 32
  for the 4-bit types, 16 for Q8_0, 64 for the 2-bit ones);
- per block: d = max |x| / 127, codes q = round(x / d) in [-127, 127] (half away from
  zero, as llama.cpp's roundf; d = 0 gives zero codes) and s = d * sum(q), so that a
  weight's offset or minimum b multiplies s directly;
- the codes are packed four to an int32 word in the order the weight words are decoded.
  A group's weight word w holds weight 4 j + w in field j, and fields 4 t + b sit in
  byte b (`corral.kernels.packing`'s interleaved slots); the kernel extracts P = 8 / bits
  byte words from it, byte word t holding field 4 t + b in byte b: weights
  16 t + 4 b + w, a run of 16 weights of the group. Code word (t, w) of a block
  therefore holds weight 16 t + 4 b + w in byte b (`code_weight_index`), and one dp4a of
  the two words is the dot product of those four. A byte word never straddles two
  sub-blocks (of 16 or more weights), so each dp4a sum belongs to one.

The float32 operations here are the kernel's (IEEE division, the same rounding), so codes
and scales match bit for bit.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Int8Activations:
    """Rows of activations quantized for weights with `bits` low bits per field.

    codes: int32 (M, K / 4), four int8 codes per word in the kernel order (module docs);
    d, s: float32 (M, K / group) per block: the scale and scale * sum of the codes."""

    bits: int
    codes: torch.Tensor
    d: torch.Tensor
    s: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        """(M, K) of the activations."""
        return self.codes.shape[0], self.codes.shape[1] * 4


def group_weights(bits: int) -> int:
    """Weights per group (4 words) for `bits` low bits per field: one activation block."""
    if bits not in (2, 4, 8):
        raise ValueError(f"int8 activations pair with 2-, 4- or 8-bit fields, not {bits}")
    return 128 // bits


def code_weight_index(bits: int) -> torch.Tensor:
    """(P, 4, 4) long: the weight (within its group) in byte b of code word (t, w)."""
    t = torch.arange(8 // bits)[:, None, None]  # P byte words per weight word
    w = torch.arange(4)[None, :, None]
    b = torch.arange(4)[None, None, :]
    return 16 * t + 4 * b + w  # (P, 4, 4)


def quantize_activations_reference(x: torch.Tensor, bits: int) -> Int8Activations:
    """x (M, K) -> its int8 blocks for `bits`-bit weights (the kernel's twin)."""
    group = group_weights(bits)
    m, k = x.shape
    blocks = x.float().reshape(m, k // group, group)  # (M, blocks, group)
    d = blocks.abs().amax(dim=2) / 127.0  # (M, blocks)
    inv = torch.where(d > 0, 1.0 / torch.where(d > 0, d, 1.0), 0.0)
    v = blocks * inv[..., None]
    q = torch.floor(v.abs() + 0.5).to(torch.int32)
    q = torch.where(v < 0, -q, q)  # (M, blocks, group)
    ordered = q[..., code_weight_index(bits).to(x.device)]  # (M, blocks, P, 4, 4)
    shifts = torch.arange(0, 32, 8, device=x.device, dtype=torch.int32)  # byte b at 8 b
    words = ((ordered & 0xFF) << shifts).sum(dim=-1, dtype=torch.int32)  # (M, blocks, P, 4)
    s = d * q.sum(dim=2).float()
    return Int8Activations(bits, words.reshape(m, k // 4), d, s)  # codes (M, K / 4)


def dequantize_activations(qa: Int8Activations) -> torch.Tensor:
    """The float32 (M, K) values d * q that the quantized activations stand for."""
    m, k = qa.shape
    group = group_weights(qa.bits)
    per_byte = 8 // qa.bits
    words = qa.codes.reshape(m, k // group, per_byte, 4, 1)  # (M, blocks, P, 4, 1)
    shifts = torch.arange(24, -1, -8, device=words.device, dtype=torch.int32)  # byte 3 - i
    codes = (words << shifts) >> 24  # (M, blocks, P, 4, 4): sign-extended byte b
    q = torch.empty(m, k // group, group, dtype=torch.int32, device=words.device)
    q[..., code_weight_index(qa.bits).to(words.device)] = codes
    return (q.float() * qa.d[..., None]).reshape(m, k)  # (M, blocks, group) -> (M, K)
