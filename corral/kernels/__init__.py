"""Kernels for quantized linears: a packed weight layout, pure-torch references, Triton.

`packing` (repack GGUF blocks once at load) and `reference` (the torch twins) need only
torch; `corral.kernels.triton` needs triton. This package imports nothing else from corral.
"""
