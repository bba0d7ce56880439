"""Checkpoint -> model on the chosen device: validate tensors, dequantize, bind with assign=True."""

from dataclasses import dataclass
from pathlib import Path

import torch

from corral.config import ModelConfig, config_from_gguf
from corral.errors import CorralError, ModelFormatError
from corral.formats.gguf import GGUFFile, TensorInfo
from corral.model.llama import Transformer
from corral.quant.dequant import dequantize
from corral.quant.ggml_types import GGMLType

# GGUF tensor name -> parameter name in corral.model.llama.Transformer ("{i}" = layer index)
LAYER_TENSORS = {
    "attn_norm.weight": "attn_norm.weight",
    "attn_q.weight": "attn.wq.weight",
    "attn_k.weight": "attn.wk.weight",
    "attn_v.weight": "attn.wv.weight",
    "attn_output.weight": "attn.wo.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn_gate.weight": "ffn.w_gate.weight",
    "ffn_up.weight": "ffn.w_up.weight",
    "ffn_down.weight": "ffn.w_down.weight",
}
GLOBAL_TENSORS = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}
OPTIONAL_TENSORS = frozenset({"output.weight"})  # absent: the LM head is tied to token_embd


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every GGUF tensor a Llama model of `config` has, with its shape (torch order)."""
    e, q, kv = config.n_embd, config.n_head * config.head_dim, config.n_head_kv * config.head_dim
    per_layer = {
        "attn_norm.weight": (e,),
        "attn_q.weight": (q, e),
        "attn_k.weight": (kv, e),
        "attn_v.weight": (kv, e),
        "attn_output.weight": (e, q),
        "ffn_norm.weight": (e,),
        "ffn_gate.weight": (config.n_ff, e),
        "ffn_up.weight": (config.n_ff, e),
        "ffn_down.weight": (e, config.n_ff),
    }
    shapes = {
        "token_embd.weight": (config.n_vocab, e),
        "output_norm.weight": (e,),
        "output.weight": (config.n_vocab, e),
    }
    for i in range(config.n_layer):
        shapes.update({f"blk.{i}.{name}": shape for name, shape in per_layer.items()})
    return shapes


def parameter_name(gguf_name: str) -> str:
    """Map a GGUF tensor name to the model's parameter name."""
    if gguf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[gguf_name]
    _, index, suffix = gguf_name.split(".", 2)
    return f"layers.{index}.{LAYER_TENSORS[suffix]}"


def read_config(gguf: GGUFFile) -> ModelConfig:
    """The model config of an opened GGUF file, checked against its tensors."""
    source = str(gguf.path)
    embedding = gguf.tensors.get("token_embd.weight")
    if embedding is None:
        raise ModelFormatError(f"{source}: required tensor 'token_embd.weight' is missing")
    if len(embedding.shape) != 2:
        raise ModelFormatError(f"{source}: tensor 'token_embd.weight' must be 2-D")
    config = config_from_gguf(gguf.metadata, embedding.shape[0], source)
    check_tensors(gguf, config)
    return config


def check_tensors(gguf: GGUFFile, config: ModelConfig) -> None:
    """Refuse missing tensors and tensors whose shapes contradict the hyperparameters."""
    source = str(gguf.path)
    for name, shape in expected_shapes(config).items():
        info = gguf.tensors.get(name)
        if info is None:
            if name in OPTIONAL_TENSORS:
                continue
            raise ModelFormatError(f"{source}: required tensor '{name}' is missing")
        if info.shape != shape:
            raise ModelFormatError(
                f"{source}: tensor '{name}' has shape {list(info.shape)} but the metadata "
                f"implies {list(shape)}"
            )


def load_tensor(
    gguf: GGUFFile, info: TensorInfo, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Dequantize one tensor onto `device` (packed bytes are moved first, then expanded)."""
    packed = torch.frombuffer(bytearray(gguf.tensor_bytes(info.name)), dtype=torch.uint8)
    out_dtype = torch.float32 if len(info.shape) == 1 else dtype  # norms stay in float32
    try:
        return dequantize(packed.to(device), info.ggml_type, info.shape, dtype=out_dtype)
    except CorralError as error:
        raise type(error)(f"{gguf.path}: tensor '{info.name}': {error}") from error


@dataclass(frozen=True)
class LoadedModel:
    """A model bound to its weights, with the config it was built from."""

    model: Transformer
    config: ModelConfig
    tensor_types: dict[str, GGMLType]


def load_gguf_model(
    gguf: GGUFFile, device: torch.device, dtype: torch.dtype, n_ctx: int
) -> LoadedModel:
    """Build the Transformer of an opened GGUF file on `device` with a KV cache of `n_ctx`."""
    config = read_config(gguf)
    if n_ctx <= 0:
        raise ValueError(f"the context size must be positive, got {n_ctx}")
    with torch.device("meta"):
        model = Transformer(config)
    state: dict[str, torch.Tensor] = {}
    for name in expected_shapes(config):
        if name in gguf.tensors:
            state[parameter_name(name)] = load_tensor(gguf, gguf.tensors[name], device, dtype)
    if "output.weight" not in state:
        state["output.weight"] = state["tok_embeddings.weight"]
    model.load_state_dict(state, assign=True, strict=True)
    model.eval()
    model.setup_cache(batch=1, n_positions=n_ctx)
    types = {name: info.ggml_type for name, info in gguf.tensors.items()}
    return LoadedModel(model=model, config=config, tensor_types=types)


def resolve_path(path: str | Path) -> Path:
    """The model file, or a clear error when it does not exist."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"model file not found: {resolved}")
    return resolved
