"""Small synthetic SentencePiece vocabularies against llama.cpp.

Their pieces include "a▁b"-like tokens (a space after a letter), so the merge must run over
the whole text instead of word by word; they also carry user-defined, control and unused
tokens and different add_bos/add_eos/add_space_prefix flags. The metadata and llama.cpp's
results are in tests/golden/tokenizer_llama_cpp_vocabs.json.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tokenizer_data import expected_encoding, flags_of, golden

from corral.tokenizer import StreamingDetokenizer, Tokenizer

SYNTHETIC = golden("tokenizer_llama_cpp_vocabs.json")["synthetic"]


def metadata_of(name: str) -> dict[str, Any]:
    """The stored metadata with numeric arrays as numpy arrays, as the GGUF reader gives."""
    metadata = dict(SYNTHETIC[name]["metadata"])
    metadata["tokenizer.ggml.scores"] = np.array(metadata["tokenizer.ggml.scores"], np.float32)
    metadata["tokenizer.ggml.token_type"] = np.array(
        metadata["tokenizer.ggml.token_type"], np.int32
    )
    return metadata


@pytest.mark.parametrize("name", tuple(SYNTHETIC))
def test_synthetic_vocab_matches_llama_cpp(name: str) -> None:
    tok = Tokenizer.from_gguf_metadata(metadata_of(name), source=name)
    assert tok.eog_ids == frozenset(SYNTHETIC[name]["eog_ids"])
    for case in SYNTHETIC[name]["cases"]:
        for key, ids in case["tokens"].items():
            add_special, parse_special = flags_of(key)
            got = tok.encode(case["text"], add_special=add_special, parse_special=parse_special)
            assert got == expected_encoding(tok, ids, add_special), (case["text"], key)
        ids = case["tokens"]["a1p1"]
        assert tok.decode(ids) == case["detok"]["r0u1"], case["text"]
        llama = case["detok"]["r1u0"]
        skipped = tok.decode(ids, skip_special=True)
        assert skipped == llama or (ids[0] == tok.bos_id and llama == " " + skipped)
        stream = StreamingDetokenizer(tok)
        assert "".join([*map(stream.push, ids), stream.flush()]) == skipped


def test_synthetic_vocab_exercises_whole_text_merging() -> None:
    tok = Tokenizer.from_gguf_metadata(metadata_of("spm-inner-space"), source="synthetic")
    assert tok.encode("a b", add_special=False) == [tok.token_id("\u2581a\u2581b")]
    assert tok.token_id("a\u2581b") in tok.encode("<s>a b</s>", add_special=False)
