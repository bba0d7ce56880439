"""Memory needed to run a model, and the compute dtype chosen to fit it."""

import os
from dataclasses import dataclass

import torch

from corral.config import ModelConfig
from corral.weights.footprint import PackedWeights

CPU_BUDGET_FRACTION = 0.8  # of the memory available when the model is loaded
ALL_DENSE = PackedWeights()  # no weight stays quantized


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes corral needs to run a model: weights as held in memory plus the KV cache."""

    weights: int
    kv_cache: int

    @property
    def total(self) -> int:
        """Weights plus KV cache."""
        return self.weights + self.kv_cache


def estimate_memory(
    config: ModelConfig, n_ctx: int, dtype: torch.dtype, packed: PackedWeights = ALL_DENSE
) -> MemoryEstimate:
    """Memory to run `config` at `n_ctx` tokens in `dtype`.

    The `packed` weights stay quantized (Checkpoint.packed_weights), the others are held
    in `dtype`; the KV cache holds K and V for every layer, KV head and position in `dtype`.
    """
    width = torch.finfo(dtype).bits // 8
    weights = (config.n_params() - packed.params) * width + packed.nbytes
    kv_cache = 2 * config.n_layer * n_ctx * config.n_head_kv * config.head_dim * width
    return MemoryEstimate(weights=weights, kv_cache=kv_cache)


def available_cpu_memory() -> int:
    """Bytes of RAM available now (MemAvailable on Linux, total RAM elsewhere)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def choose_dtype(
    config: ModelConfig,
    n_ctx: int,
    device: torch.device,
    packed: PackedWeights = ALL_DENSE,
) -> torch.dtype:
    """float16 on CUDA. On CPU float32 (exact and as fast as 16-bit there) when it fits in
    80% of the available RAM, else bfloat16 (same range as float32, half the memory); the
    `packed` weights stay quantized either way."""
    if device.type != "cpu":
        return torch.float16
    budget = available_cpu_memory() * CPU_BUDGET_FRACTION
    if estimate_memory(config, n_ctx, torch.float32, packed).total <= budget:
        return torch.float32
    return torch.bfloat16
