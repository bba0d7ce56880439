"""A GGUF file as a Checkpoint (the reading itself is corral.formats.gguf and corral.loader)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from corral.checkpoints.base import Checkpoint, Weight
from corral.formats.gguf import GGUFFile
from corral.formats.split_parts import part_paths
from corral.kernels.cpu.layout import layout_error
from corral.loader import expected_shapes, is_linear, load_tensor, parameter_name, read_config
from corral.quant.ggml_types import GGMLType
from corral.tokenizer import Tokenizer
from corral.weights.blocks import BlockWeight
from corral.weights.footprint import PackedWeights

DENSE_TYPES = frozenset({GGMLType.F32, GGMLType.F16, GGMLType.BF16})

# per-token vocabulary arrays: read once into the tokenizer, not kept in metadata
VOCAB_ARRAYS = frozenset(
    f"tokenizer.ggml.{key}" for key in ("tokens", "token_type", "scores", "merges")
)


class GGUFCheckpoint(Checkpoint):
    """A GGUF file (or a file split in parts), validated on open."""

    kind = "gguf"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._gguf = GGUFFile(path)
        try:
            self.config = read_config(self._gguf)
        except BaseException:
            self._gguf.close()
            raise
        meta = self._gguf.metadata
        self.metadata: dict[str, Any] = {k: v for k, v in meta.items() if k not in VOCAB_ARRAYS}
        self.generation_defaults: dict[str, Any] = {}

    def tokenizer(self) -> Tokenizer:
        """The tokenizer from the file's ``tokenizer.ggml.*`` metadata."""
        return Tokenizer.from_gguf_metadata(self._gguf.metadata, source=str(self.path))

    def weights(self, device: torch.device, dtype: torch.dtype) -> Iterator[tuple[str, Weight]]:
        """Every tensor (GGUF files hold Q/K rows in corral's order): quantized matrices as
        BlockWeight (their raw blocks, on the CPU), the others on `device` in `dtype`."""
        tensors = self._gguf.tensors
        for name in expected_shapes(self.config):
            info = tensors.get(name)
            if info is None:
                continue
            if len(info.shape) == 2 and info.ggml_type not in DENSE_TYPES:
                data = torch.frombuffer(bytearray(self._gguf.tensor_bytes(name)), dtype=torch.uint8)
                source = f"{self.path}: tensor '{name}'"
                yield parameter_name(name), BlockWeight(info.ggml_type, info.shape, data, source)
            else:
                yield parameter_name(name), load_tensor(self._gguf, info, device, dtype)

    def tensor_types(self) -> Counter[str]:
        """ggml type names of the file's tensors."""
        return Counter(info.ggml_type.name for info in self._gguf.tensors.values())

    def packed_weights(self) -> PackedWeights:
        """The quantized matrices the CPU kernels multiply as stored (corral.kernels.cpu),
        and the tied LM head's copy of the embedding's blocks."""
        params = nbytes = 0
        for gguf_name in expected_shapes(self.config):
            info = self._gguf.tensors.get(gguf_name)
            if info is None or not is_linear(parameter_name(gguf_name)):
                continue
            if layout_error(info.ggml_type.name, info.shape[0]) is None:
                params += info.shape[0] * info.shape[1]
                nbytes += info.nbytes
        embedding = self._gguf.tensors.get("token_embd.weight")
        tied = "output.weight" not in self._gguf.tensors
        if tied and embedding and not layout_error(embedding.ggml_type.name, embedding.shape[0]):
            nbytes += embedding.nbytes
        return PackedWeights(params, nbytes)

    def tokenizer_kind(self) -> str:
        """``tokenizer.ggml.model`` and ``.pre``."""
        meta = self._gguf.metadata
        return f"{meta.get('tokenizer.ggml.model', '?')} ({meta.get('tokenizer.ggml.pre', '-')})"

    def files(self) -> list[Path]:
        """The file, or its parts."""
        return part_paths(self.path)

    def close(self) -> None:
        """Close the file."""
        self._gguf.close()
