"""Python API: `llm = corral.load(path)`, `llm.generate(prompt)`, `llm.stream(prompt)`."""

from collections.abc import Iterator
from pathlib import Path

import torch

from corral.config import ModelConfig
from corral.default_model import default_model_path
from corral.engine.generate import generate_ids
from corral.engine.memory import choose_dtype
from corral.formats.gguf import GGUFFile
from corral.loader import load_gguf_model, read_config, resolve_path
from corral.sampling import SamplingParams
from corral.tokenizer import StreamingDetokenizer, Tokenizer

DEFAULT_CONTEXT = 4096


class LLM:
    """A loaded model with its tokenizer, ready to generate text."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        n_ctx: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Load a GGUF model (the embedded default when `path` is None).

        n_ctx: KV cache size in tokens; default min(model context, 4096).
        device: "cpu", "cuda", "cuda:1", ...; default CUDA when available.
        dtype: compute dtype; default float16 on CUDA; on CPU float32, or bfloat16 when
            float32 weights would not fit in memory (see corral.engine.memory).
        """
        self.path = resolve_path(path) if path is not None else default_model_path()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        with GGUFFile(self.path) as gguf:
            self.tokenizer = Tokenizer.from_gguf_metadata(gguf.metadata, source=str(self.path))
            config = read_config(gguf)
            self.n_ctx = n_ctx or min(config.context_length, DEFAULT_CONTEXT)
            self.dtype = dtype or choose_dtype(config, self.n_ctx, self.device)
            loaded = load_gguf_model(gguf, self.device, self.dtype, self.n_ctx)
        self.model = loaded.model
        self.config: ModelConfig = loaded.config

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False):
        """Token ids of `text` (BOS added as the model's metadata asks)."""
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: list[int]) -> str:
        """Text of token ids."""
        return self.tokenizer.decode(ids)

    def generate_tokens(
        self, prompt_ids: list[int], max_tokens: int = 128, **sampling
    ) -> Iterator[int]:
        """Stream new token ids after `prompt_ids`, stopping at end-of-generation tokens."""
        for token in prompt_ids:
            if not 0 <= token < self.config.n_vocab:
                raise ValueError(f"token id {token} is out of range [0, {self.config.n_vocab})")
        params = SamplingParams(**sampling)
        return generate_ids(self.model, prompt_ids, max_tokens, params, self.tokenizer.is_eog)

    def stream(
        self, prompt: str, max_tokens: int = 128, *, parse_special: bool = False, **sampling
    ) -> Iterator[str]:
        """Stream the continuation of `prompt` as text pieces (never a broken UTF-8 character).

        Sampling keywords: temperature, top_k, top_p, seed (see SamplingParams).
        """
        prompt_ids = self.tokenize(prompt, parse_special=parse_special)
        # no llama.cpp space clean-up on generated text: it would damage code (" ?" -> "?")
        detokenizer = StreamingDetokenizer(self.tokenizer, clean_spaces=False)
        for token in self.generate_tokens(prompt_ids, max_tokens, **sampling):
            piece = detokenizer.push(token)
            if piece:
                yield piece
        tail = detokenizer.flush()
        if tail:
            yield tail

    def generate(self, prompt: str, max_tokens: int = 128, **kwargs) -> str:
        """The continuation of `prompt` as one string."""
        return "".join(self.stream(prompt, max_tokens, **kwargs))


def load(path: str | Path | None = None, **kwargs) -> LLM:
    """Load a model: `corral.load("model.gguf")`, or the embedded default with no path."""
    return LLM(path, **kwargs)
