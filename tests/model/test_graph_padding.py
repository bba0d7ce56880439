"""Decode batches padded for CUDA graphs (corral.model.graphs.pad_batch): the padded batch
is a power of two whose extra sequences repeat the last one exactly (same token, position
and cache row, so they write what it writes). The graphs themselves need a GPU
(tests/model/test_gpu_path.py runs the engine with 3 sequences in 3 cache rows)."""

import pytest
import torch

from corral.model.graphs import pad_batch


@pytest.mark.parametrize(("batch", "padded"), [(1, 1), (2, 2), (3, 4), (5, 8), (16, 16), (17, 32)])
def test_padding_repeats_the_last_sequence(batch: int, padded: int):
    tokens = torch.arange(batch)[:, None] + 10  # (B, 1)
    starts, rows = [7 * i for i in range(batch)], [batch - 1 - i for i in range(batch)]
    new_tokens, new_starts, new_rows = pad_batch(tokens, starts, rows)
    assert new_tokens.shape == (padded, 1) and len(new_starts) == len(new_rows) == padded
    assert torch.equal(new_tokens[:batch], tokens) and new_starts[:batch] == starts
    assert new_rows[:batch] == rows
    for extra in range(batch, padded):
        assert (new_tokens[extra, 0], new_starts[extra], new_rows[extra]) == (
            tokens[-1, 0],
            starts[-1],
            rows[-1],
        )


def test_a_shared_start_stays_shared():
    _, starts, rows = pad_batch(torch.zeros(3, 1, dtype=torch.long), [5], [0, 1, 2])
    assert starts == [5] and rows == [0, 1, 2, 2]
