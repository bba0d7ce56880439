"""`quantized_linear`: y = x @ W.T for a packed weight, choosing a kernel by batch size.

| activation rows M           | dtype          | path                                    |
|-----------------------------|----------------|-----------------------------------------|
| any (F16/BF16/F32 weight)   | any            | torch.nn.functional.linear (cuBLAS)     |
| M <= MATVEC_MAX_M, int8 [1] | f16, bf16, f32 | int8 blocks of x, int8 matvec (dp4a)    |
| M <= MATVEC_MAX_M, others   | f16, bf16, f32 | fused matvec (bandwidth-bound)          |
| M >  MATVEC_MAX_M           | f16, bf16, f32 | dequantize in one pass, then cuBLAS     |

[1] the types `matvec_int8.int8_enabled` names (below).

The matvec does M FMAs per decoded weight on CUDA cores, so its cost grows with M. The
dense path decodes the whole weight once into a transient matrix (`dequant.dequantize`,
at memory speed: ~2.5 bytes moved per weight) and hands it to cuBLAS; its cost is flat
in M up to a few hundred rows. Measured on an H100 for a 14336 x 4096 Q4_K weight
(benchmarks/kernel_bandwidth.py --batches): matvec 19 / 25 / 71 us at M = 1 / 2 / 4 and
245 us at M = 5..8; dense 133 us for M = 1..128 (with a dequantize pass since cut from
84 to 67 us). The fused tensor-core matmul (`matmul.py`, no transient buffer) ran
124 us there but 236 us for 4096 x 14336, so it is not dispatched to. On a CPU tensor
the kernels run only under Triton's interpreter (TRITON_INTERPRET=1, for tests);
otherwise CPU calls take the reference path.

For the types that `matvec_int8.int8_enabled` names (by default those with 4-bit fields:
Q4_*, Q5_*, Q4_K, Q5_K, Q6_K, 4-bit GPTQ), decode multiplies x's int8 blocks with dp4a:
2.2-3.3 TB/s on an H100 where the float matvec reads 1.4-2.3 (see matvec_int8.py). The
blocks come with x when the kernel that wrote it made them (RMSNorm, decode attention),
else from one quantizing launch per x (`int8_act.int8_activations`). Results carry x's
int8 rounding, as llama.cpp's do; CORRAL_INT8_ACT=0 keeps the float matvec, =all takes
the int8 matvec for every type.

GPTQ weights (corral.kernels.gptq) take the same paths; an act-order weight's columns
were sorted by group at load, so the activations are gathered the same way first
(x[:, perm], one small copy of M x K values; on the int8 path the quantizing kernel
gathers them).
"""

import os

import torch

from corral.kernels.packing import DENSE, PackedWeight
from corral.kernels.reference import linear_reference, swiglu_reference
from corral.kernels.triton.decode import KERNEL_TYPES
from corral.kernels.triton.dequant import dequantize
from corral.kernels.triton.elementwise import silu_mul_pairs
from corral.kernels.triton.int8_act import int8_activations, share_int8
from corral.kernels.triton.matvec import matvec
from corral.kernels.triton.matvec_int8 import int8_enabled, matvec_int8

MATVEC_MAX_M = 4


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def dense_linear(x: torch.Tensor, pw: PackedWeight) -> torch.Tensor:
    """x (M, K) -> (M, N): `pw` decoded to x's dtype in one pass, then torch's matmul."""
    return torch.nn.functional.linear(x, dequantize(pw, x.dtype))  # W (N, K)


def _check_input(x: torch.Tensor, pw: PackedWeight) -> None:
    """ValueError unless x (..., K) can multiply the (N, K) weight `pw`."""
    if x.shape[-1] != pw.shape[1]:
        raise ValueError(
            f"{pw.qtype} weight of shape {pw.shape} got input of shape {tuple(x.shape)}"
        )
    if pw.qtype not in DENSE and pw.device != x.device:
        raise ValueError(f"{pw.qtype} weight on {pw.device} got input on {x.device}")


def _columns_in_weight_order(x2: torch.Tensor, pw: PackedWeight) -> torch.Tensor:
    """x2 (M, K) contiguous, its columns in the weight's order: GPTQ act-order weights had
    their columns sorted by group at load (`perm`), the activations follow (a copy)."""
    perm = pw.tensors.get("perm")
    return x2.contiguous() if perm is None else x2.index_select(1, perm)  # (M, K)


def quantized_linear(x: torch.Tensor, pw: PackedWeight) -> torch.Tensor:
    """x (..., K) -> (..., N) in x's dtype, with W the (N, K) weight packed in `pw`."""
    _check_input(x, pw)
    n, k = pw.shape
    if pw.qtype in DENSE:
        return torch.nn.functional.linear(x, pw.tensors["w"].to(x.dtype))
    x2 = x.reshape(-1, k)  # (M, K)
    m = x2.shape[0]
    on_triton = x.device.type == "cuda" or _interpreted()
    if m == 0 or not on_triton:
        return linear_reference(x, pw)
    if m <= MATVEC_MAX_M:
        y = _decode_matvec(x, pw)
    else:
        y = dense_linear(_columns_in_weight_order(x2, pw), pw)  # (M, N)
    return y.reshape(*x.shape[:-1], n)  # (..., N)


def _decode_matvec(
    x: torch.Tensor, pw: PackedWeight, swiglu: bool = False, out_int8_bits: int = 0
) -> torch.Tensor:
    """x (..., K) of at most MATVEC_MAX_M rows times the weight: the int8 matvec where
    `int8_enabled` (x's int8 blocks made once per x: `int8_activations`), else the float
    one; (M, N), or (M, N / 2) with swiglu (and, from the int8 matvec, the int8 blocks
    of that output for `out_int8_bits`-bit weights when asked for: `matvec_int8`)."""
    if int8_enabled(pw.qtype):
        xq = int8_activations(x, KERNEL_TYPES[pw.qtype].bits, pw.tensors.get("perm"))
        return matvec_int8(xq, pw, x.dtype, swiglu=swiglu, out_int8_bits=out_int8_bits)
    x2 = _columns_in_weight_order(x.reshape(-1, pw.shape[1]), pw)  # (M, K)
    return matvec(x2, pw, swiglu=swiglu)


def swiglu_linear(x: torch.Tensor, pw: PackedWeight, out_int8_bits: int = 0) -> torch.Tensor:
    """silu(x @ G.T) * (x @ U.T): x (..., K) -> (..., N / 2) in x's dtype, for the (N, K)
    weight `pw` whose rows alternate between SwiGLU's gate G and up U
    (`packing.interleave_rows`). Decode batches (M <= MATVEC_MAX_M) compute the product
    in the matvec's epilogue, which on the int8 path also writes the int8 blocks of the
    result for `out_int8_bits`-bit weights (the down projection's) when asked for;
    larger ones multiply, then apply `silu_mul_pairs`. Off the GPU (and outside Triton's
    interpreter) torch computes both."""
    _check_input(x, pw)
    n, k = pw.shape
    x2 = x.reshape(-1, k)  # (M, K)
    m = x2.shape[0]
    on_triton = x.device.type == "cuda" or _interpreted()
    if 0 < m <= MATVEC_MAX_M and on_triton and pw.qtype not in DENSE:
        y = _decode_matvec(x, pw, swiglu=True, out_int8_bits=out_int8_bits)  # (M, N / 2)
    else:
        pairs = quantized_linear(x2, pw)  # (M, N): gate and up of each unit side by side
        y = silu_mul_pairs(pairs) if on_triton else swiglu_reference(pairs)  # (M, N / 2)
    out = y.reshape(*x.shape[:-1], n // 2)  # (..., N / 2)
    share_int8(y, out)
    return out
