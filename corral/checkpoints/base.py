"""Checkpoint: what every model source (GGUF file, HF folder, GPTQ folder) offers the loader
and the interfaces, whatever its format."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import torch

from corral.config import ModelConfig
from corral.tokenizer import Tokenizer
from corral.weights.blocks import BlockWeight
from corral.weights.footprint import PackedWeights
from corral.weights.qtensor import QTensor

Weight = torch.Tensor | QTensor | BlockWeight


class Checkpoint(ABC):
    """An opened model: config, metadata, tokenizer, and weights by corral parameter name.

    `metadata` uses GGUF key names whatever the format (``general.architecture``,
    ``general.name``, ``tokenizer.chat_template``, ...), so chat-format selection and
    `corral info` read every format alike. `generation_defaults` holds the checkpoint's
    sampling defaults with HF names (generation_config.json; empty for GGUF).
    """

    path: Path
    kind: str  # "gguf", "hf" or "gptq"
    config: ModelConfig
    metadata: dict[str, Any]
    generation_defaults: dict[str, Any]

    @abstractmethod
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer."""

    @abstractmethod
    def weights(self, device: torch.device, dtype: torch.dtype) -> Iterator[tuple[str, Weight]]:
        """Every stored parameter as (corral parameter name, value).

        Dense weights come on `device` in `dtype` (1-D norm weights in float32), Q/K rows in
        corral's RoPE order; quantized weights come as QTensor (CPU, rows already in that
        order) or BlockWeight (GGUF blocks, CPU) for the caller to dequantize or hand to a
        kernel. ``output.weight`` is absent
        when the LM head is tied to the embedding.
        """

    @abstractmethod
    def tensor_types(self) -> Counter[str]:
        """How many stored weights each storage type has ("Q4_K", "BF16", "GPTQ 4-bit")."""

    def packed_weights(self) -> PackedWeights:
        """The weights corral keeps quantized on the CPU (GGUF blocks): none by default."""
        return PackedWeights()

    @abstractmethod
    def tokenizer_kind(self) -> str:
        """A short description of the tokenizer, for `corral info`."""

    @abstractmethod
    def files(self) -> list[Path]:
        """The files the checkpoint reads."""

    @abstractmethod
    def close(self) -> None:
        """Release the files (tensors already returned stay valid)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
