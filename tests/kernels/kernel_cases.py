"""Random valid GGUF weights for the kernel tests, with gguf-py's dequantization as oracle.

Legacy types are quantized by gguf-py (`gguf.quants.quantize`) from random floats; gguf-py
cannot quantize k-quants, so their blocks are random bytes whose fp16 scale fields (byte
offsets written down from ggml-common.h) hold moderate random values.
"""

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from corral.kernels.act_quant import dequantize_activations, quantize_activations_reference
from corral.kernels.packing import PackedWeight
from corral.kernels.triton.decode import KERNEL_TYPES
from corral.kernels.triton.linear import MATVEC_MAX_M
from corral.kernels.triton.matvec_int8 import int8_enabled

# Byte offsets of the fp16 fields in a k-quant super-block, and its size.
K_QUANTS: dict[str, tuple[int, tuple[int, ...]]] = {
    "Q2_K": (84, (80, 82)),
    "Q3_K": (110, (108,)),
    "Q4_K": (144, (0, 2)),
    "Q5_K": (176, (0, 2)),
    "Q6_K": (210, (208,)),
}
LEGACY = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
QTYPES = LEGACY + tuple(K_QUANTS)


def gguf_bytes(qtype: str, n: int, k: int, seed: int) -> np.ndarray:
    """GGUF-packed bytes (n, row_bytes) of a random valid (n, k) weight of `qtype`."""
    rng = np.random.default_rng(seed)
    if qtype in LEGACY:
        values = rng.standard_normal((n, k)).astype(np.float32)
        packed = gguf_quants.quantize(values, GGMLQuantizationType[qtype])
        return np.ascontiguousarray(packed).view(np.uint8).reshape(n, -1)
    type_size, f16_offsets = K_QUANTS[qtype]
    count = n * k // 256
    blocks = rng.integers(0, 256, (count, type_size), dtype=np.uint8)
    for offset in f16_offsets:
        scales = rng.choice([-1.0, 1.0], count) * rng.uniform(0.002, 0.01, count)
        blocks[:, offset : offset + 2] = scales.astype(np.float16).view(np.uint8).reshape(count, 2)
    return blocks.reshape(n, -1)


def oracle_weight(packed: np.ndarray, qtype: str, k: int) -> torch.Tensor:
    """gguf-py's dequantization of `packed` (n, row_bytes): float32 (n, k)."""
    values = gguf_quants.dequantize(packed, GGMLQuantizationType[qtype])
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).reshape(-1, k))


# Largest |error| allowed relative to max |reference| per activation dtype: float32 sums
# in another order; float16 adds the rounding of the output (and, in the tensor-core
# path, of the weights) at 2^-11; bfloat16 the same at 2^-8.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def assert_close_to(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """`actual` (any device, `dtype`) within TOLERANCE[dtype] of the float32 `expected`."""
    assert actual.dtype == dtype and actual.shape == expected.shape
    error = (actual.float().cpu() - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert error <= TOLERANCE[dtype] * scale, f"max error {error:.3g} vs max |ref| {scale:.3g}"


def decode_input(x: torch.Tensor, weight: object) -> torch.Tensor:
    """What a product of x (..., K) with `weight` multiplies, float32 on the CPU: x itself,
    or, where decode batches (at most MATVEC_MAX_M rows) take the int8 matvec (a
    Triton-layout `PackedWeight` whose type is `int8_enabled`; CPU-layout weights run
    numba's float kernels), x rounded to its int8 blocks by the torch twin of the
    quantizing kernel (bit-exact with it, see tests/kernels/test_int8_activations.py), of
    the columns in the weight's order."""
    x32 = x.float().cpu()
    rows = x32.reshape(-1, x32.shape[-1])  # (M, K)
    int8 = isinstance(weight, PackedWeight) and int8_enabled(weight.qtype)
    if rows.shape[0] > MATVEC_MAX_M or not int8:
        return x32
    bits = KERNEL_TYPES[weight.qtype].bits
    return int8_rounded(rows, bits, weight.tensors.get("perm")).reshape(x32.shape)


def int8_rounded(rows: torch.Tensor, bits: int, perm: torch.Tensor | None) -> torch.Tensor:
    """rows (M, K) after the int8 rounding for `bits`-bit weights (the quantizing kernel's
    torch twin), float32 on the CPU in x's column order; with `perm` (GPTQ act-order) the
    blocks are those of the gathered columns, as the kernel makes them."""
    rows = rows.float().cpu()
    order = torch.arange(rows.shape[1]) if perm is None else perm.long().cpu()  # (K,)
    values = torch.empty_like(rows)
    values[:, order] = dequantize_activations(quantize_activations_reference(rows[:, order], bits))
    return values  # (M, K)
