"""CUDA graphs for one-token decode steps: a step is recorded once per shape and replayed,
so decoding costs one graph launch instead of hundreds of kernel launches from Python.

Shapes must be static inside a graph, so a graph attends over a fixed number of cache
positions: the step's end rounded up to a bucket of BUCKET positions (the attention mask
hides the entries past each sequence's position). Graphs are captured lazily, one per
(batch size, bucket, rows given, per-sequence positions), and share one memory pool.

A batch of several sequences in their own cache rows (the server's engine, whose batch
size changes as requests come and go) is padded to the next power of two by repeating
its last sequence: the copy computes the same key and value and writes them to the same
cache entry, and its logits are dropped. So batches of 1..16 need 5 graphs per bucket,
not 16.

Prompt prefill has graphs of its own (corral.model.prefill_graphs), on the same base.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from corral.model.llama import Transformer

BUCKET = 256


def graph_device(model: "Transformer") -> torch.device:
    """The one CUDA device the whole model is on; ValueError when there is none."""
    devices = {layer.device for layer in model.layers}
    devices.add(model.tok_embeddings.weight.device)
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        raise ValueError("CUDA graphs need the whole model on one CUDA device")
    return next(iter(devices))


class GraphRecorder:
    """Records model steps as CUDA graphs into one memory pool; the base of the decode and
    prefill graph sets. A graph's intermediate buffers come from the pool and may be
    reused by any other graph of the set (they are dead between replays); its output
    stays allocated for as long as the graph is kept."""

    def __init__(self, model: "Transformer") -> None:
        self.model = model
        self.device = graph_device(model)
        self._pool = None

    def reset(self) -> None:
        """Forget the recorded graphs (the KV cache they point into was replaced)."""
        self._pool = None

    def record(
        self, step: Callable[[], torch.Tensor], warmups: int
    ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Run `step` `warmups` times on a side stream (lazy initialisation, Triton's
        compilation), then record it: (the graph, its static output). The graph has not
        run yet: replay it to fill the output."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(warmups):
                step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        # the graph's buffers come from its own pool, and nothing can be freed while it
        # records: give the warm-up's cached blocks back first (a prefill's transient
        # dequantized weight is hundreds of MB)
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool), torch.inference_mode():
            output = step()
        self._pool = graph.pool()
        return graph, output


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    tokens: torch.Tensor  # (B, 1) static input
    positions: torch.Tensor  # (B|1, 1) static input
    rows: torch.Tensor | None  # (B,) static input
    logits: torch.Tensor  # (B, 1, V) static output


def pad_batch(
    tokens: torch.Tensor, starts: Sequence[int], rows: Sequence[int]
) -> tuple[torch.Tensor, list[int], list[int]]:
    """tokens (B, 1), starts (B or 1) and rows (B) padded to a power-of-two batch by
    repeating the last sequence (see the module docstring)."""
    batch = tokens.shape[0]
    extra = (1 << (batch - 1).bit_length()) - batch
    padded_tokens = torch.cat([tokens, tokens[-1:].expand(extra, -1)])  # (B + extra, 1)
    padded_starts = list(starts) + ([starts[-1]] * extra if len(starts) > 1 else [])
    return padded_tokens, padded_starts, list(rows) + [rows[-1]] * extra


class DecodeGraphs(GraphRecorder):
    """Captured decode steps of one model, keyed by shape."""

    def __init__(self, model: "Transformer") -> None:
        super().__init__(model)
        self._graphs: dict[tuple[int, int, bool, int], _Graph] = {}

    def reset(self) -> None:
        """Forget the captured graphs (the KV cache they point into was replaced)."""
        super().reset()
        self._graphs.clear()

    def run(
        self, tokens: torch.Tensor, starts: Sequence[int], rows: Sequence[int] | None, end: int
    ) -> torch.Tensor:
        """Logits (B, 1, V) of one decode step, as Transformer.forward computes them."""
        batch = tokens.shape[0]
        if rows is not None:
            tokens, starts, rows = pad_batch(tokens, starts, rows)
        bucket = min(self.model.n_positions, -(-end // BUCKET) * BUCKET)
        key = (tokens.shape[0], bucket, rows is None, len(starts))
        entry = self._graphs.get(key) or self._capture(key)
        entry.tokens.copy_(tokens)
        entry.positions.copy_(torch.tensor(starts)[:, None])
        if entry.rows is not None:
            entry.rows.copy_(torch.tensor(list(rows)))
        entry.graph.replay()
        return entry.logits[:batch].clone()

    def _capture(self, key: tuple[int, int, bool, int]) -> _Graph:
        batch, bucket, no_rows, n_starts = key
        device = self.device
        tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)
        positions = torch.zeros(n_starts, 1, dtype=torch.long, device=device)
        written = min(batch, self.model.cache_batch)  # a padded batch repeats its last row
        rows = None if no_rows else torch.arange(batch, device=device).clamp(max=written - 1)
        saved = self._save_position_zero(written)
        graph, logits = self.record(lambda: self.model.step(tokens, positions, rows, bucket), 2)
        self._restore_position_zero(written, saved)
        entry = _Graph(graph, tokens, positions, rows, logits)
        self._graphs[key] = entry
        return entry

    def _save_position_zero(self, batch: int) -> list[list[torch.Tensor]]:
        """The warm-up writes position 0 of rows 0..batch-1: keep what was there."""
        return [layer.attn.cache.save_position(batch, 0) for layer in self.model.layers]

    def _restore_position_zero(self, batch: int, saved: list[list[torch.Tensor]]) -> None:
        for layer, kept in zip(self.model.layers, saved, strict=True):
            layer.attn.cache.restore_position(batch, 0, kept)
