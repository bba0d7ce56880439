"""Repack GGUF quant blocks once at load into the layout the fused kernels read.

A GGUF weight of torch shape (N out, K in) is N rows of K / block_size blocks, each block
an array of structs (scales next to quants). The kernels want structs of arrays instead:
every field in its own tensor, rows contiguous, so a tile of rows x groups is one strided
load per field. `pack` keeps the bits per weight (the k-quants' 12-byte 6-bit scale
fields become one byte per scale: +4 bytes per 256 weights for Q3_K, Q4_K, Q5_K).

Quants are grouped by 4 int32 words (a *group*: 32 weights for 4-, 5-, 6-bit types, 64
for 2-, 3-bit, 16 for 8-bit). Inside a group, weight e = 4 * j + w is field j of word w,
so for a fixed j the 4 words hold 4 consecutive weights and the kernel reads 4
consecutive activations. The F = 32 / b fields of a word (b low bits per weight) sit in
interleaved slots (`field_slot`): byte p holds fields p, p + 4, p + 8, ... from its low
bits up, field j in bits [b*s, b*(s+1)) for slot s = (F / 4) * (j % 4) + j // 4. So one
shift and mask of a word, (W >> b t) & the low b bits of every byte, gives fields 4 t ..
4 t + 3 (weights 16 t .. 16 t + 15 of the group, one sub-block of 16 or part of a larger
one) in its four bytes: the byte words that the int8 matvec multiplies with dp4a
(`corral.kernels.act_quant`). Kernels that decode one field at a time shift by the
slot's offset instead of j's, at no cost. Extra high bits live in `qh`, one small integer
per word, with the same slots: weight 4 * j + w in bits [h*s, h*(s+1)) of entry w.

| type | group | qs (int32)      | qh              | scales            | d, dmin (fp16)        |
|------|-------|-----------------|-----------------|-------------------|-----------------------|
| Q4_0 |    32 | (N, K/32, 4) 4b |                 |                   | d (N, K/32)           |
| Q4_1 |    32 | (N, K/32, 4) 4b |                 |                   | d, m (N, K/32)        |
| Q5_0 |    32 | (N, K/32, 4) 4b | u8 (N, K/32, 4) |                   | d (N, K/32)           |
| Q5_1 |    32 | (N, K/32, 4) 4b | u8 (N, K/32, 4) |                   | d, m (N, K/32)        |
| Q8_0 |    16 | (N, K/16, 4) 8b |                 |                   | d (N, K/32)           |
| Q2_K |    64 | (N, K/64, 4) 2b |                 | i32 (N, K/64) [1] | d, dmin (N, K/256)    |
| Q3_K |    64 | (N, K/64, 4) 2b | i16 (N,K/64,4)  | i32 (N, K/64) [2] | d (N, K/256)          |
| Q4_K |    32 | (N, K/32, 4) 4b |                 | i16 (N, K/32) [3] | d, dmin (N, K/256)    |
| Q5_K |    32 | (N, K/32, 4) 4b | u8 (N, K/32, 4) | i16 (N, K/32) [3] | d, dmin (N, K/256)    |
| Q6_K |    32 | (N, K/32, 4) 4b | i16 (N,K/32,4)  | i16 (N, K/32) [4] | d (N, K/256)          |

[1] the 4 GGUF scale bytes of the group's 4 sub-blocks of 16 (byte s: sc | m << 4).
[2] the 4 signed scales (sc - 32, int8) of the group's 4 sub-blocks.
[3] low byte: 6-bit scale sc, high byte: 6-bit min m of the group (one sub-block of 32).
[4] the 2 signed int8 scales of the group's 2 sub-blocks of 16.

Q8_0 quants are stored biased (q + 128 as an unsigned byte) so every type decodes an
unsigned field. The values follow GGUF's formulas: x = a * q + b per (sub-)block, with a
and b from the table in `corral.kernels.reference`.

F16, BF16 and F32 are kept as a dense (N, K) tensor in `w`; the kernels use torch.matmul.
"""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

# GGUF block geometry, from ggml-common.h: (weights per block, bytes per block).
BLOCKS: dict[str, tuple[int, int]] = {
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q8_0": (32, 34),
    "Q2_K": (256, 84),
    "Q3_K": (256, 110),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
}
DENSE: dict[str, torch.dtype] = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}

# Packed-layout geometry per quant type: low bits per weight in `qs`, high bits in `qh`.
LOW_BITS = {"Q2_K": 2, "Q3_K": 2, "Q8_0": 8}  # every other type: 4
HIGH_BITS = {"Q5_0": 1, "Q5_1": 1, "Q5_K": 1, "Q3_K": 1, "Q6_K": 2}  # every other type: 0


def low_bits(qtype: str) -> int:
    """Bits per weight stored in the `qs` words of `qtype`."""
    return LOW_BITS.get(qtype, 4)


def high_bits(qtype: str) -> int:
    """Bits per weight stored in `qh` for `qtype` (0: no `qh`)."""
    return HIGH_BITS.get(qtype, 0)


def group_size(qtype: str) -> int:
    """Weights per group of 4 `qs` words."""
    return 4 * 32 // low_bits(qtype)


@dataclass(frozen=True)
class PackedWeight:
    """A (N, K) weight in the kernels' layout: `tensors` by field name, see module docs."""

    qtype: str
    shape: tuple[int, int]
    tensors: dict[str, torch.Tensor]

    @property
    def device(self) -> torch.device:
        """Where the tensors live."""
        return next(iter(self.tensors.values())).device

    def nbytes(self) -> int:
        """Bytes the kernels read to multiply by the whole weight once."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def to(self, device: torch.device | str) -> "PackedWeight":
        """The same weight with every tensor on `device`."""
        moved = {name: t.to(device) for name, t in self.tensors.items()}
        return PackedWeight(self.qtype, self.shape, moved)


def pack(raw: torch.Tensor, qtype: str, n_cols: int, rows_per_chunk: int = 1024) -> PackedWeight:
    """Repack the GGUF bytes of a (N, n_cols) weight of `qtype` into a `PackedWeight`.

    `raw` is uint8, (N, row_bytes) or flat; work happens on `raw`'s device, `rows_per_chunk`
    rows at a time to bound the temporaries. Raises ValueError naming the type and the sizes
    when the bytes do not match `n_cols`.
    """
    if raw.dtype != torch.uint8:
        raise TypeError(f"packed {qtype} bytes must be a uint8 tensor, got {raw.dtype}")
    if qtype in DENSE:
        return PackedWeight(qtype, *_dense(raw, qtype, n_cols))
    if qtype not in BLOCKS:
        raise ValueError(f"no kernel layout for ggml type {qtype!r}")
    block, type_size = BLOCKS[qtype]
    if n_cols <= 0 or n_cols % block:
        raise ValueError(f"{qtype} rows must be a positive multiple of {block}, got {n_cols}")
    row_bytes = n_cols // block * type_size
    if raw.numel() % row_bytes:
        raise ValueError(
            f"{qtype}: {raw.numel()} bytes is not a whole number of {row_bytes}-byte rows"
        )
    rows = raw.reshape(-1, row_bytes)  # (N, row_bytes)
    if rows.shape[0] == 0:
        raise ValueError(f"{qtype}: empty weight")
    starts = range(0, rows.shape[0], rows_per_chunk)

    def pack_chunk(i: int) -> dict[str, torch.Tensor]:
        """The packed tensors of rows i.. (blocks (n, K / block, type_size))."""
        return _PACKERS[qtype](rows[i : i + rows_per_chunk].reshape(-1, n_cols // block, type_size))

    if raw.device.type == "cpu" and len(starts) > 1:  # numba's loops release the GIL
        with ThreadPoolExecutor(torch.get_num_threads()) as pool:
            chunks = list(pool.map(pack_chunk, starts))
    else:
        chunks = [pack_chunk(i) for i in starts]
    tensors = {name: torch.cat([c[name] for c in chunks]) for name in chunks[0]}
    return PackedWeight(qtype, (rows.shape[0], n_cols), tensors)


def _dense(raw: torch.Tensor, qtype: str, n_cols: int) -> tuple[tuple[int, int], dict]:
    dtype = DENSE[qtype]
    if n_cols <= 0 or raw.numel() % (n_cols * dtype.itemsize):
        raise ValueError(
            f"{qtype}: {raw.numel()} bytes is not a whole number of {n_cols}-wide rows"
        )
    w = raw.reshape(-1).contiguous().view(dtype).reshape(-1, n_cols)  # (N, K)
    return (w.shape[0], n_cols), {"w": w}


# ---- field access on blocks (n, nb, type_size) ----------------------------------------


def _f16(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The fp16 field at byte `offset` of every block: (n, nb)."""
    return blocks[..., offset : offset + 2].contiguous().view(torch.float16)[..., 0]


def _runs(field: torch.Tensor, bits: int, run: int) -> torch.Tensor:
    """Quants (n, nb, k) uint8 of `bits` bits in runs of `run` bytes -> (n, nb, 8k / bits).

    Each run of bytes yields, from its lowest bit slice up, consecutive runs of weights.
    On the CPU its numba twin does the work (torch's strided ops are slow there).
    """
    n, nb, k = field.shape
    if field.device.type != "cpu":
        return runs_torch(field, bits, run)
    from corral.kernels.cpu.bits import unpack_runs

    out = torch.empty(n, nb, k * 8 // bits, dtype=torch.uint8)
    unpack_runs(field.numpy(), bits, run, out.numpy())
    return out


def runs_torch(field: torch.Tensor, bits: int, run: int) -> torch.Tensor:
    """`_runs` in torch ops (any device; the reference of the numba twin)."""
    n, nb, k = field.shape
    runs = field.reshape(n, nb, k // run, 1, run)  # (n, nb, runs, 1, run)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=field.device).view(-1, 1)
    fields = (runs >> shifts) & ((1 << bits) - 1)  # (n, nb, runs, 8 / bits, run)
    return fields.reshape(n, nb, k * 8 // bits)


def field_slot(j: int, fields: int) -> int:
    """The slot (bits [bits * slot, bits * (slot + 1)) of its word) of field j of a word of
    `fields` fields: fields 4 t + b (t < fields / 4) fill byte b's slots in order of t
    (the module docstring's interleaved order)."""
    return fields // 4 * (j % 4) + j // 4


def unpack_fields(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Words (N, G, 4) of `bits`-bit fields in the kernels' layout -> (N, G * 4 * fields)
    int32, the fields in weight order (weight 4 j + w of a group is field j of word w)."""
    n, groups, _ = words.shape
    width = 8 * words.element_size()
    fields = width // bits
    wide = words.to(torch.int64) & ((1 << width) - 1)  # unsigned
    slots = torch.tensor([field_slot(j, fields) for j in range(fields)], device=words.device)
    shifts = (bits * slots).view(-1, 1)  # (fields, 1): field j's offset
    values = (wide.unsqueeze(2) >> shifts) & ((1 << bits) - 1)  # (N, G, fields, 4)
    return values.reshape(n, -1).to(torch.int32)  # (N, K)


def _words(values: torch.Tensor, bits: int, per_group: int, dtype: torch.dtype) -> torch.Tensor:
    """Weights (n, K) of `bits` bits in order -> (n, K / per_group, 4) words of `dtype`.

    Weight e = 4 * j + w of a group is field j of word w, in slot `field_slot(j, F)` of
    F = per_group / 4 fields: bits [bits*slot, bits*(slot+1)). The words are built byte
    by byte in uint8 (little-endian): byte p of word w holds the slots F' p + f,
    f < F' = 8 / bits. On the CPU its numba twin does the work.
    """
    n = values.shape[0]
    width = dtype.itemsize
    if per_group != 4 * width * (8 // bits):
        raise ValueError(f"{per_group} {bits}-bit fields do not fill 4 {dtype} words")
    if values.device.type != "cpu":
        return words_torch(values, bits, per_group, dtype)
    from corral.kernels.cpu.bits import pack_words

    out = torch.empty(n, values.shape[1] // per_group, 4, width, dtype=torch.uint8)
    pack_words(values.to(torch.uint8).numpy(), bits, per_group, out.numpy())
    return out.view(dtype).reshape(n, -1, 4)  # (n, groups, 4)


def words_torch(
    values: torch.Tensor, bits: int, per_group: int, dtype: torch.dtype
) -> torch.Tensor:
    """`_words` in torch ops (any device; the reference of the numba twin)."""
    n = values.shape[0]
    per_byte, width = 8 // bits, dtype.itemsize
    fields = per_group // 4
    by_field = values.to(torch.uint8).reshape(n, -1, fields, 4)  # (n, groups, j, w)
    by_slot = torch.empty_like(by_field)
    slots = [field_slot(j, fields) for j in range(fields)]
    by_slot[:, :, slots] = by_field  # (n, groups, slot, w)
    in_bytes = by_slot.reshape(n, -1, width, per_byte, 4)  # (n, groups, p, f, w)
    word_bytes = in_bytes.new_zeros(n, in_bytes.shape[1], 4, width)  # (n, groups, w, p)
    for f in range(per_byte):
        word_bytes |= in_bytes[:, :, :, f].transpose(2, 3) << (bits * f)
    return word_bytes.view(dtype).reshape(n, -1, 4)  # (n, groups, 4)


# ---- per-type packers: blocks (n, nb, type_size) -> tensors --------------------------


def _pack_q4_legacy(blocks: torch.Tensor, with_min: bool) -> dict[str, torch.Tensor]:
    n = blocks.shape[0]
    start = 4 if with_min else 2
    q = _runs(blocks[..., start:], 4, 16).reshape(n, -1)  # (n, K)
    out = {"qs": _words(q, 4, 32, torch.int32), "d": _f16(blocks, 0)}
    if with_min:
        out["dmin"] = _f16(blocks, 2)
    return out


def _pack_q5_legacy(blocks: torch.Tensor, with_min: bool) -> dict[str, torch.Tensor]:
    n = blocks.shape[0]
    start = 4 if with_min else 2
    low = _runs(blocks[..., start + 4 :], 4, 16).reshape(n, -1)  # (n, K)
    high = _runs(blocks[..., start : start + 4], 1, 1).reshape(n, -1)  # (n, K): 8i+k: byte i bit k
    out = {
        "qs": _words(low, 4, 32, torch.int32),
        "qh": _words(high, 1, 32, torch.uint8),
        "d": _f16(blocks, 0),
    }
    if with_min:
        out["dmin"] = _f16(blocks, 2)
    return out


def _pack_q8_0(blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    n = blocks.shape[0]
    biased = (blocks[..., 2:] ^ 0x80).reshape(n, -1)  # (n, K): q + 128
    return {"qs": _words(biased, 8, 16, torch.int32), "d": _f16(blocks, 0)}


def _pack_q2_k(blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    n = blocks.shape[0]
    q = _runs(blocks[..., 16:80], 2, 32).reshape(n, -1)  # (n, K)
    scales = blocks[..., :16].contiguous().view(torch.int32).reshape(n, -1)  # (n, K / 64)
    return {
        "qs": _words(q, 2, 64, torch.int32),
        "scales": scales,
        "d": _f16(blocks, 80),
        "dmin": _f16(blocks, 82),
    }


def _q3k_scales(packed: torch.Tensor) -> torch.Tensor:
    """Q3_K scales (n, nb, 12) -> (n, nb, 16) int8 in [-32, 31], see corral.quant.kquants."""
    low = _runs(packed[..., :8], 4, 8)  # (n, nb, 16): scale j low bits
    high = _runs(packed[..., 8:], 2, 4)  # (n, nb, 16): scale j high bits
    return ((low | (high << 4)).to(torch.int16) - 32).to(torch.int8)


def _pack_q3_k(blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    n = blocks.shape[0]
    low = _runs(blocks[..., 32:96], 2, 32).reshape(n, -1)  # (n, K)
    high = _runs(blocks[..., :32], 1, 32).reshape(n, -1)  # (n, K)
    scales = _q3k_scales(blocks[..., 96:108]).contiguous().view(torch.int32)  # (n, nb, 4)
    return {
        "qs": _words(low, 2, 64, torch.int32),
        "qh": _words(high, 1, 64, torch.int16),
        "scales": scales.reshape(n, -1),  # (n, K / 64)
        "d": _f16(blocks, 108),
    }


def _k_scales_mins(packed: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K scales (n, nb, 12) -> (n, nb * 8) int16: sc | m << 8 per sub-block."""
    lo_sc, lo_m, hi = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]  # (n, nb, 4)
    sc = torch.cat([lo_sc & 0x3F, (hi & 0x0F) | ((lo_sc >> 2) & 0x30)], dim=-1)  # (n, nb, 8)
    m = torch.cat([lo_m & 0x3F, (hi >> 4) | ((lo_m >> 2) & 0x30)], dim=-1)  # (n, nb, 8)
    both = sc.to(torch.int16) | (m.to(torch.int16) << 8)  # (n, nb, 8)
    return both.reshape(packed.shape[0], -1)  # (n, nb * 8)


def _pack_q4_k(blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    n = blocks.shape[0]
    q = _runs(blocks[..., 16:], 4, 32).reshape(n, -1)  # (n, K)
    return {
        "qs": _words(q, 4, 32, torch.int32),
        "scales": _k_scales_mins(blocks[..., 4:16]),
        "d": _f16(blocks, 0),
        "dmin": _f16(blocks, 2),
    }


def _pack_q5_k(blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    n = blocks.shape[0]
    low = _runs(blocks[..., 48:], 4, 32).reshape(n, -1)  # (n, K)
    high = _runs(blocks[..., 16:48], 1, 32).reshape(n, -1)  # (n, K)
    return {
        "qs": _words(low, 4, 32, torch.int32),
        "qh": _words(high, 1, 32, torch.uint8),
        "scales": _k_scales_mins(blocks[..., 4:16]),
        "d": _f16(blocks, 0),
        "dmin": _f16(blocks, 2),
    }


def _pack_q6_k(blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    n = blocks.shape[0]
    low = _runs(blocks[..., :128], 4, 64).reshape(n, -1)  # (n, K)
    high = _runs(blocks[..., 128:192], 2, 32).reshape(n, -1)  # (n, K)
    return {
        "qs": _words(low, 4, 32, torch.int32),
        "qh": _words(high, 2, 32, torch.int16),
        "scales": blocks[..., 192:208].contiguous().view(torch.int16).reshape(n, -1),  # (n, K/32)
        "d": _f16(blocks, 208),
    }


_PACKERS = {
    "Q4_0": lambda b: _pack_q4_legacy(b, with_min=False),
    "Q4_1": lambda b: _pack_q4_legacy(b, with_min=True),
    "Q5_0": lambda b: _pack_q5_legacy(b, with_min=False),
    "Q5_1": lambda b: _pack_q5_legacy(b, with_min=True),
    "Q8_0": _pack_q8_0,
    "Q2_K": _pack_q2_k,
    "Q3_K": _pack_q3_k,
    "Q4_K": _pack_q4_k,
    "Q5_K": _pack_q5_k,
    "Q6_K": _pack_q6_k,
}


def rows_concatenable(a: PackedWeight, b: PackedWeight) -> bool:
    """True when `b`'s output rows can follow `a`'s in one weight (`concat_rows`): same
    type, input width and fields, and for GPTQ act-order the same column order."""
    if (a.qtype, a.shape[1], a.tensors.keys()) != (b.qtype, b.shape[1], b.tensors.keys()):
        return False
    return "perm" not in a.tensors or torch.equal(a.tensors["perm"], b.tensors["perm"])


def concat_rows(weights: list[PackedWeight]) -> PackedWeight:
    """One weight whose output rows are those of `weights` in order (several projections of
    the same input as one matmul). Raises ValueError unless they are `rows_concatenable`."""
    first = weights[0]
    if not all(rows_concatenable(first, w) for w in weights[1:]):
        raise ValueError(f"cannot concatenate {[(w.qtype, w.shape) for w in weights]}")
    tensors = {
        name: t if name == "perm" else torch.cat([w.tensors[name] for w in weights])
        for name, t in first.tensors.items()
    }  # every field but the shared column order is indexed by output row first
    n_rows = sum(w.shape[0] for w in weights)
    return PackedWeight(first.qtype, (n_rows, first.shape[1]), tensors)


def interleave_rows(a: PackedWeight, b: PackedWeight) -> PackedWeight:
    """One weight whose rows alternate between `a`'s and `b`'s: a[0], b[0], a[1], b[1], ...
    (SwiGLU's gate and up, so a matvec program holds both rows of each output). Raises
    ValueError unless `a` and `b` have one shape and are `rows_concatenable`."""
    if a.shape != b.shape or not rows_concatenable(a, b):
        raise ValueError(f"cannot interleave {(a.qtype, a.shape)} and {(b.qtype, b.shape)}")
    tensors = {
        name: t if name == "perm" else torch.stack((t, b.tensors[name]), dim=1).flatten(0, 1)
        for name, t in a.tensors.items()
    }  # (N, 2, ...) -> (2N, ...): every field but the shared column order is by row first
    return PackedWeight(a.qtype, (2 * a.shape[0], a.shape[1]), tensors)
