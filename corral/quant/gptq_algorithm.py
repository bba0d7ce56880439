"""GPTQ (Frantar et al., 2022): quantize a linear layer's weight using second-order information.

For a weight W (N outputs, K inputs) and calibration inputs X (K, tokens), GPTQ quantizes
the columns of W one at a time and spreads each column's rounding error over the columns
not yet quantized so that ||W X - Q X||^2 stays small. The curvature of that objective is
the Hessian H = 2 X X^T (K, K); its inverse's upper Cholesky factor gives the error update
of every column. The structure follows the reference implementation (IST-DASLab/gptq, as
carried by AutoGPTQ 0.7.1 `quantization/gptq.py`), so both give the same codes for the same
H and W:

1. dead inputs (diag(H) == 0) get H_ii = 1 and W[:, i] = 0;
2. act-order: columns are processed by descending diag(H) (g_idx maps them to groups);
3. dampening: H += damp * mean(diag(H)) * I; Hinv = chol(H^-1) (upper);
4. columns in blocks of 128: within a block the error is pushed column by column, the rest
   of the matrix is updated once per block (lazy batch updates);
5. with groups, a group's scale/zero are computed when the sweep reaches its first column,
   from W as it stood at the start of the current block (the reference's order exactly).

Everything runs in float32 on the device of the inputs; memory is a few copies of W plus
two (K, K) matrices.
"""

import math
from dataclasses import dataclass

import torch

SUPPORTED_BITS = (2, 3, 4, 8)
BLOCK_SIZE = 128


@dataclass(frozen=True)
class GPTQSpec:
    """How to quantize: bits per weight, input columns per group, and GPTQ's options.

    group_size: columns sharing one scale/zero; -1 = one group spanning all K columns.
    sym: symmetric grid (zero point fixed at 2^(bits-1)); else min/max asymmetric.
    act_order: process columns by descending Hessian diagonal ("desc_act").
    damp: fraction of the mean Hessian diagonal added to its diagonal.
    min_zero: smallest zero point allowed. AutoGPTQ's "gptq" checkpoint format stores
        zero - 1 in unsigned fields, so a zero point of 0 cannot be stored there; with
        min_zero=1 such a group gets zero 1 and a scale widened to still reach its maximum.
    """

    bits: int
    group_size: int = 128
    sym: bool = True
    act_order: bool = False
    damp: float = 0.01
    min_zero: int = 0

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {self.bits}")
        if self.group_size != -1 and self.group_size <= 0:
            raise ValueError(f"group_size must be positive or -1, got {self.group_size}")
        if not 0.0 < self.damp < 1.0:
            raise ValueError(f"damp must be between 0 and 1, got {self.damp}")
        if self.min_zero not in (0, 1):
            raise ValueError(f"min_zero must be 0 or 1, got {self.min_zero}")

    @property
    def maxq(self) -> int:
        """The largest code: 2^bits - 1."""
        return (1 << self.bits) - 1


@dataclass(frozen=True)
class GPTQResult:
    """Integer codes and their grid.

    weight[n, k] ~= scales[g, n] * (codes[n, k] - zeros[g, n]) with g = g_idx[k].
    """

    codes: torch.Tensor  # (N, K) uint8, in 0 .. 2^bits - 1
    scales: torch.Tensor  # (G, N) float32
    zeros: torch.Tensor  # (G, N) int32, in min_zero .. 2^bits - 1
    g_idx: torch.Tensor  # (K,) int32: the group of every input column


class HessianAccumulator:
    """Running H = 2/n * sum over calibration sequences of X X^T, for one set of inputs.

    Matches AutoGPTQ's `GPTQ.add_batch`: n counts sequences (the batch dimension of each
    call), and H is rescaled as sequences arrive so it stays an average.
    """

    def __init__(self, n_columns: int, device: torch.device | str = "cpu") -> None:
        self.hessian = torch.zeros(n_columns, n_columns, dtype=torch.float32, device=device)
        self.n_samples = 0

    def add(self, inputs: torch.Tensor) -> None:
        """Add one batch of inputs (B, T, K) or (T, K) of the linear layer."""
        if inputs.shape[-1] != self.hessian.shape[0]:
            raise ValueError(
                f"inputs have {inputs.shape[-1]} features, the Hessian {self.hessian.shape[0]}"
            )
        batch = inputs.shape[0] if inputs.dim() == 3 else 1
        rows = inputs.reshape(-1, inputs.shape[-1]).t()  # (K, B*T)
        self.hessian *= self.n_samples / (self.n_samples + batch)
        self.n_samples += batch
        rows = math.sqrt(2 / self.n_samples) * rows.to(self.hessian.device, torch.float32)
        self.hessian += rows.matmul(rows.t())


def find_params(x: torch.Tensor, spec: GPTQSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row min/max grid of `x` (N, k): scale (N, 1) float32 and zero (N, 1) float32.

    As AutoGPTQ's `Quantizer.find_params(perchannel=True, mse=False)`: the range always
    includes 0; symmetric grids use max(|min|, max) both ways and zero 2^(bits-1); all-zero
    rows get the range [-1, 1].
    """
    maxq = spec.maxq
    zero_bound = torch.zeros(x.shape[0], device=x.device)
    xmin = torch.minimum(x.min(1).values, zero_bound)  # (N,)
    xmax = torch.maximum(x.max(1).values, zero_bound)  # (N,)
    if spec.sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -1.0, xmin)
    xmax = torch.where(empty, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    if spec.sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
        if spec.min_zero:
            # zero 0 happens when -xmin < scale / 2; zero 1 with the max on the top code
            # still covers xmin, since -xmin < scale / 2 < xmax / (maxq - 1)
            low = zero < spec.min_zero
            scale = torch.where(low, xmax / (maxq - 1), scale)
            zero = torch.where(low, float(spec.min_zero), zero)
    return scale.unsqueeze(1), zero.unsqueeze(1)  # (N, 1), (N, 1)


def quantize_codes(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int
) -> torch.Tensor:
    """Round-to-nearest codes clamp(round(w / scale) + zero, 0, maxq), as float32."""
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, spec: GPTQSpec) -> GPTQResult:
    """Quantize `weight` (N, K) with the Hessian (K, K) of its inputs; see the module doc."""
    n_rows, n_cols = weight.shape
    if hessian.shape != (n_cols, n_cols):
        raise ValueError(f"Hessian shape {tuple(hessian.shape)} does not match K = {n_cols}")
    if not torch.isfinite(weight).all():
        raise ValueError("the weight has non-finite values")
    if not torch.isfinite(hessian).all():
        raise ValueError("the Hessian has non-finite values (overflowing activations?)")
    group_size = spec.group_size if spec.group_size != -1 else n_cols
    device = weight.device
    w = weight.to(torch.float32).clone()  # (N, K)
    h = hessian.to(device, torch.float32).clone()  # (K, K)
    if spec.group_size == -1:
        scale, zero = find_params(w, spec)  # the reference takes W before zeroing dead columns
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    perm = None
    if spec.act_order:
        perm = torch.argsort(torch.diag(h), descending=True)
        w = w[:, perm]
        h = h[perm][:, perm]
    hinv = _inverse_cholesky(h, spec.damp)  # (K, K) upper triangular

    codes = torch.zeros(n_rows, n_cols, dtype=torch.float32, device=device)  # (N, K)
    scales, zeros = [], []
    for i1 in range(0, n_cols, BLOCK_SIZE):
        i2 = min(i1 + BLOCK_SIZE, n_cols)
        w1 = w[:, i1:i2].clone()  # (N, b): this block, updated column by column
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            column = i1 + i
            if spec.group_size != -1 and column % group_size == 0:
                scale, zero = find_params(w[:, column : column + group_size], spec)
            if column % group_size == 0:
                scales.append(scale)
                zeros.append(zero)
            col = w1[:, i : i + 1]  # (N, 1)
            code = quantize_codes(col, scale, zero, spec.maxq)
            codes[:, column : column + 1] = code
            err = (col - scale * (code - zero)) / hinv1[i, i]  # (N, 1)
            w1[:, i:] -= err.matmul(hinv1[i : i + 1, i:])
            err1[:, i : i + 1] = err
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])

    g_idx = torch.arange(n_cols, device=device, dtype=torch.int32) // group_size  # (K,)
    if perm is not None:
        inverse = torch.argsort(perm)
        codes = codes[:, inverse]
        g_idx = g_idx[inverse]
    return GPTQResult(
        codes=codes.to(torch.uint8),
        scales=torch.cat(scales, dim=1).t().contiguous(),  # (G, N)
        zeros=torch.cat(zeros, dim=1).t().to(torch.int32).contiguous(),  # (G, N)
        g_idx=g_idx,
    )


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, in place on `h`."""
    diagonal = torch.arange(h.shape[0], device=h.device)
    h[diagonal, diagonal] += damp * torch.mean(torch.diag(h))
    try:
        lower = torch.linalg.cholesky(h)
        return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
    except torch.linalg.LinAlgError as error:
        raise ValueError(
            f"the dampened Hessian is not positive definite (damp={damp}); try a larger damp"
        ) from error


def dequantize_result(result: GPTQResult, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """The weight (N, K) float32 that `result` stands for, with scales rounded to `dtype`
    as a checkpoint stores them."""
    g = result.g_idx.long()  # (K,)
    scales = result.scales.to(dtype).float()[g].t()  # (N, K)
    zeros = result.zeros.float()[g].t()  # (N, K)
    return scales * (result.codes.float() - zeros)
