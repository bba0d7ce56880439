"""`quantized_linear`: y = x @ W.T for a packed weight, choosing a kernel by batch size.

| activation rows M        | dtype          | path                                         |
|--------------------------|----------------|----------------------------------------------|
| any (F16/BF16/F32 weight)| any            | torch.nn.functional.linear (cuBLAS)          |
| M <= MATVEC_MAX_M        | f16, bf16, f32 | fused matvec (CUDA cores, bandwidth-bound)   |
| M >  MATVEC_MAX_M        | f16, bf16      | fused matmul (tensor cores on decoded tiles) |
| M >  MATVEC_MAX_M        | f32            | reference: dequantize, then torch matmul     |

The matvec does M FMAs per decoded weight on CUDA cores, so its cost grows with M while
the matmul's barely does; past MATVEC_MAX_M rows the tensor-core kernel wins. On a CPU
tensor the kernels run only under Triton's interpreter (TRITON_INTERPRET=1, for tests);
otherwise CPU calls take the reference path.
"""

import os

import torch

from corral.kernels.packing import DENSE, PackedWeight
from corral.kernels.reference import linear_reference
from corral.kernels.triton.matmul import matmul
from corral.kernels.triton.matvec import matvec

MATVEC_MAX_M = 4


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def quantized_linear(x: torch.Tensor, pw: PackedWeight) -> torch.Tensor:
    """x (..., K) -> (..., N) in x's dtype, with W the (N, K) weight packed in `pw`."""
    n, k = pw.shape
    if x.shape[-1] != k:
        raise ValueError(
            f"{pw.qtype} weight of shape {pw.shape} got input of shape {tuple(x.shape)}"
        )
    if pw.qtype in DENSE:
        return torch.nn.functional.linear(x, pw.tensors["w"].to(x.dtype))
    if pw.device != x.device:
        raise ValueError(f"{pw.qtype} weight on {pw.device} got input on {x.device}")
    x2 = x.reshape(-1, k)  # (M, K)
    m = x2.shape[0]
    on_triton = x.device.type == "cuda" or _interpreted()
    if m == 0 or not on_triton:
        return linear_reference(x, pw)
    x2 = x2.contiguous()
    if m <= MATVEC_MAX_M:
        y = matvec(x2, pw)
    elif x.dtype in (torch.float16, torch.bfloat16):
        y = matmul(x2, pw)
    else:
        return linear_reference(x, pw)
    return y.reshape(*x.shape[:-1], n)  # (..., N)
