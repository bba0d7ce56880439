"""Tokenizers built from GGUF metadata (SentencePiece-style and byte-level BPE), equal to
llama.cpp's, and a streaming UTF-8-safe detokenizer.

    tok = Tokenizer.from_gguf_metadata(metadata, source="model.gguf")
    ids = tok.encode("<|im_start|>user\\nHi<|im_end|>", parse_special=True)
    text = tok.decode(ids, skip_special=True)
"""

from corral.tokenizer.detokenizer import StreamingDetokenizer
from corral.tokenizer.tokenizer import Tokenizer

__all__ = ["StreamingDetokenizer", "Tokenizer"]
