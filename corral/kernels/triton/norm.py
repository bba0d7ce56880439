"""Fused RMSNorm, alone or after a residual add: one kernel launch in place of ~7 torch ops.

    rms_norm(x, w, eps)          = x / sqrt(mean(x^2) + eps) * w, in float32, cast to x's dtype
    add_rms_norm(x, r, w, eps)   = (s, rms_norm(s, w, eps)) with s = x + r in x's dtype

The second folds a sublayer's residual add into the next sublayer's norm: x and r are
read once and s written once, where torch writes s and reads it back for the norm.

Kernel: one program per row of E values (rows = every leading index of x flattened).
- Single block (E <= MAX_BLOCK = 16384, every Llama width up to 405B's): the row is
  loaded once into registers, squared and summed in float32, scaled and stored; no
  re-read. BLOCK = next_power_of_2(E), the tail masked.
- Loop (E > MAX_BLOCK, or a smaller `block` asked for): a first pass sums the squares
  in LOOP_BLOCK steps (for add_rms_norm it also stores the rounded sum s), a second
  pass reloads the row (s from the output just written: from L2) and scales it. A
  barrier between the passes orders the program's own stores and loads of s.

Launch config (chosen for an H100, where a decode step's norm reads a few KB per row and
is latency-bound): num_warps = BLOCK / 512 within 1..16, i.e. 16 float32 values per
thread for BLOCK >= 512 (32 at 16384), which the compiler loads as 16-byte vectors (8 fp16 or
bf16, 4 float32): 8 warps for E = 4096 (7B), 16 for 8192 (70B), 2 for 576 (SmolLM2).
The grid is the row count, so decode (B rows) and prefill (B * T rows) use the same
kernel. Nothing depends on tensor values on the host: the launch is CUDA-graph safe.
"""

import torch
import triton
import triton.language as tl

from corral.kernels.act_quant import group_weights
from corral.kernels.triton.int8_act import attach_int8, empty_activations, store_values_as_blocks
from corral.kernels.triton.pdl import launch_options, release_dependents, wait_for_inputs

MAX_BLOCK = 16384  # widest row loaded in one block
LOOP_BLOCK = 4096  # step of the two-pass loop for wider rows
ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@triton.jit
def _load_row(X, R, S, cols, mask, HAS_RESIDUAL: tl.constexpr):
    """Values of row pointers X at `cols` in float32; with a residual R, x + r rounded to
    x's dtype (as torch's `x + r`), also stored to S."""
    x = tl.load(X + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(R + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(S + cols, x, mask=mask)
    return x.to(tl.float32)


@triton.jit
def _rms_norm_kernel(
    X, R, W, S, Y, CODES, QD, QS, E, stride_x, stride_r, stride_c, stride_q, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, ONE_BLOCK: tl.constexpr,
    Q_P: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Y[row] = rms_norm(X[row] (+ R[row], stored to S[row])); S and Y are contiguous.
    Q_P > 0 (ONE_BLOCK only): also Y[row]'s int8 blocks for weights of 8 / Q_P bits, as
    stored (rounded to Y's dtype), into rows of CODES, QD, QS (`int8_act`)."""
    release_dependents(PDL)
    wait_for_inputs(PDL)
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_x
    r_row = R + row * stride_r
    s_row = S + row * E
    y_row = Y + row * E
    offs = tl.arange(0, BLOCK)
    if ONE_BLOCK:
        mask = offs < E
        x = _load_row(x_row, r_row, s_row, offs, mask, HAS_RESIDUAL)
        inv = tl.rsqrt(tl.sum(x * x, axis=0) / E + eps)
        w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
        y = (x * inv * w).to(Y.dtype.element_ty)
        tl.store(y_row + offs, y, mask=mask)
        if Q_P > 0:
            store_values_as_blocks(
                CODES + row * stride_c, QD + row * stride_q, QS + row * stride_q,
                y, 0, E // (16 * Q_P), Q_P,
            )  # fmt: skip
    else:
        squares = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, E, BLOCK):
            cols = start + offs
            x = _load_row(x_row, r_row, s_row, cols, cols < E, HAS_RESIDUAL)
            squares += x * x
        inv = tl.rsqrt(tl.sum(squares, axis=0) / E + eps)
        if HAS_RESIDUAL:
            tl.debug_barrier()  # this program's stores of s come before its loads of them
            x_row = s_row
        for start in range(0, E, BLOCK):
            cols = start + offs
            mask = cols < E
            x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(y_row + cols, (x * inv * w).to(Y.dtype.element_ty), mask=mask)


def _check_activation(name: str, t: torch.Tensor, shape: torch.Size | None = None) -> None:
    """ValueError unless `t` is an activation tensor: float, a last dim of unit stride."""
    if t.dtype not in ACTIVATION_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if t.dim() == 0 or t.shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty last dim, got shape {tuple(t.shape)}")
    if shape is not None and t.shape != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if t.stride(-1) != 1 and t.shape[-1] > 1:
        raise ValueError(f"{name}'s last dim must be contiguous, got strides {t.stride()}")


def _check_weight(weight: torch.Tensor, x: torch.Tensor) -> None:
    width = x.shape[-1]
    if weight.dim() != 1 or weight.shape[0] != width:
        raise ValueError(f"weight has shape {tuple(weight.shape)}, expected ({width},)")
    if weight.dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight must be a float tensor, got {weight.dtype}")
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device}, x on {x.device}")


def _check_block(block: int | None) -> None:
    if block is not None and (block < 1 or block & (block - 1)):
        raise ValueError(f"block must be a power of two, got {block}")


def launch_config(width: int, block: int | None = None) -> tuple[int, int, bool]:
    """(BLOCK, num_warps, ONE_BLOCK) for rows of `width` values; see the module docstring.

    `block` (a power of two) caps the step: a row wider than it takes the two-pass loop.
    """
    whole = triton.next_power_of_2(width)
    if block is None:
        size = whole if whole <= MAX_BLOCK else LOOP_BLOCK
    else:
        size = min(whole, block)
    num_warps = min(16, max(1, size // 512))
    return size, num_warps, size >= width


def _launch(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    block: int | None,
    int8_bits: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(s or x, y): the kernel over every row of x (and residual); with int8_bits, y's int8
    blocks attached to y when the row fits one block and is whole blocks of int8."""
    width = x.shape[-1]
    rows_x = x.reshape(-1, width)  # (rows, E): a view when the leading dims allow one
    rows_r = rows_x if residual is None else residual.reshape(-1, width)  # (rows, E)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    total = torch.empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None else x
    if rows_x.shape[0] == 0:
        return total, out
    size, num_warps, one_block = launch_config(width, block)
    blocks = None
    if int8_bits and one_block and width % group_weights(int8_bits) == 0:
        blocks = empty_activations(rows_x.shape[0], width, int8_bits, x.device)
    codes, scales, sums = (out, out, out) if blocks is None else (blocks.codes, blocks.d, blocks.s)
    _rms_norm_kernel[(rows_x.shape[0],)](
        rows_x, rows_r, weight.contiguous(), total, out, codes, scales, sums, width,
        rows_x.stride(0), rows_r.stride(0), codes.stride(0), scales.stride(0), float(eps),
        HAS_RESIDUAL=residual is not None, BLOCK=size, ONE_BLOCK=one_block,
        Q_P=0 if blocks is None else 8 // int8_bits, num_warps=num_warps,
        **launch_options(x.device, rows_x.shape[0]),
    )  # fmt: skip
    if blocks is not None:
        attach_int8(out, blocks)
    return total, out


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    block: int | None = None,
    int8_bits: int = 0,
) -> torch.Tensor:
    """x / sqrt(mean(x^2, -1) + eps) * weight, computed in float32, in x's dtype and shape.

    x: (..., E) float32/float16/bfloat16 with a contiguous last dim (leading dims are
    flattened: a view when their strides allow, a copy otherwise); weight: (E,) float.
    `block` (a power of two; tests, benchmarks) forces the two-pass loop for E > block.
    int8_bits (2, 4 or 8; 0: none): also write the result's int8 blocks for products with
    weights of that many bits and attach them to it (`int8_act.int8_activations` finds
    them), when a row fits one block (E <= MAX_BLOCK) of whole int8 blocks.
    Raises ValueError for a bad shape, dtype, device or block.
    """
    _check_activation("x", x)
    _check_weight(weight, x)
    _check_block(block)
    return _launch(x, None, weight, eps, block, int8_bits)[1]


def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    block: int | None = None,
    int8_bits: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, rms_norm(s, weight, eps)) with s = x + residual, both in x's dtype and shape
    (int8_bits: as `rms_norm`'s).

    s is rounded to x's dtype exactly as torch's `x + residual` (the sum of two float16 or
    bfloat16 values, computed in float32 and rounded once) and normalized from that
    rounded value. residual: same shape and dtype as x, a contiguous last dim; the rest
    as in :func:`rms_norm`. Raises ValueError for a bad shape, dtype, device or block.
    """
    _check_activation("x", x)
    _check_activation("residual", residual, x.shape)
    if residual.dtype != x.dtype or residual.device != x.device:
        raise ValueError(
            f"residual is {residual.dtype} on {residual.device}, x {x.dtype} on {x.device}"
        )
    _check_weight(weight, x)
    _check_block(block)
    return _launch(x, residual, weight, eps, block, int8_bits)
