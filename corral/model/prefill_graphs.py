"""CUDA graphs for prompt prefill: a chunk of a prompt runs as one recorded graph per
length bucket instead of ~700 kernel launches from Python.

Why: eager prefill is host-bound on a fast GPU. On an H100 a 512-token chunk of a 7B Q4_K
model launches 728 kernels, which takes the host 42 ms for 20 ms of GPU work
(benchmarks/profile_decode.py --prefill 512).

Shapes must be static inside a graph, so a chunk of T tokens is padded to a bucket of
P >= T tokens (`prefill_bucket`): the real tokens at positions start..start+T-1, P - T pad
tokens after them, and only token T - 1's logits computed. The pad tokens change nothing
the real ones compute (attention is causal), and the keys and values they write land in
cache entries past the prompt, which no step reads before writing them itself (a decode
step writes its own position first and attends to nothing past it; the next chunk of a
prompt overwrites them).

Graphs are recorded lazily, keyed by (bucket, from position 0 or not, cache row given).
From position 0 over a float cache attention is SDPA's causal flash kernel over the
bucket. From a later position (the next chunk of a long prompt, a chat's next turn after
its cached prefix) the Triton prefill kernel reads the start from the graph's input, so
one graph serves every start. A graph is recorded with its first call's own inputs, so
the warm-up run writes to the cache exactly what the replay then writes.

Which calls go through a graph (`PrefillGraphs.fits`): one sequence, 2..MAX_BUCKET new
tokens, the logits of its last token only (generation's prefill; perplexity needs every
row and runs eagerly), every layer on the fused kernels, and the bucket inside the cache.
The first call of a bucket costs two prefills (warm-up, replay) plus the recording.

Should recording fail (an operation that a CUDA graph cannot hold, on some torch or
driver), the error is logged once, that call runs its padded step eagerly, and prefill
stays eager from then on (`failure` says why): generation keeps working.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from corral.kernels.triton.linear import MATVEC_MAX_M
from corral.model.graphs import GraphRecorder

if TYPE_CHECKING:
    from corral.model.llama import Transformer

logger = logging.getLogger(__name__)

MAX_BUCKET = 512  # corral.engine.generate's prefill chunk
FINE_STEP = 128  # above 256 tokens, buckets are multiples of this


def prefill_bucket(n_new: int) -> int:
    """The padded length of a chunk of `n_new` tokens (<= MAX_BUCKET): the length itself up
    to MATVEC_MAX_M (the matvec's cost grows with every row), then the next power of two
    up to 256, then the next multiple of FINE_STEP (a 300-token chunk pays for 384, not 512)."""
    if n_new <= MATVEC_MAX_M:
        return n_new
    if n_new <= 2 * FINE_STEP:
        return 1 << (n_new - 1).bit_length()
    return -(-n_new // FINE_STEP) * FINE_STEP


@dataclass
class PrefillInputs:
    """The static inputs of a prefill step padded to a bucket of P tokens."""

    tokens: torch.Tensor  # (1, P) the chunk, then pad tokens (copies of its last one)
    positions: torch.Tensor  # (1, P) start, start + 1, ...
    rows: torch.Tensor | None  # (1,) the cache row, or None for row 0
    keep: torch.Tensor  # (1,) the index of the chunk's last token: its logits are computed
    end: int  # the cache entries attention may span: P from position 0, else all

    def copy_(self, other: "PrefillInputs") -> None:
        """Take `other`'s values (same shapes) in place, as a graph's inputs must."""
        self.tokens.copy_(other.tokens)
        self.positions.copy_(other.positions)
        self.keep.copy_(other.keep)
        if self.rows is not None and other.rows is not None:
            self.rows.copy_(other.rows)


def padded_inputs(
    tokens: torch.Tensor, start: int, row: int | None, bucket: int, n_positions: int
) -> PrefillInputs:
    """The inputs of the chunk `tokens` (1, T) at positions start.. of cache row `row`
    (None: row 0, no row index) padded to `bucket` tokens (see the module docstring)."""
    n_new = tokens.shape[1]
    device = tokens.device
    pad = tokens[:, -1:].expand(1, bucket - n_new)  # (1, P - T)
    return PrefillInputs(
        tokens=torch.cat([tokens, pad], dim=1),  # (1, P)
        positions=torch.arange(start, start + bucket, device=device)[None],  # (1, P)
        rows=None if row is None else torch.tensor([row], device=device),
        keep=torch.tensor([n_new - 1], device=device),
        end=bucket if start == 0 else n_positions,
    )


def _padded_step(model: "Transformer", inputs: PrefillInputs) -> torch.Tensor:
    """Logits (1, 1, V) of the last real token of padded `inputs`."""
    return model.step(inputs.tokens, inputs.positions, inputs.rows, inputs.end, keep=inputs.keep)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: PrefillInputs  # static inputs
    logits: torch.Tensor  # (1, 1, V) static output


class PrefillGraphs(GraphRecorder):
    """Recorded prefill chunks of one model, keyed by bucket (see the module docstring)."""

    def __init__(self, model: "Transformer") -> None:
        super().__init__(model)
        self._graphs: dict[tuple[int, bool, bool], _Graph] = {}
        self.failure: str | None = None  # why recording failed; then prefill stays eager

    def reset(self) -> None:
        """Forget the recorded graphs (the KV cache they point into was replaced)."""
        super().reset()
        self._graphs.clear()

    def __len__(self) -> int:
        """How many graphs are recorded."""
        return len(self._graphs)

    def fits(self, tokens: torch.Tensor, starts: Sequence[int], rows: Sequence[int] | None) -> bool:
        """True when a last-token-only forward of `tokens` (B, T) from `starts` in `rows`
        can run from a graph."""
        batch, n_new = tokens.shape
        if batch != 1 or len(starts) != 1 or (rows is not None and len(rows) != 1):
            return False
        if self.failure is not None or not 1 < n_new <= MAX_BUCKET:
            return False
        if starts[0] + prefill_bucket(n_new) > self.model.n_positions:
            return False
        return all(layer.attn.fused for layer in self.model.layers)

    def run(self, tokens: torch.Tensor, start: int, rows: Sequence[int] | None) -> torch.Tensor:
        """Logits (1, 1, V) of the last of `tokens` (1, T) at positions start.., as
        Transformer.forward(..., last_only=True) computes them."""
        bucket = prefill_bucket(tokens.shape[1])
        row = None if rows is None else rows[0]
        inputs = padded_inputs(tokens, start, row, bucket, self.model.n_positions)
        key = (bucket, start == 0, row is None)
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._record(key, inputs)
            except RuntimeError as error:
                self.failure = f"{type(error).__name__}: {error}"
                logger.warning("prompt prefill runs without CUDA graphs: %s", self.failure)
                return _padded_step(self.model, inputs)
        else:
            entry.inputs.copy_(inputs)
        entry.graph.replay()
        return entry.logits.clone()

    def _record(self, key: tuple[int, bool, bool], inputs: PrefillInputs) -> _Graph:
        graph, logits = self.record(lambda: _padded_step(self.model, inputs), warmups=1)
        entry = _Graph(graph, inputs, logits)
        self._graphs[key] = entry
        return entry
