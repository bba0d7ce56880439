"""CPU kernels over quantized weights kept in the file's bits (numba, SIMD over rows)."""
