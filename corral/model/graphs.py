"""CUDA graphs for one-token decode steps: a step is recorded once per shape and replayed,
so decoding costs one graph launch instead of hundreds of kernel launches from Python.

Shapes must be static inside a graph, so a graph attends over a fixed number of cache
positions: the step's end rounded up to a bucket of BUCKET positions (the attention mask
hides the entries past each sequence's position). Graphs are captured lazily, one per
(batch size, bucket, rows given, per-sequence positions), and share one memory pool.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from corral.model.llama import Transformer

BUCKET = 256


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    tokens: torch.Tensor  # (B, 1) static input
    positions: torch.Tensor  # (B|1, 1) static input
    rows: torch.Tensor | None  # (B,) static input
    logits: torch.Tensor  # (B, 1, V) static output


class DecodeGraphs:
    """Captured decode steps of one model, keyed by shape."""

    def __init__(self, model: "Transformer") -> None:
        devices = {layer.device for layer in model.layers}
        devices.add(model.tok_embeddings.weight.device)
        if len(devices) != 1 or next(iter(devices)).type != "cuda":
            raise ValueError("CUDA graphs need the whole model on one CUDA device")
        self.model = model
        self.device = next(iter(devices))
        self._graphs: dict[tuple[int, int, bool, int], _Graph] = {}
        self._pool = None

    def reset(self) -> None:
        """Forget the captured graphs (the KV cache they point into was replaced)."""
        self._graphs.clear()
        self._pool = None

    def run(
        self, tokens: torch.Tensor, starts: Sequence[int], rows: Sequence[int] | None, end: int
    ) -> torch.Tensor:
        """Logits (B, 1, V) of one decode step, as Transformer.forward computes them."""
        bucket = min(self.model.n_positions, -(-end // BUCKET) * BUCKET)
        key = (tokens.shape[0], bucket, rows is None, len(starts))
        entry = self._graphs.get(key) or self._capture(key)
        entry.tokens.copy_(tokens)
        entry.positions.copy_(torch.tensor(starts)[:, None])
        if entry.rows is not None:
            entry.rows.copy_(torch.tensor(list(rows)))
        entry.graph.replay()
        return entry.logits.clone()

    def _capture(self, key: tuple[int, int, bool, int]) -> _Graph:
        batch, bucket, no_rows, n_starts = key
        device = self.device
        tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)
        positions = torch.zeros(n_starts, 1, dtype=torch.long, device=device)
        rows = None if no_rows else torch.arange(batch, device=device)
        saved = self._save_position_zero(batch)
        # warm up outside the graph (lazy initialisation, kernel autotuning), then record
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):
                self.model.step(tokens, positions, rows, bucket)
        torch.cuda.current_stream(device).wait_stream(stream)
        self._restore_position_zero(batch, saved)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool), torch.inference_mode():
            logits = self.model.step(tokens, positions, rows, bucket)
        self._pool = graph.pool()
        entry = _Graph(graph, tokens, positions, rows, logits)
        self._graphs[key] = entry
        return entry

    def _save_position_zero(self, batch: int) -> list[list[torch.Tensor]]:
        """The warm-up writes position 0 of rows 0..batch-1: keep what was there."""
        return [layer.attn.cache.save_position(batch, 0) for layer in self.model.layers]

    def _restore_position_zero(self, batch: int, saved: list[list[torch.Tensor]]) -> None:
        for layer, kept in zip(self.model.layers, saved, strict=True):
            layer.attn.cache.restore_position(batch, 0, kept)
