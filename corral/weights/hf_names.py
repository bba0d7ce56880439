"""HF Llama tensor names -> corral parameter names, and the one place HF's Q/K row order is
turned into the order corral's RoPE expects.

==============================================  ============================  ==========
HF (LlamaForCausalLM) tensor                    corral parameter              notes
==============================================  ============================  ==========
model.embed_tokens.weight                       tok_embeddings.weight
model.layers.N.input_layernorm.weight           layers.N.attn_norm.weight
model.layers.N.self_attn.q_proj                 layers.N.attn.wq.weight       RoPE rows
model.layers.N.self_attn.k_proj                 layers.N.attn.wk.weight       RoPE rows
model.layers.N.self_attn.v_proj                 layers.N.attn.wv.weight
model.layers.N.self_attn.o_proj                 layers.N.attn.wo.weight
model.layers.N.post_attention_layernorm.weight  layers.N.ffn_norm.weight
model.layers.N.mlp.gate_proj                    layers.N.ffn.w_gate.weight
model.layers.N.mlp.up_proj                      layers.N.ffn.w_up.weight
model.layers.N.mlp.down_proj                    layers.N.ffn.w_down.weight
model.norm.weight                               norm.weight
lm_head                                         output.weight                 or tied
==============================================  ============================  ==========

Linear layers are named without their suffix: a dense checkpoint stores ``P.weight``, a GPTQ
checkpoint ``P.qweight``, ``P.qzeros``, ``P.scales``, ``P.g_idx``.
"""

from __future__ import annotations

import torch

from corral.config import ModelConfig
from corral.weights.qtensor import QTensor

EMBEDDING = "model.embed_tokens.weight"
LM_HEAD = "lm_head"
GLOBAL_NORMS = {"model.norm.weight": "norm.weight"}
LAYER_NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
LAYER_LINEARS = {
    "self_attn.q_proj": "attn.wq",
    "self_attn.k_proj": "attn.wk",
    "self_attn.v_proj": "attn.wv",
    "self_attn.o_proj": "attn.wo",
    "mlp.gate_proj": "ffn.w_gate",
    "mlp.up_proj": "ffn.w_up",
    "mlp.down_proj": "ffn.w_down",
}


def linear_shapes(config: ModelConfig, tied: bool) -> dict[str, tuple[str, tuple[int, int]]]:
    """HF linear prefix -> (corral parameter, dense (out, in) shape), LM head unless tied."""
    e, ff = config.n_embd, config.n_ff
    q, kv = config.n_head * config.head_dim, config.n_head_kv * config.head_dim
    per_layer = {
        "self_attn.q_proj": (q, e),
        "self_attn.k_proj": (kv, e),
        "self_attn.v_proj": (kv, e),
        "self_attn.o_proj": (e, q),
        "mlp.gate_proj": (ff, e),
        "mlp.up_proj": (ff, e),
        "mlp.down_proj": (e, ff),
    }
    out = {
        f"model.layers.{i}.{hf}": (f"layers.{i}.{LAYER_LINEARS[hf]}.weight", shape)
        for i in range(config.n_layer)
        for hf, shape in per_layer.items()
    }
    if not tied:
        out[LM_HEAD] = ("output.weight", (config.n_vocab, e))
    return out


def vector_names(config: ModelConfig) -> dict[str, str]:
    """HF 1-D tensor name -> corral parameter (the RMSNorm weights)."""
    out = dict(GLOBAL_NORMS)
    for i in range(config.n_layer):
        for hf, ours in LAYER_NORMS.items():
            out[f"model.layers.{i}.{hf}.weight"] = f"layers.{i}.{ours}.weight"
    return out


def rope_heads(prefix: str, config: ModelConfig) -> int | None:
    """Heads whose rows need RoPE reordering in linear `prefix` (None: not Q or K)."""
    if prefix.endswith("self_attn.q_proj"):
        return config.n_head
    if prefix.endswith("self_attn.k_proj"):
        return config.n_head_kv
    return None


def interleave_rope_rows(weight: torch.Tensor | QTensor, n_head: int) -> torch.Tensor | QTensor:
    """Reorder the output rows of an HF q_proj/k_proj weight for corral's RoPE.

    HF's Llama rotates the pairs (x[i], x[i + D/2]) of each head ("rotate_half"); corral, like
    llama.cpp and Meta's original code, rotates adjacent pairs (x[2i], x[2i+1]). Within each
    head, row i of half h (h*D/2 + i) moves to row 2i + h — the permutation llama.cpp's
    convert_hf_to_gguf applies, so corral reads HF weights as it reads a converted GGUF.
    q.k is unchanged because Q and K rows move alike.
    """
    rows = weight.shape[0]
    half = rows // n_head // 2
    # (n_head, 2 halves, D/2) -> (n_head, D/2, 2): new row r takes old row order[r]
    order = torch.arange(rows).reshape(n_head, 2, half).transpose(1, 2).reshape(rows)
    if isinstance(weight, QTensor):
        return weight.select_rows(order)
    return weight[order]
