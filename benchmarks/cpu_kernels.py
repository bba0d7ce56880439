"""Speed of the numba CPU kernels (corral.kernels.cpu) against torch on the dequantized weight.

For each GGUF type, one (N, K) weight of random valid blocks, multiplied by M activation
rows: the fused kernel (`matmul_small`, M up to SMALL_BATCH), the chunked dequantize +
matmul path, and torch's float32 matmul over the whole dequantized weight (what corral
did before: 4 bytes per weight in memory). Prints the median milliseconds per call, and
for M = 1 the weights per second and the bytes read per second.

    PYTHONPATH=. python3 benchmarks/cpu_kernels.py [--shape 4096x4096] [--threads 2]
        [--types Q4_0,Q4_K,Q6_K,Q8_0] [--rows 1,4,16,64]
"""

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from corral.kernels.cpu.layout import CpuWeight, to_cpu_layout
from corral.kernels.cpu.linear import SMALL_BATCH, dequantize_matmul, matmul_small
from corral.kernels.packing import BLOCKS, pack
from corral.kernels.reference import dequantize_packed
from corral.quant.ggml_types import GGMLType
from corral.tools.shaped_gguf import random_blocks


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls of `fn`, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row_cells(weight: CpuWeight, dense: torch.Tensor, m: int, repeats: int) -> list[str]:
    """The table cells of `m` activation rows: ms per call of the three paths."""
    x = torch.randn(m, weight.shape[1])
    rows = x.numpy()
    fused = float("nan")
    if m <= SMALL_BATCH:
        fused = median_seconds(lambda: matmul_small(rows, weight), repeats)
    chunked = median_seconds(lambda: dequantize_matmul(rows, weight), repeats)
    torch_f32 = median_seconds(lambda: x @ dense.T, repeats)
    cells = [f"M={m}: {fused * 1e3:.2f} / {chunked * 1e3:.2f} / {torch_f32 * 1e3:.2f}"]
    if m == 1:
        n_weights = weight.shape[0] * weight.shape[1]
        rates = (
            f"{n_weights / fused / 1e9:.1f} Gweights/s, {weight.nbytes() / fused / 1e9:.1f} GB/s"
        )
        cells.append(f"({rates})")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="4096x4096", help="N x K of the weight")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--types", default="Q4_0,Q4_1,Q5_0,Q8_0,Q2_K,Q3_K,Q4_K,Q5_K,Q6_K")
    parser.add_argument("--rows", default="1,4,16,64", help="activation rows M")
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, k = (int(v) for v in args.shape.split("x"))
    rng = np.random.default_rng(0)
    print(f"{n}x{k}, {args.threads} threads; ms per call: fused / dequantize+matmul / torch f32")
    for qtype in args.types.split(","):
        blocks = random_blocks(rng, GGMLType[qtype], n * k // BLOCKS[qtype][0])  # (blocks, size)
        packed = pack(torch.from_numpy(blocks).reshape(n, -1), qtype, k)
        dense = dequantize_packed(packed)  # (N, K) float32
        weight = to_cpu_layout(packed)
        cells = [
            c for m in args.rows.split(",") for c in row_cells(weight, dense, int(m), args.repeats)
        ]
        print(f"{qtype:5} " + "  ".join(cells))


if __name__ == "__main__":
    main()
