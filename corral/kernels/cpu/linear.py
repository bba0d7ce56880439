"""`x @ W.T` on the CPU for a quantized weight kept in the file's bits (`CpuWeight`).

A few activation rows (decode, small batches) go through `kernels.matmul_small`, which
reads every weight once and multiplies it by all rows. More rows (prefill) dequantize the
weight into float32 a chunk of output rows at a time and hand each chunk to torch's matmul:
the dequantization is then shared by all the rows and the temporary stays small.
"""

import functools
import threading
from dataclasses import dataclass

import numba
import numpy as np
import torch

from corral.kernels.cpu import kernels
from corral.kernels.cpu.layout import CpuWeight, field_maps, geometry

SMALL_BATCH = 16  # most activation rows for the fused kernel; more: dequantize + matmul
CHUNK_BYTES = 32 << 20  # float32 bytes of one dequantized chunk of W.T

_HALF = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
_scratch = threading.local()  # per thread: one reused chunk buffer (fresh pages are slow)


def _chunk_buffer(k: int, cols: int) -> np.ndarray:
    """A (k, cols) float32 array over this thread's scratch buffer, grown when needed."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.size < k * cols:
        buffer = _scratch.buffer = np.empty(k * cols, dtype=np.float32)
    return buffer[: k * cols].reshape(k, cols)  # (K, rows of the chunk)


@dataclass(frozen=True)
class _Plan:
    """What the kernels need to know of a quant type, built once per type."""

    geo: tuple[int, ...]
    low_maps: np.ndarray  # (2, 16, F) int64: weight index in the group, sub-block
    high_maps: np.ndarray  # (2, 4 E, FH) int64; (2, 0, 1) without high bits


@functools.cache
def _plan(qtype: str) -> _Plan:
    geo = geometry(qtype)
    low_maps = np.stack(field_maps(geo.low_bits, 4, geo.group, geo.sub))  # (2, 16, F)
    if geo.high_bits:
        per_word = geo.high_bits * geo.group // 4 // 8  # qh bytes per word
        high_maps = np.stack(field_maps(geo.high_bits, per_word, geo.group, geo.sub))
    else:
        high_maps = np.zeros((2, 0, 1), dtype=np.int64)
    packed_geo = (
        geo.low_bits,
        geo.high_bits,
        geo.subs_per_group,
        geo.groups_per_sub,
        geo.d_block,
        geo.sub,
        geo.scale_kind,
        geo.offset,
    )
    return _Plan(packed_geo, low_maps, high_maps)


def matmul_small(x: np.ndarray, w: CpuWeight) -> np.ndarray:
    """x (M, K) float32 -> (M, N) float32 through the fused kernel."""
    plan = _plan(w.qtype)
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
    kernels.matmul_small(*w.fields(), _HALF, plan.geo, plan.low_maps, plan.high_maps, x, out)
    return out


def dequantize_matmul(x: np.ndarray, w: CpuWeight) -> np.ndarray:
    """x (M, K) float32 -> (M, N) float32: W.T dequantized chunk by chunk, then matmul."""
    plan = _plan(w.qtype)
    n, k = w.shape
    rb = w.row_block
    blocks_per_chunk = max(1, CHUNK_BYTES // (4 * k * rb))
    rows = torch.from_numpy(x)
    out = rows.new_empty(x.shape[0], n)
    for first in range(0, n // rb, blocks_per_chunk):
        count = min(blocks_per_chunk, n // rb - first)
        w_t = _chunk_buffer(k, count * rb)  # (K, rows of the chunk)
        kernels.dequantize_transposed(
            *w.fields(), _HALF, plan.geo, plan.low_maps, plan.high_maps, first, w_t
        )
        torch.matmul(rows, torch.from_numpy(w_t), out=out[:, first * rb : (first + count) * rb])
    return out.numpy()


def _start_thread_pool() -> None:
    """Start numba's OpenMP thread pool now, keeping torch's thread count. Starting the pool
    (numba's first set_num_threads or parallel call) resets the OpenMP thread count, which
    torch reads too, to every core: later, it would undo a `torch.set_num_threads`."""
    threads = torch.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(threads)


_start_thread_pool()


def cpu_linear(x: torch.Tensor, w: CpuWeight) -> torch.Tensor:
    """x (..., K) @ W.T -> (..., N) in x's dtype, computed in float32 on the CPU with as
    many threads as torch uses."""
    numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    n, k = w.shape
    rows = x.reshape(-1, k).float().contiguous().numpy()  # (M, K)
    multiply = matmul_small if rows.shape[0] <= SMALL_BATCH else dequantize_matmul
    y = torch.from_numpy(multiply(rows, w))  # (M, N)
    return y.to(x.dtype).reshape(*x.shape[:-1], n)
