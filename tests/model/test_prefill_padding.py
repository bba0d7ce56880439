"""Prefill chunks padded to a bucket for CUDA graphs (corral.model.prefill_graphs): the
padded step (the real tokens, copies of the last one after them, only the last real
token's logits kept) gives transformers' logits, and the pad tokens' keys and values,
written past the prompt, change nothing that comes after. Run here on the CPU path and on
the fused kernels in Triton's interpreter (the path a graph records); the graphs themselves
need a GPU (tests/model/test_gpu_path.py)."""

import pytest
import torch

from corral.model import graphs as graphs_module
from corral.model.prefill_graphs import (
    MAX_BUCKET,
    PrefillGraphs,
    padded_inputs,
    prefill_bucket,
)
from tests.fixtures.tiny_hf import tiny_llama
from tests.model.test_fused_kernels_path import fused_model
from tests.model.test_kv_cache_q8 import (
    FLIP_TOLERANCE,
    SETTINGS,
    corral_model,
    hf_logits,
)

TOLERANCE = 1e-4
CASES = [(None, False), (None, True), ("q8_0", False), ("q8_0", True)]


def build(tmp_path, hf, cache_type, fused, batch=1):
    cache_types = (cache_type, cache_type)
    if fused:
        return fused_model(tmp_path, hf, cache_types, batch=batch)
    return corral_model(tmp_path, hf, cache_types, batch=batch)


def padded_step(model, ids: torch.Tensor, start: int, row: int | None = None) -> torch.Tensor:
    """Logits (V,) of the last of `ids` (1, T) through the padded inputs a graph records."""
    bucket = prefill_bucket(ids.shape[1])
    inputs = padded_inputs(ids, start, row, bucket, model.n_positions)
    assert inputs.tokens.shape == (1, bucket)
    logits = model.step(
        inputs.tokens, inputs.positions, inputs.rows, inputs.end, keep=inputs.keep
    )  # (1, 1, V)
    return logits[0, 0]


def chunked_logits(model, ids: torch.Tensor, padded: bool) -> torch.Tensor:
    """(13, V): the last logits of three chunks of `ids` (1, 30) (padded to 16 from position
    0, then to 8 and not at all after it), then ten single tokens over the pad tokens'
    cache entries."""
    rows = []
    for a, b in CHUNKS:
        chunk = ids[:, a:b]  # (1, b - a)
        rows.append(padded_step(model, chunk, a) if padded else model(chunk, a)[0, -1])
    for position in range(CHUNKS[-1][1], ids.shape[1]):
        rows.append(model(ids[:, position : position + 1], position)[0, 0])
    return torch.stack(rows)


CHUNKS = [(0, 11), (11, 17), (17, 20)]


@pytest.mark.parametrize(("cache_type", "fused"), CASES)
def test_padded_prefill_and_the_steps_after_it_match_transformers(tmp_path, cache_type, fused):
    hf = tiny_llama(seed=41, **SETTINGS)
    ids = torch.randint(3, 320, (1, 30), generator=torch.Generator().manual_seed(42))
    expected = hf_logits(hf, ids, (cache_type, cache_type))[0]  # (T, V)
    wanted = expected[[b - 1 for _, b in CHUNKS] + list(range(20, 30))]  # (13, V)
    padded = chunked_logits(build(tmp_path, hf, cache_type, fused), ids, padded=True)
    if cache_type is None:
        assert (padded - wanted).abs().max().item() < TOLERANCE
        return
    # q8_0: over these few rows one code flip (tests/model/test_kv_cache_q8.py) lifts the
    # mean error past TOLERANCE, so the pads are held to the unpadded chunks too
    assert (padded - wanted).abs().max().item() < FLIP_TOLERANCE
    unpadded = chunked_logits(build(tmp_path, hf, cache_type, fused), ids, padded=False)
    assert (padded - unpadded).abs().max().item() < TOLERANCE / 10


@pytest.mark.parametrize("fused", [False, True])
def test_a_padded_chunk_in_its_own_cache_row(tmp_path, fused):
    hf = tiny_llama(seed=43, **SETTINGS)
    model = build(tmp_path, hf, None, fused, batch=2)
    gen = torch.Generator().manual_seed(44)
    first, second = (torch.randint(3, 320, (1, n), generator=gen) for n in (14, 9))
    model(first, 0, rows=[0])
    head = padded_step(model, second[:, :5], 0, row=1)  # padded to 8 in row 1
    tail = padded_step(model, second[:, 5:], 5, row=1)  # 4 tokens: no padding
    after = model(first[:, -1:], 13, rows=[0])[0, 0]  # row 0 is untouched by row 1's pads
    second_expected = hf_logits(hf, second, (None, None))[0]  # (9, V)
    assert (head - second_expected[4]).abs().max().item() < TOLERANCE
    assert (tail - second_expected[8]).abs().max().item() < TOLERANCE
    assert (after - hf_logits(hf, first, (None, None))[0, -1]).abs().max().item() < TOLERANCE


def test_buckets_cover_every_chunk_length_with_few_graphs():
    buckets = [prefill_bucket(n) for n in range(1, MAX_BUCKET + 1)]
    assert all(b >= n for n, b in enumerate(buckets, start=1))
    assert buckets[:4] == [1, 2, 3, 4]  # the matvec's rows: never padded
    assert max(buckets) == MAX_BUCKET
    assert sorted(set(buckets)) == [1, 2, 3, 4, 8, 16, 32, 64, 128, 256, 384, 512]


class EagerGraph:
    """A stand-in for a CUDA graph on the CPU: replay runs the recorded step again over
    the same static inputs and copies its result into the static output."""

    def __init__(self, step, output: torch.Tensor) -> None:
        self.step, self.output = step, output

    def replay(self) -> None:
        self.output.copy_(self.step())


def eager_record(self, step, warmups):
    for _ in range(warmups):
        step()
    output = step()
    return EagerGraph(step, output), output


def test_prefill_graphs_replay_their_static_inputs(tmp_path, monkeypatch):
    """PrefillGraphs' bookkeeping (which calls it takes, one graph per bucket, new inputs
    copied into a recorded graph's static tensors) with graphs stood in for by EagerGraph,
    on the fused kernels in the interpreter, against transformers."""
    monkeypatch.setattr(graphs_module, "graph_device", lambda model: torch.device("cpu"))
    monkeypatch.setattr(graphs_module.GraphRecorder, "record", eager_record)
    hf = tiny_llama(seed=45, **SETTINGS)
    model = build(tmp_path, hf, None, fused=True, batch=2)
    model.prefill_graphs = graphs = PrefillGraphs(model)
    gen = torch.Generator().manual_seed(46)
    first, second = (torch.randint(3, 320, (1, n), generator=gen) for n in (30, 21))
    calls = [(first, 0, 11, None), (second, 0, 13, [1]), (first, 11, 17, None)]
    calls += [(second, 13, 21, [1]), (first, 17, 24, None), (first, 24, 30, None)]
    for ids, a, b, rows in calls:
        last = model(ids[:, a:b], a, rows=rows, last_only=True)[0, 0]  # (V,)
        expected = hf_logits(hf, ids[:, :b], (None, None))[0, -1]
        assert (last - expected).abs().max().item() < TOLERANCE
    assert len(graphs) == 4  # 16 from 0, 8 at a start; each with and without a row index
    everything = model(first, 0)  # every row's logits: not through a graph
    assert len(graphs) == 4 and everything.shape[1] == first.shape[1]


def test_a_graph_that_cannot_be_recorded_leaves_prefill_eager(tmp_path, monkeypatch, caplog):
    """Recording that fails (an operation a CUDA graph cannot hold) is logged, the call
    still returns transformers' logits, and later chunks run eagerly."""

    def failing_record(self, step, warmups):
        step()  # the warm-up runs; the capture is what fails
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs_module, "graph_device", lambda model: torch.device("cpu"))
    monkeypatch.setattr(graphs_module.GraphRecorder, "record", failing_record)
    hf = tiny_llama(seed=47, **SETTINGS)
    model = build(tmp_path, hf, None, fused=True)  # graphs are only for fused layers
    model.prefill_graphs = graphs = PrefillGraphs(model)
    ids = torch.randint(3, 320, (1, 20), generator=torch.Generator().manual_seed(48))
    expected = hf_logits(hf, ids, (None, None))[0]  # (T, V)
    first = model(ids[:, :11], 0, last_only=True)[0, 0]
    assert "stream is capturing" in graphs.failure and "without CUDA graphs" in caplog.text
    assert not graphs.fits(ids[:, 11:], [11], None)
    second = model(ids[:, 11:], 11, last_only=True)[0, 0]
    assert len(graphs) == 0
    assert (first - expected[10]).abs().max().item() < TOLERANCE
    assert (second - expected[19]).abs().max().item() < TOLERANCE
