"""GPTQ weights in the fused kernels' layout: repacked once at load, same bits per weight.

A GPTQ linear (AutoGPTQ layout, see corral.weights.qtensor) holds codes packed down K
as one little-endian bit stream, a scale and a zero point per (group, output) and the
group of every input column (`g_idx`; act-order shuffles it). Its values are

    w[n, k] = scale[g, n] * (q[k, n] - zero[g, n]),   g = g_idx[k].

`pack_gptq` turns it into a `PackedWeight` that the GGUF kernels read unchanged
(corral.kernels.packing's words of 4 int32, a *word group*: weight 4 j + w = field j of
word w, in the interleaved slots of `packing.field_slot`):

- act-order: the input columns are sorted by group once (a stable argsort of g_idx,
  kept as `perm`), so every group is a contiguous run of columns; at call time the
  activations are gathered the same way, x[:, perm] (`quantized_linear` does it);
- rows become output features (N, K), like GGUF's, so a tile of rows x groups is one
  strided load per field;
- 3-bit codes, whose runs of 32 straddle words, are split into 2 low bits (`qs`) and 1
  high bit (`qh`), the layout of Q3_K: 3 bits per weight, no word crossing;
- one scale (the checkpoint's float dtype) and one integer zero point per (row, group):
  the kernels compute a = scale, b = -scale * zero in float32 (exact for fp16 and bf16
  scales).

| bits | groups gs   | qs (int32)      | qh              | d (scale)   | zeros                  |
|------|-------------|-----------------|-----------------|-------------|------------------------|
|    2 | 32, 64 m    | (N, K/64, 4) 2b |                 | (N, K/gs)   | u8 (N, K/gs)           |
|    3 | 32, 64 m    | (N, K/64, 4) 2b | i16 (N,K/64,4)  | (N, K/gs)   | u8 (N, K/gs)           |
|    4 | 16, 32 m    | (N, K/32, 4) 4b |                 | (N, K/gs)   | u8 (N, K/gs)           |
|    8 | 16 m        | (N, K/16, 4) 8b |                 | (N, K/gs)   | i16 (N, K/gs) [1]      |

`perm` (int32, (K,)) is present only when g_idx is not already sorted. gs is the GPTQ
group size (K for "-1"); K must be a multiple of gs and of the word group (64 weights
for 2/3 bits, 32 for 4, 16 for 8). The kernels read the scales in one of two ways
(`scale_pairs`, corral.kernels.triton.decode's GPTQ_ZERO and GPTQ_ZERO2):

- gs a multiple m of the word group (GPTQ_ZERO): one (scale, zero) per m word groups;
- gs half a word group, 2/3-bit groups of 32 and 4-bit groups of 16 (GPTQ_ZERO2): two
  (scale, zero) per word group, one per sub-block of 16 fields of each word (8 for
  4-bit), like Q6_K's two sub-block scales. Per word group the kernels load both scales
  as one int32 (int64 for float32 scales) and both zero points as one int16: as many
  loads as for groups of 64, a few more instructions per word group, none per weight.

This covers the group sizes GPTQ checkpoints use (32, 64, 128, -1, with or without
act-order) at the same bits per weight as the file. `gptq_layout_error` refuses the
rest, which the loader then dequantizes at load:
- 2/3-bit groups of 16 (four (scale, zero) per word group) and 8-bit groups of 8 (two,
  but with 16-bit zero points): each would need another scale kind, and no published
  checkpoint uses them;
- groups that neither divide nor are multiples of the word group (2/3-bit groups of 96,
  4-bit groups of 48): such a group straddles word groups, while the kernels look the
  scales up per word group (or half of one);
- K not a multiple of gs (AutoGPTQ then makes the last group short) or of the word group;
- g_idx that does not sort into equal runs of consecutive columns.

Bytes per weight: 4-bit, group 128: 0.5 + 3/128 (the file: 0.5 + 2.5/128).

[1] AutoGPTQ's "gptq" format stores zero - 1, so a zero of 0 reads back as 2^bits: 256
does not fit a byte.

The qtype of such a weight names its bits and group size, e.g. "GPTQ4g128" (`gptq_qtype`).
"""

import re

import torch

from corral.kernels.packing import PackedWeight, _words, unpack_fields

GPTQ_BITS = (2, 3, 4, 8)
_QTYPE = re.compile(r"GPTQ([2348])g([1-9][0-9]*)")
RUN = 32  # codes per run of `bits` int32 words in AutoGPTQ's stream


def gptq_qtype(bits: int, group_size: int) -> str:
    """The qtype name of a packed GPTQ weight: "GPTQ{bits}g{group_size}"."""
    return f"GPTQ{bits}g{group_size}"


def parse_gptq_qtype(qtype: str) -> tuple[int, int] | None:
    """(bits, group size) of a GPTQ qtype name, or None for any other qtype."""
    match = _QTYPE.fullmatch(qtype)
    return (int(match[1]), int(match[2])) if match else None


def split_bits(bits: int) -> tuple[int, int]:
    """(low bits in `qs`, high bits in `qh`) of a GPTQ weight of `bits` bits."""
    return (2, 1) if bits == 3 else (bits, 0)


def word_group(bits: int) -> int:
    """Weights per group of 4 `qs` words."""
    return 4 * 32 // split_bits(bits)[0]


def scale_pairs(bits: int, group_size: int) -> int:
    """(scale, zero) pairs per word group: 2 for 2/3/4-bit groups of half a word group
    (see the module docs), else 1."""
    return 2 if bits < 8 and 2 * group_size == word_group(bits) else 1


def gptq_layout_error(bits: int, group_size: int, g_idx: torch.Tensor) -> str | None:
    """Why a GPTQ weight cannot take the kernel layout, or None when it can (module docs).

    `group_size` is the checkpoint's (K for -1); `g_idx` (K,) the group of every column.
    """
    k = g_idx.shape[0]
    if bits not in GPTQ_BITS:
        return f"{bits}-bit GPTQ weights are not supported (only {GPTQ_BITS})"
    per_words = word_group(bits)
    divides = group_size > 0 and k > 0 and k % per_words == 0 and k % group_size == 0
    if not (divides and (group_size % per_words == 0 or scale_pairs(bits, group_size) == 2)):
        sizes = f"multiples of {per_words}" + (f" or {per_words // 2}" if bits < 8 else "")
        return (
            f"{bits}-bit GPTQ with group size {group_size} and {k} inputs: the kernels need "
            f"K a multiple of {per_words} and groups that divide K and are {sizes}"
        )
    ordered = torch.sort(g_idx.to(torch.int64), stable=True).values  # (K,)
    expected = torch.arange(k, device=g_idx.device) // group_size  # (K,)
    if not torch.equal(ordered, expected):
        return f"g_idx does not sort into groups of {group_size} consecutive columns"
    return None


def _unpack_stream(words: torch.Tensor, bits: int) -> torch.Tensor:
    """AutoGPTQ words (K*bits/32, C) packed down axis 0 -> codes (K, C) uint8."""
    n_words, n_cols = words.shape
    runs = words.reshape(n_words // bits, bits, n_cols).to(torch.int64) & 0xFFFFFFFF  # unsigned
    codes = []
    for j in range(RUN):
        word, shift = divmod(bits * j, 32)
        value = runs[:, word] >> shift  # (runs, C)
        if shift + bits > 32:  # 3-bit codes 10 and 21 straddle two words
            value = value | (runs[:, word + 1] << (32 - shift))
        codes.append((value & ((1 << bits) - 1)).to(torch.uint8))
    return torch.stack(codes, dim=1).reshape(-1, n_cols)  # (runs, 32, C) -> (K, C)


def pack_gptq(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    g_idx: torch.Tensor,
    bits: int,
    group_size: int,
    cols_per_chunk: int = 2048,
) -> PackedWeight:
    """Repack a GPTQ linear (QTensor fields, see the module docs) into a `PackedWeight`.

    qweight (K*bits/32, N) int32, scales (G, N), zeros (G, N) true zero points, g_idx
    (K,). Work happens on qweight's device, `cols_per_chunk` outputs at a time. Raises
    ValueError with the reason when the layout does not fit (`gptq_layout_error`).
    """
    reason = gptq_layout_error(bits, group_size, g_idx)
    if reason:
        raise ValueError(reason)
    k, n = g_idx.shape[0], qweight.shape[1]
    if qweight.shape != (k * bits // 32, n) or qweight.dtype != torch.int32:
        raise ValueError(f"qweight must be int32 ({k * bits // 32}, {n}), got {qweight.shape}")
    n_groups = k // group_size
    if scales.shape[0] < n_groups or scales.shape[1:] != (n,) or zeros.shape != scales.shape:
        raise ValueError(f"scales/zeros must be ({n_groups}, {n}): {scales.shape}, {zeros.shape}")
    if zeros.numel() and (int(zeros.min()) < 0 or int(zeros.max()) > 1 << bits):
        raise ValueError(f"GPTQ zero points must lie in [0, {1 << bits}]")
    perm = torch.sort(g_idx.to(torch.int64), stable=True).indices  # (K,) sorted column order
    sorted_already = torch.equal(perm, torch.arange(k, device=perm.device))
    low, high = split_bits(bits)
    per_words = word_group(bits)
    chunks = []
    for first in range(0, n, cols_per_chunk):
        codes = _unpack_stream(qweight[:, first : first + cols_per_chunk], bits)  # (K, c)
        if not sorted_already:
            codes = codes[perm.to(codes.device)]  # (K, c), columns of x in group order
        rows = codes.t()  # (c, K): one row per output feature
        part = {"qs": _words(rows & ((1 << low) - 1), low, per_words, torch.int32)}
        if high:
            part["qh"] = _words(rows >> low, high, per_words, torch.int16)
        chunks.append(part)
    tensors = {name: torch.cat([c[name] for c in chunks]) for name in chunks[0]}
    tensors["d"] = scales[:n_groups].t().contiguous()  # (N, K / gs)
    zero_dtype = torch.int16 if bits == 8 else torch.uint8
    tensors["zeros"] = zeros[:n_groups].t().to(zero_dtype).contiguous()  # (N, K / gs)
    if not sorted_already:
        tensors["perm"] = perm.to(torch.int32)
    return PackedWeight(gptq_qtype(bits, group_size), (n, k), tensors)


def dequantize_gptq_packed(pw: PackedWeight) -> torch.Tensor:
    """The (N, K) float32 weight of a packed GPTQ weight, input columns in the original
    (file) order: scale * (q - zero), exact in float32 like any correct dequantizer."""
    parsed = parse_gptq_qtype(pw.qtype)
    if parsed is None:
        raise ValueError(f"{pw.qtype} is not a GPTQ qtype")
    bits, group_size = parsed
    low, high = split_bits(bits)
    n, k = pw.shape
    t = pw.tensors
    q = unpack_fields(t["qs"], low)  # (N, K), sorted column order
    if high:
        q |= unpack_fields(t["qh"], high) << low
    steps = q.reshape(n, k // group_size, group_size) - t["zeros"].to(torch.int32).unsqueeze(-1)
    w = (t["d"].float().unsqueeze(-1) * steps.float()).reshape(n, k)  # (N, K)
    if "perm" not in t:
        return w
    out = torch.empty_like(w)
    out[:, t["perm"].long()] = w  # column perm[i] of the file is column i here
    return out
