"""An HF Llama folder (fp16/bf16/fp32 safetensors) or a GPTQ folder as a Checkpoint.

Everything is validated on open, before any weight is converted: the config, the shard
index, every expected tensor's presence, dtype and shape, and for GPTQ layers the packed
tensors against bits and group size and g_idx's range. Weights are then yielded one by one
(see Checkpoint.weights), Q/K rows reordered by corral.weights.hf_names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from corral.checkpoints.base import Checkpoint, Weight
from corral.errors import ModelFormatError
from corral.formats.gptq import GPTQConfig, read_gptq_config, read_gptq_linear
from corral.formats.hf import SafetensorsWeights, read_json_object
from corral.formats.hf_config import config_from_hf, generation_defaults, tied_embeddings
from corral.tokenizer import Tokenizer
from corral.tokenizer.hf import load_hf_tokenizer, read_tokenizer_settings
from corral.weights.hf_names import (
    EMBEDDING,
    interleave_rope_rows,
    linear_shapes,
    rope_heads,
    vector_names,
)
from corral.weights.qtensor import QTensor

DENSE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class HFCheckpoint(Checkpoint):
    """An HF model folder with config.json and safetensors weights, dense or GPTQ."""

    def __init__(self, path: Path) -> None:
        self.path = path
        config_path = path / "config.json"
        raw = read_json_object(config_path)
        assert raw is not None
        self.config = config_from_hf(raw, str(config_path))
        self._tied = tied_embeddings(raw, str(config_path))
        self.gptq: GPTQConfig | None = read_gptq_config(path, raw)
        self.kind = "gptq" if self.gptq is not None else "hf"
        gen_path = path / "generation_config.json"
        self.generation_defaults = generation_defaults(
            read_json_object(gen_path, required=False) or {}, str(gen_path)
        )
        self._settings = read_tokenizer_settings(path)
        self.metadata: dict[str, Any] = {"general.architecture": "llama"}
        if isinstance(raw.get("_name_or_path"), str) and raw["_name_or_path"]:
            self.metadata["general.name"] = raw["_name_or_path"]
        if self._settings.chat_template is not None:
            self.metadata["tokenizer.chat_template"] = self._settings.chat_template
        base_name = self.gptq.model_file_base_name if self.gptq else None
        self._store = SafetensorsWeights(path, preferred=base_name)
        try:
            self._linears = self._check_tensors()
        except BaseException:
            self._store.close()
            raise

    def _dense_info(self, name: str, shape: tuple[int, ...]) -> None:
        """Refuse a missing dense tensor or one of the wrong dtype or shape."""
        if name not in self._store:
            raise ModelFormatError(f"{self.path}: required tensor '{name}' is missing")
        info = self._store.info(name)
        where = f"{self._store.source(name)}: tensor '{name}'"
        if info.torch_dtype not in DENSE_DTYPES:
            raise ModelFormatError(f"{where} is {info.dtype}, expected F16, BF16 or F32")
        if info.shape != shape:
            raise ModelFormatError(
                f"{where} has shape {list(info.shape)} but config.json implies {list(shape)}"
            )

    def _check_tensors(self) -> dict[str, QTensor | None]:
        """Validate every tensor the model needs; the GPTQ layers as QTensors (None: dense)."""
        config = self.config
        self._dense_info(EMBEDDING, (config.n_vocab, config.n_embd))
        for name in vector_names(config):
            self._dense_info(name, (config.n_embd,))
        linears: dict[str, QTensor | None] = {}
        for prefix, (_, shape) in linear_shapes(config, self._tied).items():
            if f"{prefix}.qweight" not in self._store:
                self._dense_info(f"{prefix}.weight", shape)
                linears[prefix] = None
                continue
            if self.gptq is None:
                raise ModelFormatError(
                    f"{self.path}: '{prefix}.qweight' is a GPTQ tensor, but the folder has no "
                    "quantize_config.json and config.json no quantization_config"
                )
            linears[prefix] = read_gptq_linear(
                prefix, self._get, self.gptq, shape, self._store.source(f"{prefix}.qweight")
            )
        return linears

    def _get(self, name: str) -> torch.Tensor | None:
        return self._store.tensor(name) if name in self._store else None

    def tokenizer(self) -> Tokenizer:
        """The tokenizer from tokenizer.json or tokenizer.model and the settings files."""
        extra_eog = self.generation_defaults.get("eos_token_id", [])
        return load_hf_tokenizer(self.path, self.config.n_vocab, extra_eog, self._settings)

    def weights(self, device: torch.device, dtype: torch.dtype) -> Iterator[tuple[str, Weight]]:
        """Embedding, norms (float32) and linears; GPTQ linears as QTensor."""
        yield "tok_embeddings.weight", self._store.tensor(EMBEDDING).to(device, dtype)
        for name, ours in vector_names(self.config).items():
            yield ours, self._store.tensor(name).to(device, torch.float32)
        for prefix, (ours, _) in linear_shapes(self.config, self._tied).items():
            quantized = self._linears[prefix]
            value: Weight = (
                quantized
                if quantized is not None
                else self._store.tensor(f"{prefix}.weight").to(device, dtype)
            )
            heads = rope_heads(prefix, self.config)
            if heads is not None:
                value = interleave_rope_rows(value, heads)
            yield ours, value

    def tensor_types(self) -> Counter[str]:
        """Stored dtypes of the dense weights, and "GPTQ b-bit" for quantized linears."""
        counts: Counter[str] = Counter()
        names = [EMBEDDING, *vector_names(self.config)]
        for prefix, quantized in self._linears.items():
            if quantized is None:
                names.append(f"{prefix}.weight")
            else:
                counts[f"GPTQ {quantized.bits}-bit"] += 1
        counts.update(self._store.info(name).dtype for name in names)
        return counts

    def tokenizer_kind(self) -> str:
        """Which tokenizer file is used."""
        if (self.path / "tokenizer.json").is_file():
            return "tokenizer.json"
        return "tokenizer.model (SentencePiece)"

    def files(self) -> list[Path]:
        """The safetensors shards."""
        return [opened.path for opened in self._store.files]

    def close(self) -> None:
        """Close the shards."""
        self._store.close()
