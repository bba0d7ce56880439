"""Checkpoint -> model on the chosen device: validate tensors, dequantize, bind with assign=True.

`build_model` takes any Checkpoint (corral.checkpoints: GGUF, HF, GPTQ); the GGUF tensor
table and checks below are also used directly by `load_gguf_model`.
"""

import ctypes
import ctypes.util
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from corral.config import ModelConfig, config_from_gguf
from corral.errors import CorralError, ModelFormatError, UnsupportedError
from corral.formats.gguf import GGUFFile, TensorInfo
from corral.model.kv_cache import check_cache_type
from corral.model.llama import Transformer
from corral.placement import CPU, Placement, plan_placement
from corral.quant.dequant import dequantize
from corral.quant.gptq import dequantize_gptq
from corral.quant.linear import PackedLinear
from corral.weights.blocks import BlockWeight
from corral.weights.qtensor import QTensor

if TYPE_CHECKING:
    from corral.checkpoints.base import Checkpoint, Weight

_LIBC_NAME = ctypes.util.find_library("c")
_LIBC = ctypes.CDLL(_LIBC_NAME) if _LIBC_NAME else None

LINEAR_MODULES = (
    "attn.wq",
    "attn.wk",
    "attn.wv",
    "attn.wo",
    "ffn.w_gate",
    "ffn.w_up",
    "ffn.w_down",
)
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
    return replace(config, tied_output="output.weight" not in gguf.tensors)


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
    tensor_types: Counter[str]  # storage type name -> how many stored weights have it
    placement: Placement | None = None  # where each part lives (None: all on one device)


def _bind(
    config: ModelConfig,
    dense: dict[str, torch.Tensor],
    packed: dict[str, nn.Module],
    n_ctx: int,
    cache_types: tuple[str | None, str | None] = (None, None),
) -> Transformer:
    """Build the Transformer on "meta", swap in the `packed` linear modules (by weight
    name; the dict is emptied), bind the `dense` weights (a tied LM head when
    "output.weight" is absent) and set up a KV cache of `n_ctx` positions storing keys and
    values as `cache_types`."""
    if "output.weight" not in dense and "output.weight" not in packed:
        dense["output.weight"] = dense["tok_embeddings.weight"]
    with torch.device("meta"):
        model = Transformer(config)
    while packed:  # taken out of the dict: fusion below must be able to free the parts
        name, module = packed.popitem()
        parent, _, attribute = name.removesuffix(".weight").rpartition(".")
        setattr(model.get_submodule(parent), attribute, module)
    model.load_state_dict(dense, assign=True, strict=True)
    model.eval()
    model.fuse_projections()
    model.use_fused_kernels()
    model.set_cache_types(*cache_types)
    model.setup_cache(batch=1, n_positions=n_ctx)
    return model


def load_gguf_model(
    gguf: GGUFFile, device: torch.device, dtype: torch.dtype, n_ctx: int
) -> LoadedModel:
    """Build the Transformer of an opened GGUF file on `device` with a KV cache of `n_ctx`."""
    config = read_config(gguf)
    if n_ctx <= 0:
        raise ValueError(f"the context size must be positive, got {n_ctx}")
    weights = {
        parameter_name(name): load_tensor(gguf, gguf.tensors[name], device, dtype)
        for name in expected_shapes(config)
        if name in gguf.tensors
    }
    model = _bind(config, weights, {}, n_ctx)
    types = Counter(info.ggml_type.name for info in gguf.tensors.values())
    return LoadedModel(model=model, config=config, tensor_types=types)


def is_linear(name: str) -> bool:
    """True for the weight of a linear layer (a matrix multiplied by activations)."""
    return name == "output.weight" or name.removeprefix("layers.").split(".", 1)[-1] in {
        f"{module}.weight" for module in LINEAR_MODULES
    }


def dense_weight(value: "Weight", device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A checkpoint weight as a dense tensor on `device`: quantized ones are dequantized
    there (the packed data moves first, then expands)."""
    if isinstance(value, BlockWeight):
        try:
            return dequantize(value.data.to(device), value.qtype, value.shape, dtype=dtype)
        except CorralError as error:
            raise type(error)(f"{value.source}: {error}") from error
    if not isinstance(value, QTensor):
        return value.to(device)
    if value.scheme != "gptq":
        raise UnsupportedError(f"quantization scheme {value.scheme!r} cannot be dequantized")
    return dequantize_gptq(value.to(device), dtype)


def build_model(
    checkpoint: "Checkpoint",
    device: torch.device,
    dtype: torch.dtype,
    n_ctx: int,
    gpu_layers: int | None = None,
    cache_types: tuple[str | None, str | None] = (None, None),
) -> LoadedModel:
    """The Transformer of any Checkpoint in `dtype`, with a KV cache of `n_ctx` storing
    keys and values as `cache_types` (corral.model.kv_cache; None: in `dtype`).

    GGUF matrices stay quantized on both devices (PackedLinear: fused dequantize-and-multiply
    kernels, Triton on CUDA and numba on the CPU; a tied LM head gets its own packed copy of
    the embedding's blocks, the embedding itself is dequantized for the lookup). GPTQ
    matrices stay quantized on CUDA (the few layouts the kernels refuse, such as 2/3-bit
    with groups of 16, are dequantized, see corral.kernels.gptq) and are dequantized at
    load on the CPU, one at a time. The layers are placed by corral.placement:
    all of them, `gpu_layers` of them (llama.cpp's -ngl: the last ones, the rest on the
    CPU), or as many as free GPU memory holds.
    """
    if n_ctx <= 0:
        raise ValueError(f"the context size must be positive, got {n_ctx}")
    for cache_type in cache_types:
        check_cache_type(cache_type, checkpoint.config.head_dim)
    placement = plan_placement(checkpoint, device, dtype, n_ctx, gpu_layers, cache_types)
    if not placement.single_device and dtype == torch.float16:
        dtype = torch.bfloat16  # CPU layers: float16 matmuls are slow there, bfloat16 not
    dense, packed = _load_weights(checkpoint, placement, dtype)
    model = _bind(checkpoint.config, dense, packed, n_ctx, cache_types)
    release_free_memory()  # the parts of the fused projections
    return LoadedModel(
        model=model,
        config=checkpoint.config,
        tensor_types=checkpoint.tensor_types(),
        placement=placement,
    )


def _packed_linear(value: "Weight", target: torch.device) -> PackedLinear | None:
    """`value` as a PackedLinear on `target` when a kernel multiplies it as stored, else
    None (then it is dequantized)."""
    if isinstance(value, BlockWeight):
        return PackedLinear.from_gguf_blocks(value.data, value.qtype.name, value.shape, target)
    if isinstance(value, QTensor) and target.type == "cuda":
        if PackedLinear.qtensor_layout_error(value) is None:
            return PackedLinear.from_qtensor(value, target)
    return None


def _load_weights(
    checkpoint: "Checkpoint", placement: Placement, dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], dict[str, PackedLinear]]:
    """Every weight of `checkpoint` on its device (`placement`): (dense tensors in `dtype`,
    packed linears) by parameter name, with a packed tied LM head when there is one."""
    read_device = placement.embedding_device if placement.single_device else CPU
    dense: dict[str, torch.Tensor] = {}
    packed: dict[str, PackedLinear] = {}
    embedding: Weight | None = None
    for name, value in checkpoint.weights(read_device, dtype):
        target = placement.device_of(name)
        linear = _packed_linear(value, target) if is_linear(name) else None
        if linear is not None:
            packed[name] = linear
        else:
            dense[name] = dense_weight(value, target, dtype)
        if name == "tok_embeddings.weight":
            embedding = value  # also the LM head's blocks when the head is tied
        release_free_memory()
    if "output.weight" not in dense and "output.weight" not in packed:
        head = _packed_linear(embedding, placement.head_device)
        if head is not None:  # the tied head reads the file's blocks, the lookup a dense copy
            packed["output.weight"] = head
    return dense, packed


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc's malloc_trim). Loading frees
    many large temporaries whose pages glibc would otherwise keep, so the resident size
    would grow well past the model's."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def resolve_path(path: str | Path) -> Path:
    """The model file or folder, or a clear error when it does not exist."""
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise FileNotFoundError(f"model file or folder not found: {resolved}")
    return resolved
