"""Triton kernels for quantized linears; `quantized_linear` picks matvec or matmul by M.

Modules: `decode` (per-type constexprs and in-kernel decoding), `matvec` (decode batches),
`matmul` (prefill, tensor cores), `linear` (the dispatcher).
"""

from corral.kernels.triton.linear import quantized_linear

__all__ = ["quantized_linear"]
