"""Matvec with int8 activations: y = x @ W.T from packed weights and `Int8Activations`.

The float matvec (`matvec.py`) decodes each weight to float32 and spends about 4.5
instructions per 4-bit weight, which keeps the H100's issue slots busier than its memory
(1.9-2.1 TB/s on the large 4-bit weights against 2.7 for Q8_0, whose bytes hold half as
many weights). Here, as in llama.cpp's mmvq, the activations come quantized to int8 per
weight group (`corral.kernels.act_quant`), and one `dp4a` multiplies four weight bytes by
four activation codes into an int32 sum: a 4-bit word of 8 weights costs two masks, one
shift and two dp4a; a Q8_0 word, one dp4a. Per group and row the int32 sum becomes
float once: a * d_x * sum(q * q_x) + b * s_x, with (a, b) the group's `sub_block_ab`;
Q2_K, Q3_K and Q6_K, whose sub-block scales are small integers, first weigh their
sub-blocks' sums in int32 (`_integer_sub_block_sums`).

Tiles, pipelining and the scale loads are the float matvec's (`load_weight_step`, one
register layout for the loop); a thread's 4 words of a group meet the P = 8 / bits code
words of the same 4 columns, one 16-byte load each. Types (`supports_int8`): all of
the packed layouts. A weight word holds P = 8 / bits byte words (4-bit low fields: 2,
2-bit: 4, 8-bit: 1), byte word t the weights 16 t .. 16 t + 15 of the group
(`packing.field_slot`); high bits are spread from `qh` into each byte's bits above the
low ones with two shift-and-masks per word (`_spread_high_bits`). A byte word never
straddles sub-blocks, so types with 2 or 4 sub-blocks per group (Q6_K, 16-weight GPTQ
halves; Q2_K, Q3_K) add each byte word's dp4a to its sub-block's sum, with one sum of
its codes (per column, shared by the tile's rows) for the offset term. GPTQ act-order
weights read x's columns in their sorted order: the quantizing kernel gathers them
(`int8_activations`).

On an H100 (benchmarks/kernel_bandwidth.py --int8, Llama-2-7B shapes) this reads Q4_K
weights at 2.9-3.1 TB/s where the float matvec reads 1.5-2.2, and the 4096-row weights
gain most (4096 x 4096: 1.48 -> 2.64-2.90 TB/s). The blocks of x come from the kernel
that wrote x where it can make them (RMSNorm, decode attention's phase 2), else from a
~2 us quantizing kernel (`corral.kernels.triton.int8_act`). Decode uses it for the
4-bit types unless CORRAL_INT8_ACT=0 (`int8_enabled`; the others only on request). The
results then carry the activations' int8 rounding, as llama.cpp's quantized matvecs do:
each x moves by up to half its block's step (max |x| / 254), about 1% of the largest
output on random data (tests/kernels/test_matvec_int8.py).

Off a GPU (Triton's interpreter) dp4a is emulated with shifts and multiplies.
"""

import os
from dataclasses import astuple, dataclass

import torch
import triton
import triton.language as tl

from corral.kernels.act_quant import Int8Activations, group_weights
from corral.kernels.gptq import parse_gptq_qtype
from corral.kernels.packing import BLOCKS, PackedWeight
from corral.kernels.triton.decode import (
    KERNEL_TYPES,
    NIBBLE_SC_MIN,
    SIGNED_SC,
    kernel_args,
    sub_block_ab,
)
from corral.kernels.triton.int8_act import (
    attach_int8,
    block_counters,
    empty_activations,
    quantize_when_complete,
)
from corral.kernels.triton.matvec import load_weight_step, store_rows, tile_indices
from corral.kernels.triton.pdl import launch_options, release_dependents, wait_for_inputs


@triton.jit
def dot4(a, b, c, EMULATE: tl.constexpr):
    """c + the dot product of the 4 bytes of a (unsigned) and of b (signed): PTX dp4a."""
    if EMULATE:
        out = c
        for i in tl.static_range(4):
            out += ((a >> (8 * i)) & 0xFF) * ((b << (24 - 8 * i)) >> 24)
    else:
        out = tl.inline_asm_elementwise(
            "dp4a.u32.s32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c],
            dtype=tl.int32, is_pure=True, pack=1,
        )  # fmt: skip
    return out


@triton.jit
def _spread_high_bits(H, BITS: tl.constexpr, HBITS: tl.constexpr):
    """High bits H of a word of BITS-bit fields (slot s at bits [HBITS s, HBITS (s + 1)),
    `packing.field_slot`) -> those of weight byte b (slots P b.. P b + P - 1, P = 8 /
    BITS: fields b, b + 4, ...) at the bottom of byte b: two shift-and-masks."""
    F: tl.constexpr = (8 // BITS) * HBITS  # high bits per weight byte
    x = H & ((1 << (4 * F)) - 1)  # int16 fields arrive sign-extended
    x = (x | (x << (16 - 2 * F))) & (((1 << (2 * F)) - 1) * 0x00010001)
    return (x | (x << (8 - F))) & (((1 << F) - 1) * 0x01010101)


# `_high_bit_of_fives`: byte word t's bits of the 5-bit types' high-bit byte, their copies
# by the multiplier, and where the wanted copies land (bit 4 of each byte)
FIVES_SLOTS = tl.constexpr(0x55)
FIVES_COPIES = tl.constexpr(0x410410)
FIVES_TARGETS = tl.constexpr(0x10101010)


@triton.jit
def _high_bit_of_fives(H, t: tl.constexpr):
    """The 5-bit types' high bits (one byte of 8 one-bit slots, `packing.field_slot`) of
    byte word t (slots 2 b + t) at bit 4 of byte b, in one multiply: slot 2 b + t's copy
    shifted by 4 + 6 b - t lands on bit 8 b + 4, and no other copy or carry reaches those
    bits (tests/kernels/test_matvec_int8.py checks every byte)."""
    return ((H & (FIVES_SLOTS << t)) * (FIVES_COPIES >> t)) & FIVES_TARGETS


@triton.jit
def _group_sum(v, BM: tl.constexpr, ROWS: tl.constexpr, G: tl.constexpr):
    """(BM, ROWS, 4 G) int32 -> the float32 sums over each group's 4 words (BM, ROWS, G)."""
    return tl.sum(tl.reshape(v, [BM, ROWS, G, 4]), axis=3).to(tl.float32)


@triton.jit
def _add_codes(isum, qsum, q, codes, ones, SUMS: tl.constexpr, EMULATE: tl.constexpr):
    """(isum + the dp4a of weight bytes q (BM, BN, C) with codes (BM, 1, C), and with
    SUMS, qsum + the sum of those codes (per column, shared by the tile's rows))."""
    isum = dot4(q, tl.broadcast_to(codes, q.shape), isum, EMULATE)
    if SUMS:
        qsum = dot4(ones, codes, qsum, EMULATE)
    return isum, qsum


@triton.jit
def _sub_block_sum(
    isum, qsum, sc, d, dm, s: tl.constexpr, KIND: tl.constexpr, OFFSET: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, G: tl.constexpr,
):  # fmt: skip
    """Sub-block s's a * sum(q * q_x) + b * sum(q_x) per group: (BM, BN, G) float32."""
    a, b = sub_block_ab(sc, d, dm, s, KIND, OFFSET)  # (1, BN, G) each
    return a * _group_sum(isum, BM, BN, G) + b * _group_sum(qsum, BM, 1, G)


@triton.jit
def _integer_sub_block_sums(
    isum, qsum, sc, s: tl.constexpr, KIND: tl.constexpr, OFFSET: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, G: tl.constexpr,
):  # fmt: skip
    """Sub-block s's sums per group for the k-quants whose sub-block scales are integers
    (Q2_K: a = d sc, b = -dmin m; Q3_K, Q6_K: a = d sc, b = -OFFSET a), in int32: (sc *
    sum(q q_x), m * sum(q_x)), (BM, BN, G) each; for the signed ones the offset term is
    in the first and the second is 0. Exact: at most 16 weights of 6 bits times codes of
    127, times a scale of 8 bits, per sub-block."""
    dots = tl.sum(tl.reshape(isum, [BM, BN, G, 4]), axis=3)  # (BM, BN, G)
    codes = tl.sum(tl.reshape(qsum, [BM, 1, G, 4]), axis=3)  # (BM, 1, G)
    if KIND == NIBBLE_SC_MIN:
        byte = (sc >> (8 * s)) & 0xFF  # (1, BN, G): sc | m << 4
        scaled, mins = (byte & 0xF) * dots, (byte >> 4) * codes
    else:
        scaled = ((sc << (24 - 8 * s)) >> 24) * (dots - OFFSET * codes)  # int8 sc
        mins = tl.zeros_like(scaled)
    return scaled, mins


@triton.jit
def _accumulate(
    acc, CODES, XD, XS, W, H, sc, d, dm, code_cols, meta_cols, cs3, g0, g_end,
    BITS: tl.constexpr, HBITS: tl.constexpr, NSUB: tl.constexpr,
    KIND: tl.constexpr, OFFSET: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, G: tl.constexpr,
    EVEN: tl.constexpr, EMULATE: tl.constexpr,
):  # fmt: skip
    """acc (BM, BN, G) plus the products of the step at group g0 (words W, high bits H,
    scales). Byte word t holds weights 16 t.. 16 t + 15 of the group, so with NSUB = 2 or
    4 sub-blocks per group (Q6_K's and GPTQ's halves, Q2_K's and Q3_K's quarters) its dp4a
    sums go to sub-block t NSUB / P, each with its own sum of codes for the offset term
    (b * d_x * sum(q_x))."""
    P: tl.constexpr = 8 // BITS  # byte words per weight word
    C: tl.constexpr = 4 * G
    BYTE_MASK: tl.constexpr = ((1 << BITS) - 1) * 0x01010101  # the low BITS of every byte
    HIGH_MASK: tl.constexpr = ((1 << HBITS) - 1) * 0x01010101
    isum0 = tl.zeros([BM, BN, C], dtype=tl.int32)
    isum1 = tl.zeros([BM, BN, C], dtype=tl.int32)
    isum2 = tl.zeros([BM, BN, C], dtype=tl.int32)
    isum3 = tl.zeros([BM, BN, C], dtype=tl.int32)
    qsum0 = tl.zeros([BM, 1, C], dtype=tl.int32)
    qsum1 = tl.zeros([BM, 1, C], dtype=tl.int32)
    qsum2 = tl.zeros([BM, 1, C], dtype=tl.int32)
    qsum3 = tl.zeros([BM, 1, C], dtype=tl.int32)
    ones = tl.full([BM, 1, C], 0x01010101, tl.int32)
    SUMS: tl.constexpr = NSUB > 1  # sums of codes per sub-block (NSUB = 1 takes x's s)
    ONE_HIGH_BIT: tl.constexpr = BITS == 4 and HBITS == 1  # Q5_*: `_high_bit_of_fives`
    if HBITS > 0 and not ONE_HIGH_BIT:
        spread = _spread_high_bits(H, BITS, HBITS)  # (1, BN, C)
    for t in tl.static_range(P):
        ptrs = CODES + code_cols + g0 * (4 * P) + 4 * t  # (BM, 1, C)
        if EVEN:
            codes = tl.load(ptrs)
        else:
            codes = tl.load(ptrs, mask=g0 + cs3 // 4 < g_end, other=0)
        if P == 1:
            q = W
        else:
            q = (W >> (BITS * t)) & BYTE_MASK  # fields 4 t + b, one per byte b
        if ONE_HIGH_BIT:
            q = q | _high_bit_of_fives(H, t)
        elif HBITS > 0:
            q = q | (((spread >> (HBITS * t)) & HIGH_MASK) << BITS)
        q = tl.broadcast_to(q, [BM, BN, C])
        if t * NSUB // P == 0:  # the sub-block of byte word t
            isum0, qsum0 = _add_codes(isum0, qsum0, q, codes, ones, SUMS, EMULATE)
        elif t * NSUB // P == 1:
            isum1, qsum1 = _add_codes(isum1, qsum1, q, codes, ones, SUMS, EMULATE)
        elif t * NSUB // P == 2:
            isum2, qsum2 = _add_codes(isum2, qsum2, q, codes, ones, SUMS, EMULATE)
        else:
            isum3, qsum3 = _add_codes(isum3, qsum3, q, codes, ones, SUMS, EMULATE)
    if EVEN:
        xd = tl.load(XD + meta_cols + g0)
    else:
        inside = g0 + tl.arange(0, G)[None, None, :] < g_end  # (1, 1, G)
        xd = tl.load(XD + meta_cols + g0, mask=inside, other=0.0)
    if NSUB == 1:
        if EVEN:
            xs = tl.load(XS + meta_cols + g0)
        else:
            xs = tl.load(XS + meta_cols + g0, mask=inside, other=0.0)
        a0, b0 = sub_block_ab(sc, d, dm, 0, KIND, OFFSET)  # (1, BN, G) each
        out = acc + a0 * (xd * _group_sum(isum0, BM, BN, G)) + b0 * xs
    elif KIND == NIBBLE_SC_MIN or KIND == SIGNED_SC:  # one conversion to float per group
        scaled, mins = _integer_sub_block_sums(isum0, qsum0, sc, 0, KIND, OFFSET, BM, BN, G)
        scaled1, mins1 = _integer_sub_block_sums(isum1, qsum1, sc, 1, KIND, OFFSET, BM, BN, G)
        scaled += scaled1
        mins += mins1
        if NSUB == 4:
            scaled2, mins2 = _integer_sub_block_sums(
                isum2, qsum2, sc, 2, KIND, OFFSET, BM, BN, G
            )  # fmt: skip
            scaled3, mins3 = _integer_sub_block_sums(
                isum3, qsum3, sc, 3, KIND, OFFSET, BM, BN, G
            )  # fmt: skip
            scaled += scaled2 + scaled3
            mins += mins2 + mins3
        out = acc + xd * (d * scaled.to(tl.float32) - dm * mins.to(tl.float32))
    else:
        sums = _sub_block_sum(isum0, qsum0, sc, d, dm, 0, KIND, OFFSET, BM, BN, G)
        sums += _sub_block_sum(isum1, qsum1, sc, d, dm, 1, KIND, OFFSET, BM, BN, G)
        if NSUB == 4:
            sums += _sub_block_sum(isum2, qsum2, sc, d, dm, 2, KIND, OFFSET, BM, BN, G)
            sums += _sub_block_sum(isum3, qsum3, sc, d, dm, 3, KIND, OFFSET, BM, BN, G)
        out = acc + xd * sums
    return out


@triton.jit(do_not_specialize=["meta_zero"])
def _matvec_int8_kernel(
    CODES, XD, XS, QS, QH, SC, D, DM, OUT, OUT_CODES, OUT_D, OUT_S, COUNTS,
    M, N, n_groups, n_steps, stride_cm, stride_dm, stride_oc, stride_od, meta_zero,
    BITS: tl.constexpr, HBITS: tl.constexpr, NSUB: tl.constexpr, D_DIV: tl.constexpr,
    KIND: tl.constexpr, OFFSET: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, G: tl.constexpr, SWIGLU: tl.constexpr,
    OUT_P: tl.constexpr, EVEN: tl.constexpr, EMULATE: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Program pid_n: rows pid_n * BN.. of the product (module docs). With OUT_P (SwiGLU
    only), the output's int8 blocks for P = OUT_P byte words per weight word too."""
    release_dependents(PDL)
    P: tl.constexpr = 8 // BITS
    pid_n = tl.program_id(0)
    _, rows3, ms, ms3, cs3, gs3 = tile_indices(pid_n, M, N, BM, BN, G)
    code_cols = ms3 * stride_cm + (cs3 // 4) * (4 * P) + cs3 % 4  # (BM, 1, C): t = 0, group 0
    meta_cols = ms3 * stride_dm + gs3 + meta_zero  # (BM, 1, G); see matvec's _load_scales
    acc = tl.zeros([BM, BN, G], dtype=tl.float32)
    Wn, Hn, scn, dn, dmn = load_weight_step(
        QS, QH, SC, D, DM, rows3, cs3, gs3, 0, n_groups, n_groups, meta_zero,
        HBITS, KIND, D_DIV, EVEN,
    )  # fmt: skip
    wait_for_inputs(PDL)  # the weights never change: only x waits for the kernel before
    last = (n_steps - 1) * G
    for step in range(0, n_steps):
        g0 = step * G
        W, H, sc, d, dm = Wn, Hn, scn, dn, dmn
        # the next step's tile is requested before this one is decoded (as in matvec)
        Wn, Hn, scn, dn, dmn = load_weight_step(
            QS, QH, SC, D, DM, rows3, cs3, gs3, tl.minimum(g0 + G, last), n_groups, n_groups,
            meta_zero, HBITS, KIND, D_DIV, EVEN,
        )  # fmt: skip
        acc = _accumulate(
            acc, CODES, XD, XS, W, H, sc, d, dm, code_cols, meta_cols, cs3, g0, n_groups,
            BITS, HBITS, NSUB, KIND, OFFSET, BM, BN, G, EVEN, EMULATE,
        )  # fmt: skip
    store_rows(OUT, tl.sum(acc, axis=2), ms, pid_n, M, N, BN, SWIGLU)  # sums (BM, BN)
    if OUT_P > 0:
        quantize_when_complete(
            OUT, OUT_CODES, OUT_D, OUT_S, COUNTS, pid_n, M, N // 2, stride_oc, stride_od,
            BM, BN // 2, OUT_P,
        )  # fmt: skip


def supports_int8(qtype: str) -> bool:
    """Whether `matvec_int8` takes weights of `qtype`: every GGUF block type and every GPTQ
    layout (all have 1, 2 or 4 sub-blocks per group; see the module docstring)."""
    return qtype in BLOCKS or parse_gptq_qtype(qtype) is not None


def int8_enabled(qtype: str) -> bool:
    """Whether decode matvecs of `qtype` weights run on int8 activations.

    CORRAL_INT8_ACT: "1" (default) for the types with 4-bit low fields (Q4_*, Q5_*, Q4_K,
    Q5_K, Q6_K, 4-bit GPTQ); "all" for every type that `supports_int8`; "0" keeps the
    float matvec everywhere. Q8_0 is off by default because the float matvec already
    reads it at ~2.7-2.9 TB/s: a 7B Q8_0 file decoded at 293 tokens/s with int8
    activations against 307 without on an H100, the ~2.4 us quantizing kernel before each
    matvec costing more than the faster matvec saves. The 2-bit layouts (Q2_K, Q3_K,
    2- and 3-bit GPTQ) and 8-bit GPTQ are opt-in until timed on a GPU: they are tested
    here but were written without one (docs/performance.md)."""
    setting = os.environ.get("CORRAL_INT8_ACT", "1")
    if setting == "0" or not supports_int8(qtype):
        return False
    return setting == "all" or KERNEL_TYPES[qtype].bits == 4


@dataclass(frozen=True)
class Int8Tiles:
    """A program's block_n rows, `groups` groups of 4 words per step (fewer when a row has
    fewer) and num_warps warps (scaled down with the groups); powers of two.

    The defaults were the best or within ~5% of the best tiling of INT8_SWEEP in
    benchmarks/kernel_bandwidth.py for Q4_0, Q4_K and Q8_0 on Llama-2-7B's weight shapes
    (batch 1, H100); several activation rows take the same tiles, untimed."""

    block_n: int = 4
    groups: int = 128
    num_warps: int = 4


DEFAULT_TILES = Int8Tiles()


def matvec_int8(
    xq: Int8Activations,
    pw: PackedWeight,
    out_dtype: torch.dtype = torch.float16,
    tiles: Int8Tiles | None = None,
    *,
    swiglu: bool = False,
    out_int8_bits: int = 0,
) -> torch.Tensor:
    """(M, N) in out_dtype: the quantized activations (M, K) times the packed weight's
    transpose, with `tiles` (default DEFAULT_TILES). swiglu: as `matvec`'s, silu(gate) *
    up of interleaved rows, (M, N / 2); then out_int8_bits (2, 4 or 8; 0: none) also
    writes the int8 blocks of that output for the next product (the down projection's
    input) and attaches them (`int8_act.attach_int8`), when its columns are whole
    blocks that whole programs write (`int8_act.quantize_when_complete`)."""
    block_n, groups, num_warps = astuple(tiles or DEFAULT_TILES)
    if not supports_int8(pw.qtype):
        raise ValueError(f"no int8-activation matvec for {pw.qtype} weights")
    kt = KERNEL_TYPES[pw.qtype]
    n, k = pw.shape
    m = xq.shape[0]
    if xq.bits != kt.bits or xq.shape[1] != k:
        raise ValueError(
            f"activations quantized for {xq.bits}-bit fields, {xq.shape[1]} columns; "
            f"{pw.qtype} weight needs {kt.bits}-bit fields, {k} columns"
        )
    if groups & (groups - 1) or block_n & (block_n - 1):
        raise ValueError(f"tiles must be powers of two, got {block_n} rows x {groups} groups")
    if swiglu and (n % 2 or block_n % 2):
        raise ValueError(f"SwiGLU pairs need an even row count and tile, got {n}, {block_n}")
    if out_int8_bits and not swiglu:
        raise ValueError("int8 blocks of the output are written only from SwiGLU's epilogue")
    n_groups = k // kt.group
    fitted = min(groups, triton.next_power_of_2(n_groups))
    warps = max(1, num_warps * fitted // groups)
    device = xq.codes.device
    out = torch.empty(m, n // 2 if swiglu else n, dtype=out_dtype, device=device)
    blocks, counts = _output_blocks(m, n // 2, out_int8_bits, block_n // 2, device)
    if blocks is None:  # OUT_P = 0: the epilogue's arguments are never read
        pointers, strides, out_p = (out, out, out, out), (0, 0), 0
    else:
        pointers = (blocks.codes, blocks.d, blocks.s, counts)
        strides = (blocks.codes.stride(0), blocks.d.stride(0))
        out_p = 8 // blocks.bits
    emulate = os.environ.get("TRITON_INTERPRET") == "1"  # the interpreter runs no PTX
    _matvec_int8_kernel[(triton.cdiv(n, block_n),)](
        xq.codes, xq.d, xq.s, *kernel_args(pw.tensors, kt), out, *pointers,
        m, n, n_groups, triton.cdiv(n_groups, fitted), xq.codes.stride(0), xq.d.stride(0),
        *strides, 0, kt.bits, kt.hbits, kt.nsub, kt.d_div, kt.scale_kind, kt.offset,
        BM=triton.next_power_of_2(m), BN=block_n, G=fitted, SWIGLU=swiglu, OUT_P=out_p,
        EVEN=n_groups % fitted == 0, EMULATE=emulate, num_warps=warps,
        **launch_options(out.device, m),
    )  # fmt: skip
    if blocks is not None:
        attach_int8(out, blocks)
    return out


def _output_blocks(
    m: int, width: int, bits: int, outputs: int, device: torch.device
) -> tuple[Int8Activations | None, torch.Tensor | None]:
    """(empty int8 blocks of the (m, width) output, `block_counters` for them) when
    `bits` asks for them and every block is written by whole programs of `outputs`
    columns; else (None, None): the next product then quantizes the output itself."""
    if not bits:
        return None, None
    group = group_weights(bits)
    if width % group or group % outputs:
        return None, None
    return empty_activations(m, width, bits, device), block_counters(device, width // group)
