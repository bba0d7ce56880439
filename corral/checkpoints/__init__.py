"""Model sources behind one interface: ``open_checkpoint(path)`` gives a Checkpoint for a GGUF
file, an HF Llama folder (safetensors) or a GPTQ folder, and ``load_model(path, ...)`` the
model built from it.

    with open_checkpoint("models/llama-7b-gptq") as checkpoint:
        tokenizer = checkpoint.tokenizer()
        loaded = build_model(checkpoint, torch.device("cpu"), torch.float32, n_ctx=4096)

What a path is comes from its contents, never its name: a folder with config.json is an HF
folder (GPTQ when it carries a GPTQ quantization config); a file starting with "GGUF" is a
GGUF file; pickle files (PyTorch ``.bin``/``.pt``) are refused unopened with a message
saying how to convert them; a lone ``.safetensors`` file is refused because its
hyperparameters live in the config.json of its folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from corral.checkpoints.base import Checkpoint
from corral.checkpoints.gguf import GGUFCheckpoint
from corral.checkpoints.hf import HFCheckpoint
from corral.errors import ModelFormatError
from corral.formats.hf import refuse_pickle
from corral.loader import LoadedModel, build_model

__all__ = ["Checkpoint", "load_model", "open_checkpoint"]

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip container
_PICKLE_PROTOCOL = 0x80  # first byte of a protocol 2+ pickle


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open the model at `path` (a GGUF file or an HF/GPTQ folder), validated."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelFormatError(
                f"{path}: a folder without config.json; corral reads HF model folders "
                "(config.json + *.safetensors) and GGUF files"
            )
        return HFCheckpoint(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    with path.open("rb") as f:
        head = f.read(9)
    if head.startswith(_ZIP_MAGIC) or head[:1] == bytes([_PICKLE_PROTOCOL]):
        refuse_pickle(path)
    if len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"GGUF"):
        raise ModelFormatError(
            f"{path}: a safetensors file holds no hyperparameters; pass the folder that has "
            "it with its config.json"
        )
    return GGUFCheckpoint(path)


def load_model(
    path: str | Path, device: torch.device, dtype: torch.dtype, n_ctx: int
) -> LoadedModel:
    """The model at `path` (any supported format) on `device`, with a KV cache of `n_ctx`."""
    with open_checkpoint(path) as checkpoint:
        return build_model(checkpoint, device, dtype, n_ctx)
