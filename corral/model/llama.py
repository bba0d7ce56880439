"""The Llama transformer: embedding, N pre-norm blocks (attention + SwiGLU), norm, LM head."""

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from corral.config import ModelConfig
from corral.model.fusion import int8_bits, int8_down_enabled
from corral.model.graphs import DecodeGraphs
from corral.model.kv_cache import KVCache, check_cache_type
from corral.model.layers import (
    Attention,
    AttentionSpan,
    FeedForward,
    RMSNorm,
    attention_span,
    rope_tables,
)

if TYPE_CHECKING:
    from corral.model.prefill_graphs import PrefillGraphs


class Block(nn.Module):
    """One transformer layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd, config.rms_eps)
        self.attn = Attention(config)
        self.ffn_norm = RMSNorm(config.n_embd, config.rms_eps)
        self.ffn = FeedForward(config)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        positions: torch.Tensor,
        span: AttentionSpan,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x, mlp_out = self.forward_pending(x, None, rope, positions, span, rows)
        return x + mlp_out

    def forward_pending(
        self,
        x: torch.Tensor,
        pending: torch.Tensor | None,
        rope: torch.Tensor,
        positions: torch.Tensor,
        span: AttentionSpan,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer with its last residual add left to the caller: (x + attention, the
        MLP's output). `pending`: the previous layer's MLP output, not yet added to x
        (None: nothing pending); it is added in this layer's first norm (one kernel)."""
        if pending is None:
            normed = self.attn_norm(x)
        else:
            x, normed = self.attn_norm.add_and_norm(pending, x)  # x + previous MLP, its norm
        attended = self.attn(normed, rope, positions, span, rows)
        x, normed = self.ffn_norm.add_and_norm(attended, x)  # x + attention, its norm
        return x, self.ffn(normed)

    @property
    def device(self) -> torch.device:
        """The device this layer runs on."""
        return self.attn_norm.weight.device


class Transformer(nn.Module):
    """Llama-family decoder. Build on the meta device, then bind weights with assign=True."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # given an empty weight, nn.Embedding skips its random init, whose first call on
        # "meta" imports torch._dynamo (1.5-2.5 s of every load)
        empty = torch.empty(config.n_vocab, config.n_embd)  # (V, E)
        self.tok_embeddings = nn.Embedding(config.n_vocab, config.n_embd, _weight=empty)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.rms_eps)
        self.output = nn.Linear(config.n_embd, config.n_vocab, bias=False)
        self.register_buffer("rope", torch.empty(0, config.rope_dim // 2, 2), persistent=False)
        self.n_positions = 0
        self.graphs: DecodeGraphs | None = None
        self.prefill_graphs: PrefillGraphs | None = None
        # storage types of cached keys and values (corral.model.kv_cache; None: compute dtype)
        self.cache_types: tuple[str | None, str | None] = (None, None)
        # the tokens whose keys/values sit in cache row 0, for a caller that reuses them
        # (corral.engine.generate); every forward and setup_cache clears it, so the caller
        # sets it again after each of its own calls and nothing stale survives other writes
        self.cached_tokens: list[int] = []

    def use_cuda_graphs(self, enabled: bool = True) -> None:
        """Replay one-token decode steps and prompt prefill chunks from recorded CUDA graphs
        (all layers must be on one CUDA device); see corral.model.graphs and
        corral.model.prefill_graphs."""
        if not enabled:
            self.graphs = self.prefill_graphs = None
            return
        from corral.model.prefill_graphs import PrefillGraphs  # imports Triton: CUDA only

        self.graphs = DecodeGraphs(self)
        self.prefill_graphs = PrefillGraphs(self)

    def use_fused_kernels(self, enabled: bool = True, devices: Collection[str] = ("cuda",)) -> None:
        """Run RMSNorm (with the residual add before it), RoPE, one-token attention, SwiGLU's
        product and the residual add after the MLP as Triton kernels (corral.kernels.triton)
        in the parts of the model on a device of a type in `devices`. Off a GPU Triton runs
        only in its interpreter (tests pass devices=("cpu",) with TRITON_INTERPRET=1)."""
        for layer in self.layers:
            on = enabled and layer.device.type in devices
            layer.attn_norm.fused = layer.ffn_norm.fused = layer.ffn.fused = on
            layer.attn.fused = on and layer.attn.head_dim % 16 == 0  # the kernels' tiles
            attn, ffn = layer.attn, layer.ffn
            projections = attn.qkv or [attn.wq, attn.wk, attn.wv]
            layer.attn_norm.int8_bits = int8_bits(projections) if on else 0
            attn.out_int8_bits = int8_bits([attn.wo]) if attn.fused else 0
            gate_up = [ffn.swiglu] if ffn.swiglu else ffn.gate_up or [ffn.w_gate, ffn.w_up]
            layer.ffn_norm.int8_bits = int8_bits(gate_up) if on else 0
            if ffn.swiglu is not None:  # its epilogue may write the down input's blocks
                down = on and int8_down_enabled()
                ffn.swiglu.out_int8_bits = int8_bits([ffn.w_down]) if down else 0
        self.norm.fused = enabled and self.norm.weight.device.type in devices
        self.norm.int8_bits = int8_bits([self.output]) if self.norm.fused else 0

    def fuse_projections(self) -> None:
        """Fuse every layer's Q/K/V and gate/up projections (corral.model.fusion); call
        once, after the weights are bound."""
        for layer in self.layers:
            layer.attn.fuse_projections()
            layer.ffn.fuse_projections()

    def set_cache_types(self, key_type: str | None, value_type: str | None) -> None:
        """Store cached keys and values as `key_type` / `value_type` (f32, f16, bf16, q8_0;
        None: the compute dtype) from the next setup_cache on."""
        for cache_type in (key_type, value_type):
            check_cache_type(cache_type, self.config.head_dim)
        self.cache_types = (key_type, value_type)

    def setup_cache(self, batch: int, n_positions: int) -> None:
        """Allocate the static KV cache (`batch` rows of `n_positions` tokens, each layer's
        on that layer's device, in `cache_types`) and the RoPE table."""
        dtype = self.tok_embeddings.weight.dtype
        self.n_positions = n_positions
        self.cached_tokens = []
        self.rope = rope_tables(self.config, n_positions, self.tok_embeddings.weight.device)
        for layer in self.layers:
            layer.attn.cache = KVCache(
                batch,
                n_positions,
                self.config.n_head_kv,
                self.config.head_dim,
                dtype,
                layer.device,
                self.cache_types,
            )
        for graphs in (self.graphs, self.prefill_graphs):
            if graphs is not None:
                graphs.reset()

    @property
    def cache_batch(self) -> int:
        """How many sequences the KV cache holds."""
        return self.layers[0].attn.cache.batch

    def share_prefix(self, n_positions: int) -> None:
        """Let every cached sequence start with sequence 0's first `n_positions` tokens (one
        prefill serves several completions of the same prompt)."""
        for layer in self.layers:
            layer.attn.cache.share_prefix(n_positions)

    def copy_prefix(self, source: int, target: int, n_positions: int) -> None:
        """Give cache row `target` the first `n_positions` cached entries of row `source`."""
        for layer in self.layers:
            layer.attn.cache.copy_prefix(source, target, n_positions)

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,
        start: int | Sequence[int],
        *,
        rows: Sequence[int] | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, V) for `tokens` (B, T).

        start: the position of every sequence's first new token, one int for all or one per
            sequence (continuous batching: each sequence at its own position).
        rows: the KV cache row of each sequence (default rows 0..B-1).
        last_only: compute only the last position's logits (B, 1, V): the LM head is the
            largest matmul of prefill, and generation needs only the last row.
        """
        self.cached_tokens = []
        n_new = tokens.shape[1]
        starts = [start] if isinstance(start, int) else list(start)
        end = max(starts) + n_new
        if end > self.n_positions or min(starts) < 0:
            raise ValueError(f"positions up to {end} exceed the KV cache ({self.n_positions})")
        if self.graphs is not None and n_new == 1:
            return self.graphs.run(tokens, starts, rows, end)
        prefill_graphs = self.prefill_graphs
        if last_only and prefill_graphs is not None and prefill_graphs.fits(tokens, starts, rows):
            return prefill_graphs.run(tokens, starts[0], rows)
        device = tokens.device
        offsets = torch.arange(n_new, device=device)  # (T,)
        positions = torch.tensor(starts, device=device)[:, None] + offsets  # (B|1, T)
        row_index = None if rows is None else torch.tensor(list(rows), device=device)  # (B,)
        keep = torch.tensor([n_new - 1], device=device) if last_only else None  # (1,)
        return self.step(tokens, positions, row_index, end, keep=keep, exact_end=True)

    def step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        rows: torch.Tensor | None,
        end: int,
        *,
        keep: torch.Tensor | None = None,
        exact_end: bool = False,
    ) -> torch.Tensor:
        """forward() on tensors only, so a CUDA graph can capture it: `positions` (B|1, T),
        `rows` (B,) or None, every position below `end` (a Python int fixing the shapes);
        `keep` (1,): the index of the one token whose logits to compute (None: all);
        `exact_end`: end is the largest position + 1, not a bound (lets attention skip
        its mask; see corral.model.layers.attention_span)."""
        x = self.tok_embeddings(tokens)  # (B, T, E)
        rope = self.rope[positions.to(self.rope.device)]  # (B|1, T, rope_dim/2, 2)
        inputs: dict[torch.device, tuple] = {}
        pending = None  # the last layer's MLP output, added to x by the next norm
        for layer in self.layers:
            device = layer.device
            if device not in inputs:  # once per device (partial offload: several)
                moved = [None if t is None else t.to(device) for t in (rope, positions, rows)]
                inputs[device] = (*moved, attention_span(moved[1], end, len(tokens), exact_end))
            layer_rope, layer_positions, layer_rows, span = inputs[device]
            if pending is not None:
                pending = pending.to(device)
            x, pending = layer.forward_pending(
                x.to(device), pending, layer_rope, layer_positions, span, layer_rows
            )
        if keep is not None:
            keep = keep.to(x.device)
            x = x.index_select(1, keep)  # (B, 1, E)
            pending = None if pending is None else pending.index_select(1, keep)  # (B, 1, E)
        x = x.to(self.norm.weight.device)
        if pending is None:
            return self.output(self.norm(x)).float()
        _, normed = self.norm.add_and_norm(pending.to(x.device), x)
        return self.output(normed).float()
