"""Building blocks of the Llama transformer: RMSNorm, rotary embedding, attention, MLP.

Shapes use B = batch, T = new tokens, S = cached positions, H = query heads,
Hkv = key/value heads, D = head dim, E = embedding width.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from corral.config import ModelConfig
from corral.model.fusion import SwiGLULinear, fuse_runs
from corral.model.kv_cache import KVCache


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))  # (E,)
        self.fused = False  # one Triton kernel instead of torch ops (Transformer.use_fused_kernels)
        # with `fused`: bits of the int8 blocks the next products take in decode (0: none),
        # written by the norm kernel beside its output (corral.kernels.triton.int8_act)
        self.int8_bits = 0

    def _decode_int8_bits(self, x: torch.Tensor) -> int:
        """int8_bits for x (..., E) of at most MATVEC_MAX_M rows (decode), else 0."""
        from corral.kernels.triton.linear import MATVEC_MAX_M

        return self.int8_bits if x.numel() <= MATVEC_MAX_M * x.shape[-1] else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            from corral.kernels.triton.norm import rms_norm

            return rms_norm(x, self.weight, self.eps, int8_bits=self._decode_int8_bits(x))
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)

    def add_and_norm(
        self, x: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + residual, its norm): a residual connection and the next sublayer's norm."""
        if self.fused:
            from corral.kernels.triton.norm import add_rms_norm

            bits = self._decode_int8_bits(x)
            return add_rms_norm(x, residual, self.weight, self.eps, int8_bits=bits)
        total = x + residual
        return total, self(total)


def rope_tables(config: ModelConfig, n_positions: int, device: torch.device) -> torch.Tensor:
    """cos/sin of every position and rotated pair: (n_positions, rope_dim // 2, 2), float32.

    theta(p, i) = (p / rope_scale) * freq_base^(-2i / rope_dim), as llama.cpp computes it;
    linear RoPE scaling (8K fine-tunes of 4K models use factor 2) divides the position.
    """
    half = config.rope_dim // 2
    exponents = torch.arange(half, device=device, dtype=torch.float32) * 2 / config.rope_dim
    inv_freq = config.rope_freq_base ** (-exponents)  # (rope_dim/2,)
    positions = torch.arange(n_positions, device=device, dtype=torch.float32) / config.rope_scale
    angles = torch.outer(positions, inv_freq)  # (n_positions, rope_dim/2)
    return torch.stack((angles.cos(), angles.sin()), dim=-1)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of the first rope_dim dims (GGUF "normal" mode).

    x: (B, T, heads, D); table: (B or 1, T, rope_dim/2, 2), the cos/sin of each token's
    position. GGUF files store Q/K rows permuted by the converter so that this pairing
    equals HF's rotate-half on the original weights.
    """
    rope_dim = table.shape[2] * 2
    rotated, passthrough = x[..., :rope_dim], x[..., rope_dim:]
    # a pair (x0, x1) times (cos, sin) as complex numbers: (x0 cos - x1 sin, x0 sin + x1 cos)
    pairs = rotated.float().reshape(*x.shape[:-1], rope_dim // 2, 2)  # (B, T, heads, rd/2, 2)
    turns = torch.view_as_complex(table)[:, :, None]  # (B|1, T, 1, rd/2)
    out = torch.view_as_real(torch.view_as_complex(pairs) * turns)  # (B, T, heads, rd/2, 2)
    out = out.flatten(-2).to(x.dtype)  # (B, T, heads, rope_dim)
    return torch.cat((out, passthrough), dim=-1) if passthrough.numel() else out


@dataclass(frozen=True)
class AttentionSpan:
    """The cache entries a step's new tokens attend to: the first `end`, where `mask`
    (B|1, 1, T, end) allows. Without a mask SDPA needs none (and runs flash attention):
    `causal`, the new tokens are positions 0..T-1 of every sequence (end = T); not causal,
    one new token whose position is end - 1, so it attends to every entry below `end`.
    `starts` (B,): each sequence's first new position, as the Triton kernels read it."""

    end: int
    mask: torch.Tensor | None
    starts: torch.Tensor
    causal: bool = False


def attention_span(
    positions: torch.Tensor, end: int, batch: int, exact_end: bool = False
) -> AttentionSpan:
    """The span of `batch` sequences' new tokens at `positions` (B|1, T) with cache entries
    below `end`: each query attends to entries up to its own position (causal, and blind
    to stale entries past it: a reused cache row, or a CUDA graph that attends over a fixed
    `end`). `exact_end`: the caller promises end = max(positions) + 1. Built once per step
    and shared by every layer."""
    starts = positions[:, 0].expand(batch).contiguous()  # (B,)
    if end == positions.shape[1]:  # positions < end = T: every sequence starts at 0
        return AttentionSpan(end, None, starts, causal=True)
    if exact_end and positions.shape == (1, 1):  # one shared position: end - 1
        return AttentionSpan(end, None, starts)
    key_pos = torch.arange(end, device=positions.device)
    mask = (key_pos[None, None, :] <= positions[:, :, None])[:, None]  # (B|1, 1, T, end)
    return AttentionSpan(end, mask, starts)


class Attention(nn.Module):
    """Multi-head attention with grouped-query KV heads and rotary positions."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_head_kv, self.head_dim = (
            config.n_head,
            config.n_head_kv,
            config.head_dim,
        )
        q_width, kv_width = config.n_head * config.head_dim, config.n_head_kv * config.head_dim
        self.wq = nn.Linear(config.n_embd, q_width, bias=False)
        self.wk = nn.Linear(config.n_embd, kv_width, bias=False)
        self.wv = nn.Linear(config.n_embd, kv_width, bias=False)
        self.wo = nn.Linear(q_width, config.n_embd, bias=False)
        self.qkv: nn.ModuleList | None = None  # wq, wk, wv fused (corral.model.fusion)
        self.cache: KVCache | None = None
        self.fused = False  # Triton RoPE, cache writes, attention (Transformer.use_fused_kernels)
        # with `fused`: bits of the int8 blocks that decode attention writes for wo (0: none)
        self.out_int8_bits = 0

    def fuse_projections(self) -> None:
        """Compute Q, K and V with as few matmuls as their storage allows (after loading)."""
        self.qkv = fuse_runs([self.wq, self.wk, self.wv])
        self.wq = self.wk = self.wv = None

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (..., H*D), k, v (..., Hkv*D) of x (..., E)."""
        if self.qkv is None:
            return self.wq(x), self.wk(x), self.wv(x)
        q, k, v = (out for run in self.qkv for out in run(x))
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        positions: torch.Tensor,
        span: AttentionSpan,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, T, E) at `positions` (B or 1, T) of KV cache rows `rows` (B,) (None: rows
        0..B-1), attending over the cache entries of `span` (see :func:`attention_span`)."""
        batch, n_new, _ = x.shape
        q, k, v = self.project(x)
        q = q.view(batch, n_new, self.n_head, self.head_dim)  # (B, T, H, D)
        k = k.view(batch, n_new, self.n_head_kv, self.head_dim)  # (B, T, Hkv, D)
        v = v.view(batch, n_new, self.n_head_kv, self.head_dim)  # (B, T, Hkv, D)
        if self.cache is None:
            raise RuntimeError("Attention.cache is not set up: call Transformer.setup_cache")
        if self.fused:
            from corral.kernels.triton.kv_store import rope_and_store

            keys, values = self.cache.k.parts, self.cache.v.parts
            q = rope_and_store(q, k, v, rope, keys, values, rows, positions)  # (B, T, H, D)
            if n_new == 1:
                return self.wo(self.decode(q, rows, span))
            if not (span.causal and not self.cache.quantized):
                return self.wo(self.prefill(q, rows, span.starts))
            k, v = self.cache.read(rows, batch, span.end)  # (B, Hkv, end, D)
        else:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
            k, v = (t.transpose(1, 2) for t in (k, v))  # (B, Hkv, T, D)
            k, v = self.cache.update(rows, positions, k, v, span.end)  # (B, Hkv, end, D)
        q = q.transpose(1, 2)  # (B, H, T, D)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=span.mask,
            is_causal=span.causal,
            enable_gqa=self.n_head != self.n_head_kv,
        )
        out = out.transpose(1, 2).reshape(batch, n_new, self.n_head * self.head_dim)  # (B, T, H*D)
        return self.wo(out)

    def decode(
        self, q: torch.Tensor, rows: torch.Tensor | None, span: AttentionSpan
    ) -> torch.Tensor:
        """One new token per sequence, its key and value already stored, through the
        flash-decoding kernel, which reads the cache in place (Q8_0 codes too) up to each
        sequence's position (`span.starts`): q (B, 1, H, D) -> (B, 1, H*D)."""
        from corral.kernels.triton.attention import decode_attention
        from corral.kernels.triton.int8_act import share_int8
        from corral.kernels.triton.linear import MATVEC_MAX_M

        batch = q.shape[0]
        keys, values = self.cache.k.parts, self.cache.v.parts
        out = decode_attention(
            q[:, 0],  # (B, H, D)
            keys[0],
            values[0],
            rows,
            span.starts,
            span.end,
            scale=self.head_dim**-0.5,
            k_scales=keys[1] if self.cache.k.quantized else None,
            v_scales=values[1] if self.cache.v.quantized else None,
            int8_bits=self.out_int8_bits if batch <= MATVEC_MAX_M else 0,
        )  # (B, H, D)
        flat = out.view(batch, 1, self.n_head * self.head_dim)  # (B, 1, H*D)
        share_int8(out, flat)
        return flat

    def prefill(
        self, q: torch.Tensor, rows: torch.Tensor | None, starts: torch.Tensor
    ) -> torch.Tensor:
        """Several new tokens per sequence from `starts` (B,), their keys and values
        already stored, after a cached prefix or over a q8_0 cache, through the Triton
        attention kernel that reads the cache in place: q (B, T, H, D) -> (B, T, H*D).
        (From position 0 over a float cache, SDPA's flash attention is used instead.)"""
        from corral.kernels.triton.prefill_attention import prefill_attention

        batch, n_new = q.shape[:2]
        keys, values = self.cache.k.parts, self.cache.v.parts
        out = prefill_attention(
            q,
            keys[0],
            values[0],
            rows,
            starts,
            scale=self.head_dim**-0.5,
            k_scales=keys[1] if self.cache.k.quantized else None,
            v_scales=values[1] if self.cache.v.quantized else None,
        )  # (B, T, H, D)
        return out.view(batch, n_new, self.n_head * self.head_dim)  # (B, T, H*D)


class FeedForward(nn.Module):
    """SwiGLU MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.w_gate = nn.Linear(config.n_embd, config.n_ff, bias=False)
        self.w_up = nn.Linear(config.n_embd, config.n_ff, bias=False)
        self.w_down = nn.Linear(config.n_ff, config.n_embd, bias=False)
        # w_gate, w_up fused (corral.model.fusion): rows interleaved, silu(gate) * up in
        # the matmul, or else one matmul whose output splits
        self.swiglu: SwiGLULinear | None = None
        self.gate_up: nn.ModuleList | None = None
        self.fused = False  # Triton silu(gate) * up (Transformer.use_fused_kernels)

    def fuse_projections(self) -> None:
        """Compute gate and up with one matmul when their storage allows (after loading)."""
        if SwiGLULinear.fusable(self.w_gate, self.w_up):
            self.swiglu = SwiGLULinear(self.w_gate, self.w_up)
        else:
            self.gate_up = fuse_runs([self.w_gate, self.w_up])
        self.w_gate = self.w_up = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu is not None:
            return self.w_down(self.swiglu(x))
        if self.gate_up is None:
            gate, up = self.w_gate(x), self.w_up(x)
        else:
            gate, up = (out for run in self.gate_up for out in run(x))
        if self.fused:
            from corral.kernels.triton.elementwise import silu_mul

            return self.w_down(silu_mul(gate, up))
        return self.w_down(F.silu(gate) * up)
