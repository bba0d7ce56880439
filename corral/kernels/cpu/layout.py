"""The CPU kernels' layout: a `PackedWeight`'s fields with output rows innermost.

The GPU layout (`corral.kernels.packing`) keeps each output row's fields contiguous. A CPU
core multiplies fastest when one SIMD instruction works on many output rows at once with
the same activation, so here the rows are cut into blocks of `row_block` (RB) rows and
every field is stored with the row inside the block last:

| field  | GPU layout (packing)  | CPU layout (here)          | what one byte / entry holds     |
|--------|-----------------------|----------------------------|---------------------------------|
| qs     | (N, G, 4) int32       | (N/RB, G, 16, RB) uint8    | byte t = 4 w + p of the 4 words |
| qh     | (N, G, 4) u8 / i16    | (N/RB, G, 4 E, RB) uint8   | byte t = E w + p, E = 1 or 2    |
| scales | (N, S') int32 / int16 | (N/RB, S, SB, RB) uint8    | per sub-block: SB = 1 or 2 bytes|
| d/dmin | (N, D) fp16           | (N/RB, D, RB) uint16       | fp16 bits (decoded by a table)  |

The bits per weight stay those of the file. Byte p of word w holds the slots F p + f
(f < F = 8 / bits), each the field j of weight e = 4 j + w of its group that
`packing.field_slot` puts there, so each field of a byte pairs with one activation;
`field_maps` gives which, and which sub-block of the group (one scale) it belongs to.
The k-quants' scale fields become one or two bytes per sub-block: Q2_K one byte
(sc | m << 4), Q3_K and Q6_K one signed byte, Q4_K and Q5_K two (sc, m).
"""

from dataclasses import dataclass

import numpy as np
import torch

from corral.kernels.packing import PackedWeight, group_size, high_bits, low_bits

ROW_BLOCKS = (256, 128, 64, 32, 16, 8)  # the row block is the largest of these dividing N

# Weights per sub-block (one scale): 16 for Q2_K, Q3_K and Q6_K, 32 for every other type.
SUB_BLOCK = {"Q2_K": 16, "Q3_K": 16, "Q6_K": 16}

# How a sub-block's (a, b) of x = a * q + b come from its scale bytes and d / dmin:
SYMMETRIC, WITH_MIN, K_NIBBLES, K_SIGNED, K_BYTES = range(5)
SCALE_KIND = {
    "Q4_0": SYMMETRIC,  # a = d, b = -offset d
    "Q5_0": SYMMETRIC,
    "Q8_0": SYMMETRIC,
    "Q4_1": WITH_MIN,  # a = d, b = m
    "Q5_1": WITH_MIN,
    "Q2_K": K_NIBBLES,  # a = d (byte & 15), b = -dmin (byte >> 4)
    "Q3_K": K_SIGNED,  # a = d int8(byte), b = -offset a
    "Q6_K": K_SIGNED,
    "Q4_K": K_BYTES,  # a = d byte0, b = -dmin byte1
    "Q5_K": K_BYTES,
}
OFFSET = {"Q4_0": 8, "Q5_0": 16, "Q8_0": 128, "Q3_K": 4, "Q6_K": 32}


def row_block(n_rows: int) -> int | None:
    """The row block for a weight of `n_rows` output rows, or None when none divides it."""
    return next((rb for rb in ROW_BLOCKS if n_rows % rb == 0), None)


def cpu_layout_error(pw: PackedWeight) -> str | None:
    """Why `pw` has no CPU layout (then it is dequantized at load), or None."""
    return layout_error(pw.qtype, pw.shape[0])


def layout_error(qtype: str, n_rows: int) -> str | None:
    """Why a weight of `qtype` with `n_rows` output rows has no CPU layout, or None."""
    if qtype not in SCALE_KIND:
        return f"no CPU kernel for {qtype}"
    if row_block(n_rows) is None:
        return f"{n_rows} output rows is not a multiple of {ROW_BLOCKS[-1]}"
    return None


@dataclass(frozen=True)
class Geometry:
    """Where each field of a type's groups sits; the kernels read these as plain ints."""

    low_bits: int  # bits per field in qs
    high_bits: int  # bits per field in qh (0: no qh)
    group: int  # weights per group (4 qs words)
    sub: int  # weights per sub-block (one scale)
    d_block: int  # weights per d / dmin entry
    scale_kind: int
    offset: int

    @property
    def subs_per_group(self) -> int:
        """Sub-blocks inside one group (1 when a sub-block spans groups)."""
        return max(1, self.group // self.sub)

    @property
    def groups_per_sub(self) -> int:
        """Groups inside one sub-block (1 when a group holds several sub-blocks)."""
        return max(1, self.sub // self.group)


def geometry(qtype: str) -> Geometry:
    """The `Geometry` of a quant type with a CPU layout."""
    return Geometry(
        low_bits=low_bits(qtype),
        high_bits=high_bits(qtype),
        group=group_size(qtype),
        sub=SUB_BLOCK.get(qtype, 32),
        d_block=32 if qtype in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0") else 256,
        scale_kind=SCALE_KIND[qtype],
        offset=OFFSET.get(qtype, 0),
    )


def field_maps(bits: int, bytes_per_word: int, group: int, sub: int) -> tuple[np.ndarray, ...]:
    """For the bytes of one group's words (4 * bytes_per_word of them) holding `bits`-bit
    fields: (index, sub_block), each (bytes, fields) int64: the weight of the group that
    field f of byte t belongs to, and that weight's sub-block inside the group."""
    fields = 8 // bits
    t = np.arange(4 * bytes_per_word).reshape(-1, 1)  # (bytes, 1)
    f = np.arange(fields).reshape(1, -1)  # (1, fields)
    word, byte = t // bytes_per_word, t % bytes_per_word
    slot = fields * byte + f  # (bytes, fields): the slot of the word (packing.field_slot)
    per_byte_of_qs = fields * bytes_per_word // 4  # slots per weight byte of the qs words
    j = 4 * (slot % per_byte_of_qs) + slot // per_byte_of_qs  # field j sits in that slot
    index = 4 * j + word  # (bytes, fields)
    return index, index // sub if sub < group else np.zeros_like(index)


@dataclass(frozen=True)
class CpuWeight:
    """A (N, K) quantized weight in the CPU layout (module docs), as the numpy arrays the
    numba kernels take."""

    qtype: str
    shape: tuple[int, int]
    row_block: int
    qs: np.ndarray  # (N/RB, G, 16, RB) uint8
    qh: np.ndarray  # (N/RB, G, 4 E, RB) uint8; (N/RB, 0, 0, RB) without high bits
    scales: np.ndarray  # (N/RB, S, SB, RB) uint8; (N/RB, 0, 0, RB) for legacy types
    d: np.ndarray  # (N/RB, D, RB) uint16 (fp16 bits)
    dmin: np.ndarray  # (N/RB, D, RB) uint16; (N/RB, 0, RB) when the type has none

    def fields(self) -> tuple[np.ndarray, ...]:
        """Every array, in the order of the dataclass fields."""
        return (self.qs, self.qh, self.scales, self.d, self.dmin)

    def nbytes(self) -> int:
        """Bytes the kernels read to multiply by the whole weight once."""
        return sum(a.nbytes for a in self.fields())


def _blocked(t: torch.Tensor, rb: int) -> np.ndarray:
    """(N, ...) -> (N / rb, ..., rb): rows innermost inside each block of rb rows."""
    n = t.shape[0]
    blocks = t.reshape(n // rb, rb, *t.shape[1:])  # (N / rb, rb, ...)
    return blocks.movedim(1, -1).contiguous().numpy()  # (N / rb, ..., rb)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """(N, ...) integers -> (N, ..., element bytes) uint8, little-endian byte order."""
    return t.contiguous().view(torch.uint8).reshape(*t.shape, t.element_size())


def _scale_bytes(pw: PackedWeight) -> torch.Tensor:
    """The k-quants' scale bytes per sub-block, (N, S, SB) uint8 (legacy: (N, 0, 0))."""
    n = pw.shape[0]
    if "scales" not in pw.tensors:
        return torch.zeros(n, 0, 0, dtype=torch.uint8)
    raw = _bytes(pw.tensors["scales"])  # (N, S', bytes per entry)
    if pw.qtype in ("Q4_K", "Q5_K"):
        return raw  # (N, K / 32, 2): sc, m
    return raw.reshape(n, -1, 1)  # (N, K / 16, 1): one byte per sub-block of 16


def to_cpu_layout(pw: PackedWeight) -> CpuWeight:
    """`pw` (GPU layout, on the CPU) in the CPU layout. Raises ValueError when
    `cpu_layout_error` says it has none."""
    reason = cpu_layout_error(pw)
    if reason:
        raise ValueError(reason)
    n = pw.shape[0]
    rb = row_block(n)
    t = pw.tensors
    qs = _bytes(t["qs"]).reshape(n, -1, 16)  # (N, G, 16)
    if "qh" in t:
        qh = _bytes(t["qh"]).reshape(n, t["qh"].shape[1], -1)  # (N, G, 4 E)
    else:
        qh = torch.zeros(n, 0, 0, dtype=torch.uint8)
    dmin = t["dmin"] if "dmin" in t else torch.zeros(n, 0, dtype=torch.float16)
    return CpuWeight(
        qtype=pw.qtype,
        shape=pw.shape,
        row_block=rb,
        qs=_blocked(qs, rb),
        qh=_blocked(qh, rb),
        scales=_blocked(_scale_bytes(pw), rb),
        d=_blocked(t["d"].view(torch.int16), rb).view(np.uint16),
        dmin=_blocked(dmin.view(torch.int16), rb).view(np.uint16),
    )


def _unblocked(a: np.ndarray) -> np.ndarray:
    """(N / rb, ..., rb) -> (N, ...): the inverse of `_blocked`."""
    rows = np.moveaxis(a, -1, 1)  # (N / rb, rb, ...)
    return rows.reshape(rows.shape[0] * rows.shape[1], *rows.shape[2:])  # (N, ...)


def concat_cpu_rows(weights: list[CpuWeight]) -> CpuWeight:
    """One weight whose output rows are those of `weights` in order (`cpu_rows_concatenable`),
    in row blocks of the largest size that divides their total."""
    first = weights[0]
    if not all(cpu_rows_concatenable(first, w) for w in weights[1:]):
        raise ValueError(f"cannot concatenate {[(w.qtype, w.shape) for w in weights]}")
    n_rows = sum(w.shape[0] for w in weights)
    rb = row_block(n_rows)
    parts = zip(*(w.fields() for w in weights), strict=True)  # per field: one per weight
    if all(w.row_block == rb for w in weights):  # the row blocks just follow each other
        joined = [np.concatenate(p) for p in parts]
    else:
        joined = [
            _blocked(torch.from_numpy(np.concatenate([_unblocked(a) for a in p])), rb)
            for p in parts
        ]  # each (N, ...) -> (N / rb, ..., rb)
    return CpuWeight(first.qtype, (n_rows, first.shape[1]), rb, *joined)


def cpu_rows_concatenable(a: CpuWeight, b: CpuWeight) -> bool:
    """True when `b`'s rows can follow `a`'s in one `CpuWeight`: same type and width."""
    return (a.qtype, a.shape[1]) == (b.qtype, b.shape[1])
