"""Tokenizers shared by the chat tests: SmolLM2's (BPE, ChatML) and llama.cpp's Llama-2
SentencePiece test vocabulary."""

import pytest
from chat_refs import llama_spm_path, smollm2_path

from corral.tokenizer import Tokenizer
from tests.tokenizer.tokenizer_data import tokenizer_for


@pytest.fixture(scope="module")
def smol() -> Tokenizer:
    return tokenizer_for(smollm2_path())


@pytest.fixture(scope="module")
def spm() -> Tokenizer:
    return tokenizer_for(llama_spm_path())
