"""Numba twins of the two bit shuffles that repack GGUF blocks at load
(`corral.kernels.packing._runs` and `_words`), for weights packed on the CPU.

torch runs those shuffles as strided elementwise ops with inner dimensions of 4 or 8
elements, ~6 ns per weight on one core; loading a 7B file spent ~45 s there. These loops
write each output byte once (~0.5 ns per weight). The torch versions stay the reference
and the GPU path (tests/kernels/test_cpu_bits.py holds the two equal).
"""

import numpy as np
from numba import njit

_JIT = {"cache": True, "nogil": True}


@njit(**_JIT)
def unpack_runs(field: np.ndarray, bits: int, run: int, out: np.ndarray) -> None:
    """field (n, nb, k) uint8 -> out (n, nb, 8 k / bits) uint8 quants: each run of `run`
    bytes yields, from its lowest bit slice up, consecutive runs of `run` fields."""
    n, nb, k = field.shape
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    for i in range(n):
        for b in range(nb):
            for r in range(k // run):
                for s in range(per_byte):
                    base = (r * per_byte + s) * run
                    for t in range(run):
                        out[i, b, base + t] = (field[i, b, r * run + t] >> (s * bits)) & mask


@njit(**_JIT)
def pack_words(values: np.ndarray, bits: int, per_group: int, out: np.ndarray) -> None:
    """values (n, K) uint8 fields -> out (n, K / per_group, 4, width) uint8: the bytes of 4
    little-endian words per group, weight 4 j + w of a group in slot
    `packing.field_slot(j, fields)` of word w (the group's 4 words built together as
    integers from consecutive fields, then written byte by byte)."""
    n = values.shape[0]
    groups, width = out.shape[1], out.shape[3]
    fields = per_group // 4  # per word
    words = np.empty(4, np.uint32)
    for i in range(n):
        for g in range(groups):
            start = g * per_group
            words[:] = 0
            for j in range(fields):
                shift = np.uint32(bits * (fields // 4 * (j % 4) + j // 4))  # packing.field_slot
                for w in range(4):
                    words[w] |= np.uint32(values[i, start + 4 * j + w]) << shift
            for w in range(4):
                for p in range(width):
                    out[i, g, w, p] = np.uint8((words[w] >> np.uint32(8 * p)) & np.uint32(0xFF))
