"""`corral info`: what a model (GGUF file, HF or GPTQ folder) holds and the memory needed to
run it, from headers and config files alone (no weight is read)."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from corral.chat import ChatError, resolve_chat_format
from corral.checkpoints import Checkpoint, open_checkpoint
from corral.engine.memory import choose_dtype, estimate_memory
from corral.errors import CorralError
from corral.formats.split_parts import part_paths
from corral.tokenizer import Tokenizer
from corral.weights.footprint import PackedWeights


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_count(n: int) -> str:
    """134515008 -> '134.5M'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def chat_format_row(
    metadata: dict[str, Any],
    source: str,
    chat_template: str | None = None,
    tokenizer: Callable[[], Tokenizer] | None = None,
) -> str:
    """Which chat format the model is used with and why (`chat_template`: the user's
    --chat-template choice, which wins; an invalid choice raises ChatError). `tokenizer`
    builds the model's tokenizer (default: from GGUF `metadata`)."""
    try:
        if tokenizer is None:
            built = Tokenizer.from_gguf_metadata(metadata, source=source)
        else:
            built = tokenizer()
    except CorralError as error:
        return f"none (no usable tokenizer: {error})"
    try:
        fmt, reason = resolve_chat_format(chat_template, metadata, built)
    except ChatError as error:
        if chat_template is not None:
            raise
        return f"none ({error})"
    return f"{fmt.name} ({reason})"


def describe_files(path: Path, files: list[Path], unit: str = "parts") -> str:
    """The path and size; for several files (a split GGUF's parts, an HF folder's shards),
    their number and total size."""
    size = human_bytes(sum(part.stat().st_size for part in files))
    return f"{path} ({size})" if len(files) == 1 else f"{path} ({len(files)} {unit}, {size})"


def describe_file(path: Path) -> str:
    """The path and size of a GGUF file; for a file split in parts, their number and total."""
    return describe_files(path, part_paths(path))


def quantization_row(checkpoint: Checkpoint) -> list[tuple[str, str]]:
    """A row describing a GPTQ checkpoint's quantization (none for other kinds)."""
    gptq = getattr(checkpoint, "gptq", None)
    if gptq is None:
        return []
    group = "per row" if gptq.group_size == -1 else f"group size {gptq.group_size}"
    order = ", act-order" if gptq.desc_act else ""
    sym = "symmetric" if gptq.sym else "asymmetric"
    return [
        (
            "quantization",
            f"GPTQ {gptq.bits}-bit, {group}{order}, {sym} ({gptq.checkpoint_format} format)",
        )
    ]


def weights_form(packed: PackedWeights, dtype: torch.dtype) -> str:
    """How the weights are held: all in `dtype`, or the quantized matrices as stored."""
    name = str(dtype).removeprefix("torch.")
    return f"with the matrices as stored, the rest {name}" if packed.params else f"as {name}"


def describe(
    path: Path, n_ctx: int | None, device: torch.device, chat_template: str | None = None
) -> list[tuple[str, str]]:
    """(label, value) rows describing the model at `path` (GGUF file, HF or GPTQ folder), with
    the memory needed to run it on `device` at `n_ctx` tokens (default: its trained context
    length) and the chat format it is used with (`chat_template`: as --chat-template)."""
    with open_checkpoint(path) as checkpoint:
        config = checkpoint.config
        meta = dict(checkpoint.metadata)
        types = checkpoint.tensor_types()
        unit = "parts" if checkpoint.kind == "gguf" else "shards"
        files = describe_files(path, checkpoint.files(), unit)
        tokenizer_kind = checkpoint.tokenizer_kind()
        chat_format = chat_format_row(meta, str(path), chat_template, checkpoint.tokenizer)
        quantization = quantization_row(checkpoint)
        packed = checkpoint.packed_weights()
    ctx = n_ctx or config.context_length
    dtype = choose_dtype(config, ctx, device, packed)
    memory = estimate_memory(config, ctx, dtype, packed)
    gqa = f" (GQA {config.n_kv_groups}:1)" if config.n_kv_groups > 1 else ""
    rope = f"freq base {config.rope_freq_base:g}, {config.rope_dim} dims"
    if config.rope_scale != 1.0:
        rope += f", linear scaling x{config.rope_scale:g}"
    return [
        ("file", files),
        ("format", checkpoint.kind),
        ("name", str(meta.get("general.name", "-"))),
        ("architecture", str(meta["general.architecture"])),
        ("parameters", human_count(config.n_params())),
        ("context length", f"{config.context_length} (trained)"),
        ("layers", str(config.n_layer)),
        ("width", f"embedding {config.n_embd}, feed-forward {config.n_ff}"),
        (
            "attention",
            f"{config.n_head} heads, {config.n_head_kv} KV heads{gqa}, head dim {config.head_dim}",
        ),
        ("rope", rope),
        ("vocabulary", f"{config.n_vocab} tokens, {tokenizer_kind}"),
        ("chat format", chat_format),
        *quantization,
        ("tensor types", ", ".join(f"{name} x{count}" for name, count in types.most_common())),
        (
            f"memory at -c {ctx}",
            f"{human_bytes(memory.total)} (weights {human_bytes(memory.weights)} "
            f"{weights_form(packed, dtype)}, KV cache {human_bytes(memory.kv_cache)})",
        ),
    ]
