"""The quantizing kernel of int8 activations: x (M, K) -> `Int8Activations`.

The layout (blocks of one weight group, llama.cpp's q8_1 fields d and s = d * sum(q),
codes packed in the weight words' decode order) is documented in
`corral.kernels.act_quant`, which also holds this kernel's torch twin. A program loads
BLOCKS_PER_PROGRAM blocks of a row (contiguous; gathered for GPTQ act-order) and puts
them in code order in registers (byte b of code word (t, w) is weight 16 t + 4 b + w of
its block, `_in_code_order`), so packing is a shift and a sum per word. RMSNorm and
decode attention write the blocks of their outputs with the same epilogue
(`store_values_as_blocks`), and SwiGLU's int8 matvec through `quantize_when_complete`.
"""

import torch
import triton
import triton.language as tl

from corral.kernels.act_quant import Int8Activations, group_weights
from corral.kernels.triton.pdl import launch_options, release_dependents, wait_for_inputs

BLOCKS_PER_PROGRAM = 32  # groups quantized by one program


@triton.jit
def quantize_blocks(x):
    """x (NB, P, 4, 4) float32, the value for byte b of code word (t, w) of block i at
    [i, t, w, b] -> (code words (NB, P, 4) int32, d (NB,), s (NB,)) float32."""
    amax = tl.max(tl.max(tl.max(tl.abs(x), axis=3), axis=2), axis=1)  # (NB,)
    d = tl.math.div_rn(amax, 127.0)
    safe = tl.where(d > 0, d, 1.0)
    inv = tl.where(d > 0, tl.math.div_rn(tl.full(d.shape, 1.0, tl.float32), safe), 0.0)
    v = x * inv[:, None, None, None]
    q = (tl.abs(v) + 0.5).to(tl.int32)  # round half away from zero: a floor of a positive
    q = tl.where(v < 0, -q, q)  # (NB, P, 4, 4)
    total = tl.sum(tl.sum(tl.sum(q, axis=3), axis=2), axis=1)  # (NB,)
    shifts = 8 * tl.arange(0, 4)[None, None, None, :]  # byte b at bit 8 b
    words = tl.sum((q & 0xFF) << shifts, axis=3)  # (NB, P, 4); bytes never overlap
    return words, d, d * total.to(tl.float32)


@triton.jit
def store_blocks(CODES, D, S, words, d, s, index, inside, code_stride, meta_stride):
    """Store `quantize_blocks`' results for NB blocks at `index` (NB,) where `inside`:
    block i's code words at CODES + index[i] * code_stride, its d and s at D, S +
    index[i] * meta_stride (blocks of one row: index = block numbers, strides 4 P and 1;
    one block of several rows: index = rows, the row strides)."""
    P: tl.constexpr = words.shape[1]
    word_offs = (
        index[:, None, None] * code_stride
        + 4 * tl.arange(0, P)[None, :, None]
        + tl.arange(0, 4)[None, None, :]
    )  # (NB, P, 4): code word (t, w) of each block
    tl.store(CODES + word_offs, words, mask=inside[:, None, None])
    tl.store(D + index * meta_stride, d, mask=inside)
    tl.store(S + index * meta_stride, s, mask=inside)


@triton.jit
def _in_code_order(values, NB: tl.constexpr, P: tl.constexpr):
    """values (NB * 16 P,) or (NB, 16 P), the weights of NB blocks in order -> (NB, P, 4,
    4) with byte b of code word (t, w) (weight 16 t + 4 b + w) at [i, t, w, b]."""
    return tl.permute(tl.reshape(values, [NB, P, 4, 4]), (0, 1, 3, 2))


@triton.jit
def store_values_as_blocks(CODES, D, S, values, first_block, n_blocks, P: tl.constexpr):
    """Quantize `values` (16 P NB,), the weights of blocks first_block.. of one row in
    order, and store the blocks below n_blocks (row pointers CODES, D, S): the epilogue
    of a kernel that writes activations and their int8 blocks (RMSNorm, attention), and
    the quantizing kernel's body."""
    NB: tl.constexpr = values.shape[0] // (16 * P)
    words, d, s = quantize_blocks(_in_code_order(values.to(tl.float32), NB, P))
    blocks = first_block + tl.arange(0, NB)
    store_blocks(CODES, D, S, words, d, s, blocks, blocks < n_blocks, 4 * P, 1)


@triton.jit
def quantize_when_complete(
    OUT, CODES, D, S, COUNTS, pid, M, n_out, stride_c, stride_d,
    BM: tl.constexpr, OUTPUTS: tl.constexpr, P: tl.constexpr,
):  # fmt: skip
    """The epilogue of a kernel whose program `pid` has stored columns pid * OUTPUTS.. of
    the M rows of its (M, n_out) output OUT: the last program to finish a block of
    columns quantizes that block of every row into CODES, D, S (row strides stride_c,
    stride_d), bit-exact with quantizing the stored output.

    COUNTS holds one int32 per block, zero before the launch and again after it (the last
    program resets it). Each program counts itself in with a release-acquire atomic, after
    a barrier that puts all of its threads' stores before it (as CUTLASS's semaphores do);
    the last one then sees every store of the block, and loads them through L2 (.cg)."""
    GROUP: tl.constexpr = 16 * P  # weights per block
    PROGRAMS: tl.constexpr = GROUP // OUTPUTS  # programs writing one block
    block = pid // PROGRAMS
    tl.debug_barrier()
    arrived = tl.atomic_add(COUNTS + block, 1, sem="acq_rel", scope="gpu")
    if arrived == PROGRAMS - 1:
        tl.store(COUNTS + block, 0)
        ms = tl.arange(0, BM)
        inside = ms < M  # (BM,)
        cols = ms[:, None] * n_out + block * GROUP + tl.arange(0, GROUP)[None, :]  # (BM, GROUP)
        values = tl.load(OUT + cols, mask=inside[:, None], other=0.0, cache_modifier=".cg")
        x = _in_code_order(values.to(tl.float32), BM, P)  # (BM, P, 4, 4), one block per row
        words, d, s = quantize_blocks(x)  # (BM, P, 4), (BM,), (BM,)
        store_blocks(
            CODES + block * (4 * P), D + block, S + block, words, d, s, ms, inside,
            stride_c, stride_d,
        )  # fmt: skip


@triton.jit
def _quantize_kernel(
    X, PERM, CODES, D, S, n_blocks, stride_x, stride_c, stride_d,
    P: tl.constexpr, BLOCKS: tl.constexpr, GATHER: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Program (m, i): blocks i * BLOCKS.. of row m (of x's columns PERM[k] with GATHER)."""
    release_dependents(PDL)
    wait_for_inputs(PDL)
    m = tl.program_id(0)
    first = tl.program_id(1) * BLOCKS
    cols = first * (16 * P) + tl.arange(0, BLOCKS * 16 * P)  # (BLOCKS * GROUP,)
    inside = cols < n_blocks * (16 * P)
    if GATHER:
        cols = tl.load(PERM + cols, mask=inside, other=0)
    x = tl.load(X + m * stride_x + cols, mask=inside, other=0.0)
    store_values_as_blocks(
        CODES + m * stride_c, D + m * stride_d, S + m * stride_d, x, first, n_blocks, P
    )


def empty_activations(m: int, k: int, bits: int, device: torch.device) -> Int8Activations:
    """Uninitialized int8 blocks of (m, k) activations for `bits`-bit weights, for a kernel
    to fill. ValueError when k is not a whole number of blocks."""
    group = group_weights(bits)
    if k % group:
        raise ValueError(f"activations of {k} columns are not whole blocks of {group}")
    codes = torch.empty(m, k // 4, dtype=torch.int32, device=device)
    d = torch.empty(m, k // group, dtype=torch.float32, device=device)
    return Int8Activations(bits, codes, d, torch.empty_like(d))


_COUNTERS: dict[torch.device, torch.Tensor] = {}  # quantize_when_complete's, per device


def block_counters(device: torch.device, count: int) -> torch.Tensor:
    """`count` zero int32 counters for `quantize_when_complete` on `device`. Every launch
    leaves them zero, so all launches on the device share them; they must not run at
    the same time (corral's decode runs on one stream)."""
    counters = _COUNTERS.get(device)
    if counters is None or counters.numel() < count:
        counters = _COUNTERS[device] = torch.zeros(count, dtype=torch.int32, device=device)
    return counters


def quantize_activations(
    x: torch.Tensor, bits: int, perm: torch.Tensor | None = None
) -> Int8Activations:
    """x (M, K) float, K a multiple of the group -> its int8 blocks for `bits`-bit weights;
    with `perm` (int32 (K,)), the blocks of x[:, perm] (a GPTQ act-order weight's column
    order, gathered in the same kernel)."""
    m, k = x.shape
    out = empty_activations(m, k, bits, x.device)
    if x.stride(1) != 1:
        raise ValueError("activations must be contiguous along K")
    if perm is not None and perm.shape != (k,):
        raise ValueError(f"a column order of shape {tuple(perm.shape)} for {k} columns")
    n_blocks = out.d.shape[1]
    grid = (m, triton.cdiv(n_blocks, BLOCKS_PER_PROGRAM))
    _quantize_kernel[grid](
        x, x if perm is None else perm, out.codes, out.d, out.s, n_blocks, x.stride(0),
        out.codes.stride(0), out.d.stride(0), P=8 // bits, BLOCKS=BLOCKS_PER_PROGRAM,
        GATHER=perm is not None, num_warps=4, **launch_options(x.device, m),
    )  # fmt: skip
    return out


_TAG = "_corral_int8"  # attribute of an activation tensor: (its version, {bits: blocks})


def _version(x: torch.Tensor) -> int | None:
    """x's version counter (bumped by in-place writes), None for inference tensors."""
    return None if x.is_inference() else x._version


def _attached(x: torch.Tensor) -> dict[int, Int8Activations]:
    """The int8 blocks attached to x by bits, while x is unchanged since."""
    tagged = getattr(x, _TAG, None)
    return tagged[1] if tagged is not None and tagged[0] == _version(x) else {}


def attach_int8(x: torch.Tensor, blocks: Int8Activations) -> None:
    """Record on x (..., K) the int8 blocks of its values, as the kernel that wrote x
    made them; valid while x is not written in place. Blocks for other bits stay."""
    setattr(x, _TAG, (_version(x), {**_attached(x), blocks.bits: blocks}))


def share_int8(x: torch.Tensor, view: torch.Tensor) -> None:
    """Give `view`, a view of x with rows of the same values, x's attached int8 blocks."""
    tagged = getattr(x, _TAG, None)
    if tagged is not None:
        setattr(view, _TAG, tagged)


def int8_activations(
    x: torch.Tensor, bits: int, perm: torch.Tensor | None = None
) -> Int8Activations:
    """x (..., K)'s int8 blocks for `bits`-bit weights: those attached to x (by the kernel
    that wrote x, e.g. RMSNorm, or by an earlier product of the same x, e.g. Q/K and then
    V; one set per bits, for files that mix 2- and 4-bit types) while x is unchanged;
    else quantized now (and attached where that can be checked). With `perm` (a GPTQ
    act-order weight's column order) the blocks of x[..., perm], always quantized now.

    x's version counter tells whether it changed: attached blocks keep x alive, so no
    other tensor can take its memory, and in-place writes to x or its views bump the
    counter. Inference tensors (torch.inference_mode) have no counter: for them only the
    blocks their producing kernel attached are used, the model never writing its norms'
    outputs in place; blocks quantized here are not attached. CUDA graphs record the
    reuse as the launches they capture."""
    rows = x.reshape(-1, x.shape[-1])  # (M, K)
    if perm is not None:
        return quantize_activations(rows, bits, perm)
    attached = _attached(x)
    if bits in attached:
        return attached[bits]
    blocks = quantize_activations(rows, bits)
    if not x.is_inference():
        attach_int8(x, blocks)
    return blocks
