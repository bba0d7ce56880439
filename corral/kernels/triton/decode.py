"""Decoding packed quants inside Triton kernels, shared by the matvec, matmul and dequant
kernels.

Each quant type is data, not code: `KernelType` says how many low bits sit in the `qs`
words, how many high bits in `qh`, how many sub-blocks a group of 4 words spans, and
how its per-sub-block `a, b` (values are `a * q + b`, see corral.kernels.reference) come
from the scale tensors. The kernels are generic over these constexprs.

Where the time goes: a 4-bit weight costs one shift, one and/or and one FMA. Converting
an integer to float (I2F) runs at a quarter of the FMA rate on H100, so no quant is ever
converted: its bits are placed in the top of the mantissa of 1.0f,

    f = as_float(0x3F800000 | q << (23 - nbits)) = 1 + q / 2**nbits   (exact),

and the kernels accumulate sum(f * x); sum(q * x) = 2**nbits * (sum(f * x) - sum(x)),
which keeps float32 accuracy because f stays in [1, 2).
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from corral.kernels.gptq import parse_gptq_qtype, scale_pairs, split_bits, word_group

# How a type's (a, b) per sub-block come from its scale fields (see packing.py's table).
LEGACY = tl.constexpr(0)  # a = d, b = -offset * d                    (Q4_0, Q5_0, Q8_0)
LEGACY_MIN = tl.constexpr(1)  # a = d, b = m                          (Q4_1, Q5_1)
NIBBLE_SC_MIN = tl.constexpr(2)  # a = d sc, b = -dmin m; sc | m << 4 per byte   (Q2_K)
SIGNED_SC = tl.constexpr(3)  # a = d sc, b = -offset a; int8 sc per byte   (Q3_K, Q6_K)
BYTE_SC_MIN = tl.constexpr(4)  # a = d sc, b = -dmin m; sc | m << 8 per group  (Q4_K, Q5_K)
GPTQ_ZERO = tl.constexpr(5)  # a = d, b = -d z; integer zero point z in `zeros`     (GPTQ)
GPTQ_ZERO2 = tl.constexpr(6)  # a = d | sc (sub-block 0 | 1), b = -a z; z byte s of dmin (GPTQ)


@dataclass(frozen=True)
class KernelType:
    """Constexprs describing one quant type to the kernels."""

    bits: int  # low bits per weight, in the int32 `qs` words
    hbits: int  # high bits per weight, in `qh` (0: none)
    nsub: int  # sub-blocks per group of 4 words
    d_div: int  # groups per entry of `d` (and `dmin`)
    scale_kind: int  # one of the constants above
    offset: int  # the q offset of LEGACY and SIGNED_SC types

    @property
    def group(self) -> int:
        """Weights per group of 4 words."""
        return 4 * 32 // self.bits


class _KernelTypes(dict):
    """qtype -> KernelType; GPTQ qtypes ("GPTQ4g128", see corral.kernels.gptq) are built
    on first use: one (scale, zero) per group of `group size` weights, GPTQ_ZERO2 when
    that is half a group of 4 words (two sub-blocks), else GPTQ_ZERO."""

    def __missing__(self, qtype: str) -> KernelType:
        parsed = parse_gptq_qtype(qtype)
        if parsed is None:
            raise KeyError(qtype)
        bits, group_size = parsed
        low, high = split_bits(bits)
        if scale_pairs(bits, group_size) == 2:
            kt = KernelType(low, high, 2, 1, GPTQ_ZERO2.value, 0)
        else:
            kt = KernelType(low, high, 1, group_size // word_group(bits), GPTQ_ZERO.value, 0)
        self[qtype] = kt
        return kt


KERNEL_TYPES: dict[str, KernelType] = _KernelTypes(
    {
        "Q4_0": KernelType(4, 0, 1, 1, LEGACY.value, 8),
        "Q4_1": KernelType(4, 0, 1, 1, LEGACY_MIN.value, 0),
        "Q5_0": KernelType(4, 1, 1, 1, LEGACY.value, 16),
        "Q5_1": KernelType(4, 1, 1, 1, LEGACY_MIN.value, 0),
        "Q8_0": KernelType(8, 0, 1, 2, LEGACY.value, 128),
        "Q2_K": KernelType(2, 0, 4, 4, NIBBLE_SC_MIN.value, 0),
        "Q3_K": KernelType(2, 1, 4, 4, SIGNED_SC.value, 4),
        "Q4_K": KernelType(4, 0, 1, 8, BYTE_SC_MIN.value, 0),
        "Q5_K": KernelType(4, 1, 1, 8, BYTE_SC_MIN.value, 0),
        "Q6_K": KernelType(4, 2, 2, 8, SIGNED_SC.value, 32),
    }
)


def kernel_args(pw_tensors: dict, kt: KernelType) -> tuple:
    """The (qs, qh, scales, d, dmin) pointers of a packed weight; absent fields alias qs
    (or d). GPTQ's `zeros` take the place of dmin."""
    qs = pw_tensors["qs"]
    return (
        qs,
        pw_tensors.get("qh", qs),
        pw_tensors.get("scales", qs),
        pw_tensors["d"],
        pw_tensors.get("dmin", pw_tensors.get("zeros", pw_tensors["d"])),
    )


@triton.jit
def _move_bits(v, src: tl.constexpr, dst: tl.constexpr):
    """Shift `v` so that its bit `src` lands on bit `dst`."""
    if src > dst:
        out = v >> (src - dst)
    elif src < dst:
        out = v << (dst - src)
    else:
        out = v
    return out


# The bits of 1.0f. Kernels take it as a run-time argument (pass ONE_BITS): as a constant,
# ptxas would spend two LOP3s on `(v & mask) | 0x3F800000` (one immediate each); from a
# register it is a single LOP3.
ONE_BITS = 0x3F800000


@triton.jit
def field_as_float(W, H, j: tl.constexpr, BITS: tl.constexpr, HBITS: tl.constexpr, one):
    """Field j of words W (and high bits H) as f = 1 + q / 2**(BITS + HBITS), float32.

    `one` is ONE_BITS, given at run time.
    """
    LOW: tl.constexpr = 23 - BITS - HBITS
    SLOT: tl.constexpr = (8 // BITS) * (j % 4) + j // 4  # packing.field_slot
    if HBITS > 0:
        high = _move_bits(H, HBITS * SLOT, 23 - HBITS) & (((1 << HBITS) - 1) << (23 - HBITS))
        one = high | one
    bits = (_move_bits(W, BITS * SLOT, LOW) & (((1 << BITS) - 1) << LOW)) | one
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def load_meta(SC, D, DM, rows, groups, n_groups, mask, KIND: tl.constexpr, D_DIV: tl.constexpr):
    """Scale fields of `groups` (any shape broadcasting with `rows`): (sc, d, dmin).

    `sc` is the raw int32 scale entry (0 for legacy types and GPTQ_ZERO); `dmin` is `m`
    for LEGACY_MIN types, the zero point for GPTQ_ZERO and 0 where a type has none.
    GPTQ_ZERO2 (D_DIV 1) gives the scales of sub-blocks 0 and 1 as d and sc (float32),
    and both zero points as dmin (int32: byte s is sub-block s's).
    """
    d_off = rows * (n_groups // D_DIV) + groups // D_DIV
    if KIND == GPTQ_ZERO2:
        D2, DM2 = gptq_pairs(D, DM)
        d, sc = split_scales(tl.load(D2 + d_off, mask=mask, other=0), D.dtype.element_ty)
        dm = tl.load(DM2 + d_off, mask=mask, other=0).to(tl.int32)
    else:
        d = tl.load(D + d_off, mask=mask, other=0.0).to(tl.float32)
        if KIND == LEGACY_MIN or KIND == NIBBLE_SC_MIN or KIND == BYTE_SC_MIN or KIND == GPTQ_ZERO:
            dm = tl.load(DM + d_off, mask=mask, other=0).to(tl.float32)
        else:
            dm = tl.zeros_like(d)
        if KIND >= NIBBLE_SC_MIN and KIND <= BYTE_SC_MIN:
            sc = tl.load(SC + rows * n_groups + groups, mask=mask, other=0).to(tl.int32)
        else:
            sc = tl.zeros_like(d).to(tl.int32)
    return sc, d, dm


@triton.jit
def gptq_pairs(D, DM):
    """GPTQ_ZERO2's scales D and u8 zero points DM, each row-major (N, 2 n_groups), as
    pointers to one integer per group of 4 words holding both of its entries (sub-block
    0's in the low half): an int32 (int64 for float32 scales) and an int16. Both tensors
    are allocations of their own (`pack_gptq`, `concat_rows`), so these are aligned.

    One load per group and field, contiguous along groups like GPTQ_ZERO's, so the
    compiler lays the scales out like the quants (two stride-2 loads of the scales got
    a layout by rows instead, and a shuffle through shared memory, on sm_90).
    """
    if D.dtype.element_ty.primitive_bitwidth == 32:
        D2 = D.to(tl.pointer_type(tl.int64))
    else:
        D2 = D.to(tl.pointer_type(tl.int32))
    return D2, DM.to(tl.pointer_type(tl.int16))


@triton.jit
def split_scales(pair, DT: tl.constexpr):
    """The two scales of dtype DT in `pair` (from `gptq_pairs`) as float32 (low, high)."""
    if DT == tl.float32:
        low = pair.to(tl.int32).to(tl.float32, bitcast=True)
        high = (pair >> 32).to(tl.int32).to(tl.float32, bitcast=True)
    elif DT == tl.bfloat16:  # a bfloat16 is the top half of a float32
        low = (pair << 16).to(tl.float32, bitcast=True)
        high = (pair & -65536).to(tl.float32, bitcast=True)
    else:
        low = pair.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        high = (pair >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return low, high


@triton.jit
def sub_block_ab(sc, d, dm, s: tl.constexpr, KIND: tl.constexpr, OFFSET: tl.constexpr):
    """(a, b) of sub-block `s` of each group: its values are a * q + b."""
    if KIND == LEGACY:
        a = d
        b = d * (-OFFSET)
    elif KIND == LEGACY_MIN:
        a = d
        b = dm
    elif KIND == NIBBLE_SC_MIN:
        byte = (sc >> (8 * s)) & 0xFF
        a = d * (byte & 0xF).to(tl.float32)
        b = -(dm * (byte >> 4).to(tl.float32))
    elif KIND == SIGNED_SC:
        a = d * ((sc << (24 - 8 * s)) >> 24).to(tl.float32)
        b = a * (-OFFSET)
    elif KIND == GPTQ_ZERO:
        a = d
        b = -(d * dm)  # exact: an fp16 scale times an integer below 2**9
    elif KIND == GPTQ_ZERO2:
        if s == 0:
            a = d
        else:
            a = sc
        b = -(a * ((dm >> (8 * s)) & 0xFF).to(tl.float32))  # as GPTQ_ZERO's
    else:
        a = d * (sc & 0xFF).to(tl.float32)
        b = -(dm * ((sc >> 8) & 0xFF).to(tl.float32))
    return a, b


@triton.jit
def _field(
    W, H, sc, d, dm, ONE, j: tl.constexpr,
    BITS: tl.constexpr, HBITS: tl.constexpr, NSUB: tl.constexpr,
    KIND: tl.constexpr, OFFSET: tl.constexpr, DTYPE: tl.constexpr,
):  # fmt: skip
    """The weights of field j of the words W, (BN, C) in DTYPE: a * q + b."""
    Q: tl.constexpr = float(1 << (BITS + HBITS))
    a, b = sub_block_ab(sc, d, dm, j // (32 // BITS // NSUB), KIND, OFFSET)  # (BN, C) each
    aq = a * Q
    f = field_as_float(W, H, j, BITS, HBITS, ONE)  # 1 + q / Q
    return (f * aq + (b - aq)).to(DTYPE)


@triton.jit
def _join_pairs(
    W, H, sc, d, dm, ONE,
    j0: tl.constexpr, j1: tl.constexpr, j2: tl.constexpr, j3: tl.constexpr,
    BITS: tl.constexpr, HBITS: tl.constexpr, NSUB: tl.constexpr,
    KIND: tl.constexpr, OFFSET: tl.constexpr, DT: tl.constexpr,
):  # fmt: skip
    """join(join(field j0, field j1), join(field j2, field j3)): (BN, C, 2, 2)."""
    return tl.join(
        tl.join(
            _field(W, H, sc, d, dm, ONE, j0, BITS, HBITS, NSUB, KIND, OFFSET, DT),
            _field(W, H, sc, d, dm, ONE, j1, BITS, HBITS, NSUB, KIND, OFFSET, DT),
        ),
        tl.join(
            _field(W, H, sc, d, dm, ONE, j2, BITS, HBITS, NSUB, KIND, OFFSET, DT),
            _field(W, H, sc, d, dm, ONE, j3, BITS, HBITS, NSUB, KIND, OFFSET, DT),
        ),
    )


@triton.jit
def decode_tile(
    W, H, sc, d, dm, ONE,
    BITS: tl.constexpr, HBITS: tl.constexpr, NSUB: tl.constexpr,
    KIND: tl.constexpr, OFFSET: tl.constexpr, DT: tl.constexpr,
):  # fmt: skip
    """Words W (BN, C) (high bits H, scales per word column) -> weights (BN, C * J) in DT.

    Column c * J + j is field j of word column c: kernel order, see `permute_columns`.
    The fields are joined in registers (join appends a trailing dim of 2; the order of
    the joins makes the trailing dims, read as bits, count j).
    """
    J: tl.constexpr = 32 // BITS  # fields per word
    if J == 4:
        w = tl.join(
            tl.join(
                _field(W, H, sc, d, dm, ONE, 0, BITS, HBITS, NSUB, KIND, OFFSET, DT),
                _field(W, H, sc, d, dm, ONE, 2, BITS, HBITS, NSUB, KIND, OFFSET, DT),
            ),
            tl.join(
                _field(W, H, sc, d, dm, ONE, 1, BITS, HBITS, NSUB, KIND, OFFSET, DT),
                _field(W, H, sc, d, dm, ONE, 3, BITS, HBITS, NSUB, KIND, OFFSET, DT),
            ),
        )  # (BN, C, 2, 2)
    elif J == 8:
        w = tl.join(
            _join_pairs(W, H, sc, d, dm, ONE, 0, 4, 2, 6, BITS, HBITS, NSUB, KIND, OFFSET, DT),
            _join_pairs(W, H, sc, d, dm, ONE, 1, 5, 3, 7, BITS, HBITS, NSUB, KIND, OFFSET, DT),
        )  # (BN, C, 2, 2, 2)
    else:
        w = tl.join(
            tl.join(
                _join_pairs(W, H, sc, d, dm, ONE, 0, 8, 4, 12, BITS, HBITS, NSUB, KIND, OFFSET, DT),
                _join_pairs(
                    W, H, sc, d, dm, ONE, 2, 10, 6, 14, BITS, HBITS, NSUB, KIND, OFFSET, DT
                ),
            ),
            tl.join(
                _join_pairs(W, H, sc, d, dm, ONE, 1, 9, 5, 13, BITS, HBITS, NSUB, KIND, OFFSET, DT),
                _join_pairs(
                    W, H, sc, d, dm, ONE, 3, 11, 7, 15, BITS, HBITS, NSUB, KIND, OFFSET, DT
                ),
            ),
        )  # (BN, C, 2, 2, 2, 2)
    return tl.reshape(w, [W.shape[0], W.shape[1] * J])  # (BN, C * J)


def permute_columns(x: torch.Tensor, qtype: str) -> torch.Tensor:
    """x (M, K) with each group's columns in kernel order (word, then field), a copy.

    Storage order inside a group is field, then word (weight 4 j + w is field j of
    word w); `decode_tile` emits word, then field. A product only needs both operands
    in the same order along K.
    """
    m, k = x.shape
    kt = KERNEL_TYPES[qtype]
    j = 32 // kt.bits
    return x.view(m, k // kt.group, j, 4).transpose(2, 3).reshape(m, k)  # (M, K) permuted
