"""The numba CPU kernels (corral.kernels.cpu) against gguf-py's dequantization.

Every GGUF block type, on shapes whose row count picks each row block size, with 1 and 3
activation rows (the fused kernel) and 17 (dequantize + matmul, over several chunks).
"""

import numba
import numpy as np
import pytest
import torch

from corral.kernels.cpu import linear as cpu_linear_module
from corral.kernels.cpu.layout import (
    concat_cpu_rows,
    cpu_layout_error,
    cpu_rows_concatenable,
    row_block,
    to_cpu_layout,
)
from corral.kernels.cpu.linear import SMALL_BATCH, cpu_linear
from corral.kernels.packing import pack
from tests.kernels.kernel_cases import QTYPES, assert_close_to, gguf_bytes, oracle_weight

# (N, K): N = 40 takes row blocks of 8, 192 of 64, 512 of 256; K spans several groups.
SHAPES = ((40, 256), (192, 512), (512, 256))


def cpu_weight(qtype: str, n: int, k: int, seed: int = 0):  # noqa: ANN201
    """(the CpuWeight of a random (n, k) weight of `qtype`, gguf-py's float32 weight)."""
    raw = gguf_bytes(qtype, n, k, seed)
    packed = pack(torch.from_numpy(raw), qtype, k)
    return to_cpu_layout(packed), oracle_weight(raw, qtype, k)


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dequantize a few row blocks per chunk, so that the chunk loop runs several times."""
    monkeypatch.setattr(cpu_linear_module, "CHUNK_BYTES", 16 * 1024)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("qtype", QTYPES)
def test_cpu_linear_matches_gguf_py(qtype: str, shape: tuple[int, int], small_chunks: None) -> None:
    n, k = shape
    weight, oracle = cpu_weight(qtype, n, k)
    for m in (1, 3, SMALL_BATCH + 1):
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
        expected = x.double().matmul(oracle.double().T).float()  # (m, n)
        assert_close_to(cpu_linear(x, weight), expected, torch.float32)


def test_cpu_linear_keeps_leading_dims_and_dtype() -> None:
    weight, oracle = cpu_weight("Q4_K", 64, 256)
    x = torch.randn(2, 3, 256).to(torch.bfloat16)
    expected = x.float().matmul(oracle.T)  # (2, 3, 64)
    assert_close_to(cpu_linear(x, weight), expected, torch.bfloat16)


def test_the_kernels_follow_torchs_thread_count() -> None:
    weight, _ = cpu_weight("Q4_0", 64, 256)
    x = torch.randn(1, 256)
    threads = torch.get_num_threads()
    try:
        for count in (1, threads):
            torch.set_num_threads(count)
            cpu_linear(x, weight)
            assert numba.get_num_threads() == min(count, numba.config.NUMBA_NUM_THREADS)
    finally:
        torch.set_num_threads(threads)


def test_row_blocks_divide_the_rows() -> None:
    assert [row_block(n) for n in (4096, 576, 192, 40, 12)] == [256, 64, 64, 8, None]


def test_layout_errors_name_the_reason() -> None:
    raw = gguf_bytes("Q8_0", 12, 64, seed=0)
    assert "12 output rows" in cpu_layout_error(pack(torch.from_numpy(raw), "Q8_0", 64))
    dense = pack(torch.zeros(8, 64, dtype=torch.float16).view(torch.uint8), "F16", 64)
    assert cpu_layout_error(dense) == "no CPU kernel for F16"
    with pytest.raises(ValueError, match="no CPU kernel for F16"):
        to_cpu_layout(dense)


@pytest.mark.parametrize(
    "sizes", [(256, 256), (192, 64), (64, 40, 256)], ids=["same-block", "reblocked", "mixed"]
)
def test_concatenated_rows_compute_every_projection(sizes: tuple[int, ...]) -> None:
    parts = [cpu_weight("Q6_K", n, 256, seed=i) for i, n in enumerate(sizes)]
    joined = concat_cpu_rows([weight for weight, _ in parts])
    assert joined.shape == (sum(sizes), 256) and joined.row_block == row_block(sum(sizes))
    x = torch.randn(2, 256)
    expected = x.matmul(torch.cat([oracle for _, oracle in parts]).T)
    assert_close_to(cpu_linear(x, joined), expected, torch.float32)


def test_weights_of_other_types_or_widths_do_not_concatenate() -> None:
    q4, _ = cpu_weight("Q4_0", 64, 256)
    q8, _ = cpu_weight("Q8_0", 64, 256)
    wide, _ = cpu_weight("Q4_0", 64, 512)
    assert not cpu_rows_concatenable(q4, q8)
    assert not cpu_rows_concatenable(q4, wide)
    with pytest.raises(ValueError, match="cannot concatenate"):
        concat_cpu_rows([q4, wide])


def test_the_cpu_layout_keeps_the_files_bits() -> None:
    raw = gguf_bytes("Q4_0", 64, 256, seed=0)
    weight = to_cpu_layout(pack(torch.from_numpy(raw), "Q4_0", 256))
    assert weight.nbytes() == np.asarray(raw).nbytes  # 18 bytes per 32 weights, as on disk
