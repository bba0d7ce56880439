"""The Llama transformer: embedding, N pre-norm blocks (attention + SwiGLU), norm, LM head."""

import torch
from torch import nn

from corral.config import ModelConfig
from corral.model.layers import Attention, FeedForward, KVCache, RMSNorm, rope_tables


class Block(nn.Module):
    """One transformer layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd, config.rms_eps)
        self.attn = Attention(config)
        self.ffn_norm = RMSNorm(config.n_embd, config.rms_eps)
        self.ffn = FeedForward(config)

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor, positions: torch.Tensor, end: int
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, positions, end)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    """Llama-family decoder. Build on the meta device, then bind weights with assign=True."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.n_vocab, config.n_embd)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.rms_eps)
        self.output = nn.Linear(config.n_embd, config.n_vocab, bias=False)
        self.register_buffer("rope", torch.empty(0, config.rope_dim // 2, 2), persistent=False)
        self.n_positions = 0

    def setup_cache(self, batch: int, n_positions: int) -> None:
        """Allocate the static KV cache and RoPE table for `n_positions` tokens."""
        weight = self.tok_embeddings.weight
        self.n_positions = n_positions
        self.rope = rope_tables(self.config, n_positions, weight.device)
        for layer in self.layers:
            layer.attn.cache = KVCache(
                batch,
                n_positions,
                self.config.n_head_kv,
                self.config.head_dim,
                weight.dtype,
                weight.device,
            )

    @property
    def cache_batch(self) -> int:
        """How many sequences the KV cache holds."""
        return self.layers[0].attn.cache.k.shape[0]

    def share_prefix(self, n_positions: int) -> None:
        """Let every cached sequence start with sequence 0's first `n_positions` tokens (one
        prefill serves several completions of the same prompt)."""
        for layer in self.layers:
            layer.attn.cache.share_prefix(n_positions)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, start: int, *, last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, V) for `tokens` (B, T) placed at positions start .. start + T - 1.

        With `last_only`, only the last position's logits (B, 1, V) are computed: the LM head
        is the largest matmul of prefill, and generation needs only the last row.
        """
        n_new = tokens.shape[1]
        end = start + n_new
        if end > self.n_positions:
            raise ValueError(f"positions up to {end} exceed the KV cache ({self.n_positions})")
        positions = torch.arange(start, end, device=tokens.device)  # (T,)
        rope = self.rope[start:end]  # (T, rope_dim/2, 2)
        x = self.tok_embeddings(tokens)  # (B, T, E)
        for layer in self.layers:
            x = layer(x, rope, positions, end)
        if last_only:
            x = x[:, -1:]  # (B, 1, E)
        return self.output(self.norm(x)).float()
