"""The numba bit shuffles that repack GGUF blocks on the CPU (corral.kernels.cpu.bits)
against their torch versions in corral.kernels.packing (the GPU path): equal on every
(bits, run) and (bits, group, word type) the packers use, on strided inputs."""

import pytest
import torch

from corral.kernels import packing

RUNS = [(4, 16), (1, 1), (2, 32), (4, 8), (2, 4), (1, 32), (4, 32), (4, 64)]
WORDS = [
    (4, 32, torch.int32),
    (1, 32, torch.uint8),
    (8, 16, torch.int32),
    (2, 64, torch.int32),
    (1, 64, torch.int16),
    (2, 32, torch.int16),
]


@pytest.mark.parametrize(("bits", "run"), RUNS)
def test_unpack_runs_equals_the_torch_shuffle(bits: int, run: int):
    blocks = torch.randint(0, 256, (5, 3, 2 * run + 7), dtype=torch.uint8)
    field = blocks[..., 7:]  # strided, as the packers slice blocks
    assert torch.equal(packing._runs(field, bits, run), packing.runs_torch(field, bits, run))


@pytest.mark.parametrize(("bits", "per_group", "dtype"), WORDS)
def test_pack_words_equals_the_torch_shuffle(bits: int, per_group: int, dtype: torch.dtype):
    values = torch.randint(0, 1 << bits, (4, 3 * per_group), dtype=torch.uint8)
    numba_words = packing._words(values, bits, per_group, dtype)
    assert torch.equal(numba_words, packing.words_torch(values, bits, per_group, dtype))
