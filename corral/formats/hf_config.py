"""ModelConfig from an HF ``config.json`` (LlamaForCausalLM), and ``generation_config.json``
defaults.

Both transformers 4's spelling (``rope_theta`` + ``rope_scaling``) and 5's
(``rope_parameters``) are read. Only what corral's Llama computes is accepted: SiLU MLP, no
biases, default or linear RoPE; anything else is refused by name rather than run wrongly.
``auto_map`` (remote code) is never looked at: corral runs its own model code only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from corral.config import MAX_CONTEXT, MAX_LAYERS, MAX_WIDTH, ModelConfig
from corral.errors import ModelFormatError, UnsupportedError

LLAMA_ARCHITECTURE = "LlamaForCausalLM"
MAX_VOCAB = 1 << 24

# generation_config.json key -> kind of value kept (others are ignored)
GENERATION_KEYS: dict[str, type] = {
    "do_sample": bool,
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "min_p": float,
    "typical_p": float,
    "repetition_penalty": float,
    "max_new_tokens": int,
    "max_length": int,
}


def _value(cfg: Mapping[str, Any], key: str, kind: type, source: str, default: Any) -> Any:
    """`cfg[key]` checked to be `kind` (ints accepted for floats); `default` when absent or
    null. A `default` of ... makes the key required."""
    value = cfg.get(key)
    if value is None:
        if default is ...:
            raise ModelFormatError(f"{source}: required key '{key}' is missing")
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ModelFormatError(
            f"{source}: key '{key}' should be {kind.__name__}, got {type(value).__name__}"
        )
    if kind is float and not math.isfinite(value):
        raise ModelFormatError(f"{source}: key '{key}' must be finite, got {value}")
    return value


def _count(cfg: Mapping[str, Any], key: str, source: str, upper: int, default: Any = ...) -> int:
    value = _value(cfg, key, int, source, default)
    if not 0 < value <= upper:
        raise ModelFormatError(f"{source}: key '{key}' = {value} is out of range")
    return value


def check_architecture(cfg: Mapping[str, Any], source: str) -> None:
    """Refuse configs that are not a plain Llama (other model types, biases, activations)."""
    model_type = cfg.get("model_type")
    architectures = cfg.get("architectures")
    if architectures is not None and not (
        isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)
    ):
        raise ModelFormatError(f"{source}: 'architectures' must be a list of strings")
    if model_type is None and architectures is None:
        raise ModelFormatError(f"{source}: neither 'model_type' nor 'architectures' is given")
    if model_type is not None and model_type != "llama":
        raise UnsupportedError(f"{source}: model_type {model_type!r} is not supported (llama only)")
    if architectures is not None and architectures != [LLAMA_ARCHITECTURE]:
        raise UnsupportedError(
            f"{source}: architectures {architectures} are not supported ({LLAMA_ARCHITECTURE} only)"
        )
    act = _value(cfg, "hidden_act", str, source, "silu")
    if act != "silu":
        raise UnsupportedError(f"{source}: hidden_act {act!r} is not supported (silu only)")
    for key in ("attention_bias", "mlp_bias"):
        if _value(cfg, key, bool, source, False):
            raise UnsupportedError(f"{source}: {key} = true is not supported")


def rope_settings(cfg: Mapping[str, Any], source: str) -> tuple[float, float]:
    """(theta, linear scaling factor) from ``rope_parameters`` or ``rope_theta`` +
    ``rope_scaling``; other RoPE types (llama3, yarn, dynamic, ...) are refused."""
    params = cfg.get("rope_parameters")
    scaling = cfg.get("rope_scaling")
    for key, value in (("rope_parameters", params), ("rope_scaling", scaling)):
        if value is not None and not isinstance(value, dict):
            raise ModelFormatError(f"{source}: '{key}' must be an object")
    merged: dict[str, Any] = {"rope_theta": cfg.get("rope_theta")}
    merged.update(scaling or {})
    merged.update(params or {})
    kind = merged.get("rope_type", merged.get("type")) or "default"
    if kind not in ("default", "linear"):
        raise UnsupportedError(
            f"{source}: RoPE type {kind!r} is not supported (default and linear only)"
        )
    theta = _value(merged, "rope_theta", float, source, 10000.0)
    if not 0.0 < theta < 1e12:
        raise ModelFormatError(f"{source}: rope_theta {theta} is out of range")
    factor = _value(merged, "factor", float, source, 1.0) if kind == "linear" else 1.0
    if not 0.0 < factor <= 1024.0:
        raise ModelFormatError(f"{source}: RoPE scaling factor {factor} is out of range")
    return theta, factor


def config_from_hf(cfg: Mapping[str, Any], source: str) -> ModelConfig:
    """Build a ModelConfig from the parsed ``config.json`` of an HF Llama folder."""
    check_architecture(cfg, source)
    n_embd = _count(cfg, "hidden_size", source, MAX_WIDTH)
    n_head = _count(cfg, "num_attention_heads", source, MAX_WIDTH)
    n_head_kv = _count(cfg, "num_key_value_heads", source, n_head, default=n_head)
    if n_head % n_head_kv:
        raise ModelFormatError(
            f"{source}: num_attention_heads {n_head} is not a multiple of "
            f"num_key_value_heads {n_head_kv}"
        )
    if cfg.get("head_dim") is None and n_embd % n_head:
        raise ModelFormatError(
            f"{source}: hidden_size {n_embd} is not divisible by num_attention_heads {n_head}"
        )
    head_dim = _count(cfg, "head_dim", source, MAX_WIDTH, default=n_embd // n_head)
    if head_dim % 2:
        raise ModelFormatError(f"{source}: head_dim {head_dim} must be even for RoPE")
    rms_eps = _value(cfg, "rms_norm_eps", float, source, 1e-6)
    if not 0.0 < rms_eps < 1.0:
        raise ModelFormatError(f"{source}: rms_norm_eps {rms_eps} is out of range")
    theta, factor = rope_settings(cfg, source)
    return ModelConfig(
        n_vocab=_count(cfg, "vocab_size", source, MAX_VOCAB),
        n_embd=n_embd,
        n_layer=_count(cfg, "num_hidden_layers", source, MAX_LAYERS),
        n_ff=_count(cfg, "intermediate_size", source, MAX_WIDTH),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        rope_dim=head_dim,
        rope_freq_base=theta,
        rope_scale=factor,
        rms_eps=rms_eps,
        context_length=_count(cfg, "max_position_embeddings", source, MAX_CONTEXT, default=2048),
        tied_output=tied_embeddings(cfg, source),
    )


def tied_embeddings(cfg: Mapping[str, Any], source: str) -> bool:
    """Whether the LM head reuses the token embedding (``tie_word_embeddings``)."""
    return _value(cfg, "tie_word_embeddings", bool, source, False)


def _token_ids(value: Any, key: str, source: str) -> list[int]:
    """An id or a list of ids (as generation_config.json writes eos_token_id)."""
    items = value if isinstance(value, list) else [value]
    if not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_VOCAB for i in items
    ):
        raise ModelFormatError(f"{source}: '{key}' must be a token id or a list of token ids")
    return list(items)


def generation_defaults(gen: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The sampling defaults of ``generation_config.json`` that corral understands, type-checked
    (HF names: temperature, top_p, top_k, min_p, typical_p, repetition_penalty, do_sample,
    max_new_tokens, max_length), plus ``eos_token_id`` / ``bos_token_id`` /
    ``pad_token_id`` as lists of ids. Unknown keys are ignored."""
    out: dict[str, Any] = {}
    for key, kind in GENERATION_KEYS.items():
        value = _value(gen, key, kind, source, None)
        if value is not None:
            if kind is not bool and value < 0:
                raise ModelFormatError(f"{source}: '{key}' must be >= 0, got {value}")
            out[key] = value
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        if gen.get(key) is not None:
            out[key] = _token_ids(gen[key], key, source)
    return out
