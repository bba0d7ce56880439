"""An HF model folder: its JSON files and the safetensors shards that hold its weights.

    folder/
      config.json                    hyperparameters (corral.formats.hf_config)
      generation_config.json         sampling defaults (optional)
      model.safetensors              one file, or shards listed by
      model.safetensors.index.json   {"weight_map": {tensor name: shard file name}}
      tokenizer.json | tokenizer.model, tokenizer_config.json, ...   (corral.tokenizer.hf)
      quantize_config.json           GPTQ checkpoints (corral.formats.gptq)

Treated as hostile: JSON files are size-capped; shard names from the index must be plain file
names inside the folder (no path separators, no ".."); every shard must exist and hold the
tensors the index assigns to it; a tensor in two shards is refused. PyTorch pickle files
(``*.bin``, ``*.pt``, ``*.pth``) are never opened: unpickling can run code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from corral.errors import ModelFormatError
from corral.formats.safetensors import SafetensorInfo, SafetensorsFile

MAX_JSON_BYTES = 64 << 20
INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONVERT_HINT = (
    "corral never loads pickle checkpoints (unpickling can run code). Convert the model to "
    "safetensors with a tool you trust, e.g. in Python with transformers: "
    "AutoModelForCausalLM.from_pretrained(IN_DIR).save_pretrained(OUT_DIR) (it writes "
    "model.safetensors), then load OUT_DIR"
)


def read_json(path: Path, *, required: bool = True, limit: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON file of at most `limit` bytes; None when absent and not `required`."""
    if not path.is_file():
        if required:
            raise ModelFormatError(f"{path}: file is missing")
        return None
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ModelFormatError(f"{path}: larger than the limit of {limit} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ModelFormatError(f"{path}: not valid JSON: {error}") from None


def read_json_object(path: Path, *, required: bool = True) -> dict[str, Any] | None:
    """A JSON file that must hold an object (None when absent and not `required`)."""
    value = read_json(path, required=required)
    if value is not None and not isinstance(value, dict):
        raise ModelFormatError(f"{path}: expected a JSON object")
    return value


def is_hf_folder(path: Path) -> bool:
    """Whether `path` is a folder with a config.json (an HF model folder)."""
    return path.is_dir() and (path / "config.json").is_file()


def refuse_pickle(path: Path) -> None:
    """Raise a clear error for a pickle checkpoint file (never opened)."""
    raise ModelFormatError(f"{path}: PyTorch pickle checkpoint refused. {CONVERT_HINT}")


def shard_paths(folder: Path, preferred: str | None = None) -> tuple[list[Path], dict[str, Path]]:
    """The safetensors files of `folder` and the index's tensor -> shard map ({} unindexed).

    With an index, its shards; else ``model.safetensors``, else ``{preferred}.safetensors``
    (AutoGPTQ's model_file_base_name), else the only ``*.safetensors`` file. A folder with
    only pickle weights is refused with a message saying how to convert it.
    """
    index_path = folder / INDEX_NAME
    if index_path.is_file():
        return _indexed_shards(folder, index_path)
    candidates = ["model.safetensors"] + ([f"{preferred}.safetensors"] if preferred else [])
    for name in candidates:
        if _is_plain_name(name) and (folder / name).is_file():
            return [folder / name], {}
    found = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if len(found) == 1:
        return found, {}
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ModelFormatError(
            f"{folder}: several safetensors files ({names}) but no {INDEX_NAME} saying which "
            "tensors each holds"
        )
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelFormatError(
            f"{folder}: weights only in pickle files ({', '.join(pickles)}). {CONVERT_HINT}"
        )
    raise ModelFormatError(f"{folder}: no model.safetensors or {INDEX_NAME}")


def _is_plain_name(name: str) -> bool:
    """A file name without any directory part (so it cannot leave the folder)."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0:")


def _indexed_shards(folder: Path, index_path: Path) -> tuple[list[Path], dict[str, Path]]:
    """Shards named by the index, each checked to be a plain name of an existing file."""
    index = read_json_object(index_path)
    assert index is not None
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelFormatError(f"{index_path}: 'weight_map' must be a non-empty object")
    shards: dict[str, Path] = {}
    mapping: dict[str, Path] = {}
    for tensor, name in weight_map.items():
        if not isinstance(name, str) or not _is_plain_name(name):
            raise ModelFormatError(
                f"{index_path}: tensor '{tensor}' points to {name!r}, which is not a file name "
                "inside the model folder"
            )
        if not name.endswith(".safetensors"):
            raise ModelFormatError(
                f"{index_path}: tensor '{tensor}' points to {name!r}, not a .safetensors file"
            )
        if name not in shards:
            path = folder / name
            if not path.is_file():
                raise ModelFormatError(f"{index_path}: shard {name!r} is missing from {folder}")
            shards[name] = path
        mapping[tensor] = shards[name]
    return list(shards.values()), mapping


class SafetensorsWeights:
    """All tensors of a folder's safetensors shards, by name, read on demand."""

    def __init__(self, folder: Path, preferred: str | None = None) -> None:
        paths, index = shard_paths(folder, preferred)
        self.files: list[SafetensorsFile] = []
        self.location: dict[str, tuple[SafetensorsFile, SafetensorInfo]] = {}
        try:
            for path in paths:
                opened = SafetensorsFile(path)
                self.files.append(opened)
                for name, info in opened.tensors.items():
                    if name in self.location:
                        other = self.location[name][0].path.name
                        raise ModelFormatError(
                            f"{path}: tensor '{name}' is also in {other}; which one is meant?"
                        )
                    self.location[name] = (opened, info)
            for name, path in index.items():
                held = self.location.get(name)
                if held is None or held[0].path != path:
                    raise ModelFormatError(
                        f"{folder / INDEX_NAME}: tensor '{name}' is not in shard {path.name}"
                    )
        except BaseException:
            self.close()
            raise

    def __contains__(self, name: str) -> bool:
        return name in self.location

    def info(self, name: str) -> SafetensorInfo:
        """Dtype, shape and place of tensor `name`."""
        return self.location[name][1]

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor `name` (CPU, stored dtype)."""
        opened, _ = self.location[name]
        return opened.tensor(name)

    def source(self, name: str) -> str:
        """The shard file holding `name`, for error messages."""
        return str(self.location[name][0].path)

    def close(self) -> None:
        """Close every shard."""
        for opened in self.files:
            opened.close()
