"""Triton kernels for quantized linears; `quantized_linear` picks a path by M.

Modules: `decode` (per-type constexprs and in-kernel decoding), `matvec` (decode batches),
`dequant` (one-pass decode to a dense matrix for cuBLAS: prefill), `matmul` (fused
tensor-core product, a benchmark baseline), `linear` (the dispatcher).
"""

from corral.kernels.triton.linear import quantized_linear

__all__ = ["quantized_linear"]
