"""ModelConfig: the hyperparameters of a Llama-family model, read from checkpoint metadata only.

Never derived from file names. Every value is validated so that a hostile file cannot make
the loader allocate absurd amounts of memory or build a model whose shapes contradict its
tensors.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corral.errors import ModelFormatError, UnsupportedError

SUPPORTED_ARCHITECTURES = ("llama",)
MAX_LAYERS = 1024
MAX_WIDTH = 1 << 20
MAX_CONTEXT = 1 << 24


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a Llama-architecture transformer."""

    n_vocab: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rope_dim: int
    rope_freq_base: float
    rope_scale: float  # linear RoPE scaling: positions are divided by this factor
    rms_eps: float
    context_length: int
    tied_output: bool = False  # the LM head reuses the token embedding (no output matrix)

    @property
    def n_kv_groups(self) -> int:
        """Query heads sharing one KV head (1 without grouped-query attention)."""
        return self.n_head // self.n_head_kv

    def n_params(self) -> int:
        """Parameter count of the model this config describes (a tied LM head counted once)."""
        attn = self.n_embd * self.head_dim * (2 * self.n_head + 2 * self.n_head_kv)
        mlp = 3 * self.n_embd * self.n_ff
        norms = 2 * self.n_embd
        embeddings = self.n_vocab * self.n_embd * (1 if self.tied_output else 2)
        return self.n_layer * (attn + mlp + norms) + embeddings + self.n_embd


def _get(meta: Mapping[str, Any], key: str, kind: type, source: str, default: Any = None) -> Any:
    """Fetch `key` and check its type; a missing key without a default is an error."""
    if key not in meta:
        if default is None:
            raise ModelFormatError(f"{source}: required metadata key '{key}' is missing")
        return default
    value = meta[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ModelFormatError(
            f"{source}: metadata key '{key}' should be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _positive(value: int, key: str, source: str, upper: int) -> int:
    if not 0 < value <= upper:
        raise ModelFormatError(f"{source}: metadata key '{key}' = {value} is out of range")
    return value


def _rope_scale(meta: Mapping[str, Any], arch: str, source: str) -> float:
    """Linear RoPE factor from `rope.scaling.*` (or the older `rope.scale_linear`)."""
    kind = _get(meta, f"{arch}.rope.scaling.type", str, source, default="none")
    if kind not in ("none", "linear"):
        raise UnsupportedError(f"{source}: RoPE scaling type '{kind}' is not supported")
    factor = _get(meta, f"{arch}.rope.scaling.factor", float, source, default=0.0)
    if kind == "none" or factor == 0.0:
        factor = _get(meta, f"{arch}.rope.scale_linear", float, source, default=1.0)
    if not 0.0 < factor <= 1024.0:
        raise ModelFormatError(f"{source}: RoPE scaling factor {factor} is out of range")
    return factor


def config_from_gguf(meta: Mapping[str, Any], n_vocab: int, source: str) -> ModelConfig:
    """Build a ModelConfig from GGUF metadata (`n_vocab` comes from the embedding tensor)."""
    arch = _get(meta, "general.architecture", str, source)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedError(f"{source}: architecture '{arch}' is not supported (llama only)")

    def count(key: str, upper: int, default: Any = None) -> int:
        return _positive(_get(meta, f"{arch}.{key}", int, source, default), key, source, upper)

    n_embd = count("embedding_length", MAX_WIDTH)
    n_head = count("attention.head_count", MAX_WIDTH)
    n_head_kv = count("attention.head_count_kv", n_head, default=n_head)
    if n_embd % n_head:
        raise ModelFormatError(
            f"{source}: embedding_length {n_embd} is not divisible by head_count {n_head}"
        )
    if n_head % n_head_kv:
        raise ModelFormatError(
            f"{source}: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}"
        )
    head_dim = count("attention.key_length", MAX_WIDTH, default=n_embd // n_head)
    rope_dim = count("rope.dimension_count", head_dim, default=head_dim)
    if rope_dim % 2:
        raise ModelFormatError(f"{source}: rope.dimension_count {rope_dim} must be even")
    freq_base = _get(meta, f"{arch}.rope.freq_base", float, source, default=10000.0)
    if not 0.0 < freq_base < 1e12:
        raise ModelFormatError(f"{source}: rope.freq_base {freq_base} is out of range")
    rms_eps = _get(meta, f"{arch}.attention.layer_norm_rms_epsilon", float, source)
    if not 0.0 < rms_eps < 1.0:
        raise ModelFormatError(f"{source}: layer_norm_rms_epsilon {rms_eps} is out of range")
    return ModelConfig(
        n_vocab=_positive(n_vocab, "vocab_size", source, 1 << 24),
        n_embd=n_embd,
        n_layer=count("block_count", MAX_LAYERS),
        n_ff=count("feed_forward_length", MAX_WIDTH),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        rope_dim=rope_dim,
        rope_freq_base=freq_base,
        rope_scale=_rope_scale(meta, arch, source),
        rms_eps=rms_eps,
        context_length=count("context_length", MAX_CONTEXT),
    )
