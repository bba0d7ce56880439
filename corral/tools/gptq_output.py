"""The output folder of `corral quantize-gptq`: an AutoGPTQ-style checkpoint.

OUT_DIR/
  model.safetensors       quantized linears as qweight/qzeros/scales/g_idx, the rest fp16
  config.json             the input's config with torch_dtype float16 + quantization_config
  quantize_config.json    AutoGPTQ's BaseQuantizeConfig fields
  tokenizer files, generation_config.json   copied unchanged

model.safetensors is written tensor by tensor as the quantizer produces them: every
tensor's shape and dtype is known before the first layer is quantized, so the header (and
with it every data offset) is written first and each tensor lands at its offset without
keeping the model in memory.
"""

import json
import shutil
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from corral.quant.gptq_algorithm import GPTQSpec

SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
MODEL_FILE = "model.safetensors"
# copied from the input folder when present; weights and code never are
COPIED_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the output file."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Size of its data in bytes."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count * self.dtype.itemsize


class StreamingSafetensorsWriter:
    """Write a safetensors file whose tensors are all declared up front, in any order."""

    def __init__(
        self, path: Path, entries: Iterable[TensorEntry], metadata: dict[str, str]
    ) -> None:
        self.path = path
        self.entries: dict[str, TensorEntry] = {}
        self.offsets: dict[str, int] = {}
        header: dict[str, Any] = {"__metadata__": metadata}
        offset = 0
        for entry in entries:
            if entry.name in self.entries:
                raise ValueError(f"{path}: tensor '{entry.name}' declared twice")
            self.entries[entry.name] = entry
            self.offsets[entry.name] = offset
            header[entry.name] = {
                "dtype": SAFETENSORS_DTYPES[entry.dtype],
                "shape": list(entry.shape),
                "data_offsets": [offset, offset + entry.nbytes],
            }
            offset += entry.nbytes
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 8)  # data starts 8-byte aligned
        self.data_start = 8 + len(text)
        self.written: set[str] = set()
        self.file: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed by close())
        self.file.write(struct.pack("<Q", len(text)) + text)
        self.file.truncate(self.data_start + offset)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Store `tensor` as the declared tensor `name` (shape and dtype must match)."""
        entry = self.entries.get(name)
        if entry is None:
            raise ValueError(f"{self.path}: tensor '{name}' was not declared")
        if name in self.written:
            raise ValueError(f"{self.path}: tensor '{name}' written twice")
        if tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
            raise ValueError(
                f"{self.path}: tensor '{name}' is {tensor.dtype} {tuple(tensor.shape)}, "
                f"declared {entry.dtype} {entry.shape}"
            )
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)  # (nbytes,)
        self.file.seek(self.data_start + self.offsets[name])
        self.file.write(data.numpy())  # no extra copy: numpy exposes the buffer
        self.written.add(name)

    def discard(self) -> None:
        """Close the file after a failure (it stays incomplete; the caller removes it)."""
        self.file.close()

    def close(self) -> None:
        """Close the file; every declared tensor must have been written."""
        self.file.close()
        missing = sorted(set(self.entries) - self.written)
        if missing:
            raise ValueError(f"{self.path}: tensors never written: {', '.join(missing[:5])}")


def quantize_config(spec: GPTQSpec) -> dict[str, Any]:
    """AutoGPTQ's quantize_config.json for `spec` (also config.json's quantization_config)."""
    return {
        "bits": spec.bits,
        "group_size": spec.group_size,
        "damp_percent": spec.damp,
        "desc_act": spec.act_order,
        "static_groups": False,
        "sym": spec.sym,
        "true_sequential": True,
        "model_name_or_path": None,
        "model_file_base_name": MODEL_FILE.removesuffix(".safetensors"),
        "is_marlin_format": False,
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
    }


def safetensors_metadata(spec: GPTQSpec) -> dict[str, str]:
    """String metadata of model.safetensors, as AutoGPTQ writes it."""
    return {
        "format": "pt",
        "quantized_by": "corral",
        "gptq_bits": str(spec.bits),
        "gptq_group_size": str(spec.group_size),
        "gptq_desc_act": str(spec.act_order),
        "gptq_damp_percent": str(spec.damp),
    }


def write_configs(out_dir: Path, hf_config: dict[str, Any], spec: GPTQSpec) -> None:
    """config.json (input config, fp16, with quantization_config) and quantize_config.json."""
    config = dict(hf_config)
    for key in ("torch_dtype", "dtype"):
        if key in config or key == "torch_dtype":
            config[key] = "float16"
    config["quantization_config"] = quantize_config(spec)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    text = json.dumps(quantize_config(spec), indent=2) + "\n"
    (out_dir / "quantize_config.json").write_text(text, encoding="utf-8")


def copy_side_files(hf_dir: Path, out_dir: Path) -> list[str]:
    """Copy the tokenizer and generation files of `hf_dir` that exist."""
    copied = []
    for name in COPIED_FILES:
        source = hf_dir / name
        if source.is_file():
            shutil.copyfile(source, out_dir / name)
            copied.append(name)
    return copied
