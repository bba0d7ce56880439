"""Which device each part of the model lives on: everything on one device, or llama.cpp's
partial offload (`-ngl N`: the last N layers on the GPU, the others on the CPU).

With no explicit layer count on CUDA, as many layers go to the GPU as its free memory
holds (weights at their stored size, since GGUF and GPTQ matrices stay quantized there,
plus the layer's KV cache), keeping a reserve for activations and the CUDA context.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from corral.model.kv_cache import cache_value_bytes

if TYPE_CHECKING:
    from corral.checkpoints.base import Checkpoint

GPU_RESERVE_BYTES = 1536 * 2**20  # CUDA context, activations, allocator slack
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Placement:
    """The device of every layer, of the token embedding, and of the final norm + LM head."""

    layer_devices: tuple[torch.device, ...]
    embedding_device: torch.device
    head_device: torch.device

    @property
    def single_device(self) -> bool:
        """True when the whole model is on one device."""
        devices = {*self.layer_devices, self.embedding_device, self.head_device}
        return len(devices) == 1

    @property
    def gpu_layers(self) -> int:
        """How many layers are on a CUDA device."""
        return sum(device.type == "cuda" for device in self.layer_devices)

    def device_of(self, name: str) -> torch.device:
        """The device of the parameter `name` ("layers.3.attn.wq.weight", "norm.weight"...)."""
        if name.startswith("layers."):
            return self.layer_devices[int(name.split(".")[1])]
        if name.startswith("tok_embeddings."):
            return self.embedding_device
        return self.head_device


def plan_placement(
    checkpoint: "Checkpoint",
    device: torch.device,
    dtype: torch.dtype,
    n_ctx: int,
    gpu_layers: int | None,
    cache_types: tuple[str | None, str | None] = (None, None),
) -> Placement:
    """Place the model of `checkpoint` (see the module docstring). `gpu_layers` above the
    layer count means all layers (llama.cpp's `-ngl 999`)."""
    n_layer = checkpoint.config.n_layer
    if device.type != "cuda":
        if gpu_layers:
            raise ValueError(f"--gpu-layers needs a CUDA device, not {device}")
        return Placement((device,) * n_layer, device, device)
    if gpu_layers is None:
        gpu_layers = layers_that_fit(checkpoint, device, dtype, n_ctx, cache_types)
    if gpu_layers < 0:
        raise ValueError(f"--gpu-layers must be >= 0, got {gpu_layers}")
    on_gpu = min(gpu_layers, n_layer)
    layers = tuple(device if i >= n_layer - on_gpu else CPU for i in range(n_layer))
    rest = device if on_gpu == n_layer else CPU
    return Placement(layers, rest, rest)


def layers_that_fit(
    checkpoint: "Checkpoint",
    device: torch.device,
    dtype: torch.dtype,
    n_ctx: int,
    cache_types: tuple[str | None, str | None] = (None, None),
) -> int:
    """How many layers fit in the free memory of `device` (KV cache in `cache_types`)."""
    config = checkpoint.config
    free, _ = torch.cuda.mem_get_info(device)
    file_bytes = sum(path.stat().st_size for path in checkpoint.files())
    weight_bytes = file_bytes / config.n_layer
    width = torch.finfo(dtype).bits // 8
    value_bytes = sum(cache_value_bytes(cache_type, dtype) for cache_type in cache_types)
    kv_bytes = value_bytes * n_ctx * config.n_head_kv * config.head_dim
    embedding_bytes = config.n_vocab * config.n_embd * width
    budget = free - GPU_RESERVE_BYTES - embedding_bytes
    return max(0, min(config.n_layer, int(budget // (weight_bytes + kv_bytes))))
