"""Python API: `llm = corral.load(path)`, `llm.generate(prompt)`, `llm.stream(prompt)`,
`llm.chat(messages)`, `llm.chat_stream(messages)`."""

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from corral.chat import (
    ChatError,
    ChatFormat,
    RenderedPrompt,
    parse_messages,
    render,
    resolve_chat_format,
)
from corral.checkpoints import open_checkpoint
from corral.config import ModelConfig
from corral.default_model import default_model_path
from corral.engine.generate import generate_ids
from corral.engine.memory import choose_dtype
from corral.engine.parallel import generate_n_ids
from corral.engine.stops import StopMatcher, stop_token_ids
from corral.loader import build_model, resolve_path
from corral.sampling import (
    SamplingParams,
    TokenLogprobs,
    check_logit_bias,
    params_from_kwargs,
)
from corral.sampling.constraint import build_constraint
from corral.tokenizer import StreamingDetokenizer, Tokenizer

DEFAULT_CONTEXT = 4096
DEFAULT_CHAT_TOKENS = 512


class LLM:
    """A loaded model with its tokenizer and chat format, ready to generate text."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        n_ctx: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        chat_template: str | None = None,
        gpu_layers: int | None = None,
        cuda_graphs: bool = True,
        cache_type_k: str | None = None,
        cache_type_v: str | None = None,
    ) -> None:
        """Load a model: a GGUF file, an HF Llama folder (safetensors) or a GPTQ folder; the
        embedded default when `path` is None.

        n_ctx: KV cache size in tokens; default min(model context, 4096).
        device: "cpu", "cuda", "cuda:1", ...; default CUDA when available.
        dtype: compute dtype; default float16 on CUDA; on CPU float32, or bfloat16 when
            float32 weights would not fit in memory (see corral.engine.memory).
        chat_template: a built-in chat format name or a jinja2 template file; default the
            model's own template, else a guess from its metadata. A model with neither
            still loads (for `generate`); `chat` then raises ChatError saying how to choose.
        gpu_layers: on CUDA, how many layers go to the GPU (llama.cpp's -ngl: the last
            ones; the rest, the embedding and the LM head stay on the CPU unless all layers
            fit, and a split model computes in bfloat16); default as many as free GPU memory
            holds. See corral.placement.
        cuda_graphs: replay one-token decode steps and prompt chunks from CUDA graphs when
            the whole model is on one GPU (corral.model.graphs, corral.model.prefill_graphs).
        cache_type_k, cache_type_v: how the KV cache stores keys and values (llama.cpp's
            -ctk/-ctv): "f32", "f16", "bf16" or "q8_0" (8.5 bits per value); default the
            compute dtype. See corral.model.kv_cache.

        `metadata` holds the checkpoint's metadata with GGUF key names (an HF folder's chat
        template as ``tokenizer.chat_template``); `generation_defaults` the sampling defaults
        of an HF folder's generation_config.json, with HF names (empty for GGUF).
        """
        self.path = resolve_path(path) if path is not None else default_model_path()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        with open_checkpoint(self.path) as checkpoint:
            self.tokenizer = checkpoint.tokenizer()
            self.metadata: dict[str, Any] = checkpoint.metadata
            self.generation_defaults: dict[str, Any] = checkpoint.generation_defaults
            config = checkpoint.config
            self.n_ctx = n_ctx or min(config.context_length, DEFAULT_CONTEXT)
            packed = checkpoint.packed_weights()
            self.dtype = dtype or choose_dtype(config, self.n_ctx, self.device, packed)
            self.chat_format, self.chat_format_reason = self._resolve_chat(chat_template)
            loaded = build_model(
                checkpoint,
                self.device,
                self.dtype,
                self.n_ctx,
                gpu_layers,
                (cache_type_k, cache_type_v),
            )
        self.model = loaded.model
        self.placement = loaded.placement
        self.dtype = self.model.tok_embeddings.weight.dtype
        if cuda_graphs and self.device.type == "cuda" and self.placement.single_device:
            self.model.use_cuda_graphs()
        self.config: ModelConfig = loaded.config

    def _resolve_chat(self, choice: str | None) -> tuple[ChatFormat | None, str]:
        """The chat format and why; with no explicit choice, an unknown format is not fatal."""
        try:
            return resolve_chat_format(choice, self.metadata, self.tokenizer)
        except ChatError as error:
            if choice is not None:
                raise
            return None, str(error)

    # -- tokens -------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False):
        """Token ids of `text` (BOS added as the model's metadata asks)."""
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: list[int]) -> str:
        """Text of token ids."""
        return self.tokenizer.decode(ids)

    def generate_tokens(
        self,
        prompt_ids: list[int],
        max_tokens: int = 128,
        *,
        stop_ids: Collection[int] | None = None,
        on_logprobs: Callable[[TokenLogprobs], None] | None = None,
        grammar: str | None = None,
        json_schema: str | Mapping[str, Any] | None = None,
        regex: str | None = None,
        json_mode: bool = False,
        **sampling,
    ) -> Iterator[int]:
        """Stream new token ids after `prompt_ids`, stopping at a token in `stop_ids`
        (default: the tokenizer's end-of-generation tokens), which is not yielded.

        Sampling keywords: the fields of SamplingParams, with the HF / OpenAI /
        llama-cpp-python spellings too (see corral.sampling.params.params_from_kwargs):
        `max_new_tokens` replaces `max_tokens`, `do_sample=False` means greedy,
        `logit_bias` may have string keys. Bad values raise SamplingParamsError naming
        the parameter, at the call, before any generation. With logprobs/top_logprobs,
        `on_logprobs` receives each token's TokenLogprobs.

        Constrained output (at most one): `grammar` (llama.cpp GBNF, rule `root`),
        `json_schema` (dict or JSON text), `regex`, or `json_mode` (any JSON object). An
        invalid one raises ConstraintError at the call.
        """
        params, max_tokens = self._check_request(prompt_ids, max_tokens, sampling)
        constraint = build_constraint(
            self.tokenizer,
            grammar=grammar,
            json_schema=dict(json_schema) if isinstance(json_schema, Mapping) else json_schema,
            regex=regex,
            json_mode=json_mode,
        )
        stops = self.tokenizer.eog_ids if stop_ids is None else frozenset(stop_ids)
        eos = stops | self.tokenizer.eog_ids
        return generate_ids(
            self.model,
            prompt_ids,
            max_tokens,
            params,
            stops.__contains__,
            eos_ids=eos,
            constraint=constraint,
            on_logprobs=on_logprobs,
        )

    def generate_n_tokens(
        self,
        prompt_ids: list[int],
        n: int,
        max_tokens: int = 128,
        *,
        stop_ids: Collection[int] | None = None,
        **sampling,
    ) -> list[list[int]]:
        """`n` completions (token ids) of `prompt_ids` from one shared prefill, decoded as one
        batch; completion i samples with seed + i. Keywords as for :meth:`generate_tokens`,
        without constrained output."""
        params, max_tokens = self._check_request(prompt_ids, max_tokens, sampling)
        stops = self.tokenizer.eog_ids if stop_ids is None else frozenset(stop_ids)
        eos = stops | self.tokenizer.eog_ids
        return generate_n_ids(
            self.model, prompt_ids, n, max_tokens, params, stops.__contains__, eos_ids=eos
        )

    def _check_request(
        self, prompt_ids: Sequence[int], max_tokens: int, sampling: dict[str, Any]
    ) -> tuple[SamplingParams, int]:
        """Validate a request before any model work: token ids, sampling keywords (HF /
        OpenAI spellings mapped), max_tokens and logit_bias ids. Returns the params and the
        effective max_tokens (a `max_new_tokens` / `max_tokens` keyword wins over the
        positional default)."""
        for token in prompt_ids:
            if not 0 <= token < self.config.n_vocab:
                raise ValueError(f"token id {token} is out of range [0, {self.config.n_vocab})")
        if not {"max_tokens", "max_new_tokens", "n_predict"} & sampling.keys():
            sampling = {**sampling, "max_tokens": max_tokens}
        params = params_from_kwargs(**sampling)
        check_logit_bias(params, self.config.n_vocab)
        return params, params.max_tokens

    # -- text ---------------------------------------------------------------------------

    def stream(
        self,
        prompt: str,
        max_tokens: int = 128,
        *,
        parse_special: bool = False,
        stop: str | Sequence[str | int] = (),
        **sampling,
    ) -> Iterator[str]:
        """Stream the continuation of `prompt` as text pieces (never a broken UTF-8 character).

        `stop`: strings that end the text when generated (not included, never partly
        emitted) and token ids that end it (besides the end-of-generation tokens).
        Sampling keywords: see :meth:`generate_tokens` and SamplingParams.
        """
        texts, ids = self._split_stops(stop)
        prompt_ids = self.tokenize(prompt, parse_special=parse_special)
        stop_ids = self.tokenizer.eog_ids | ids
        tokens = self.generate_tokens(prompt_ids, max_tokens, stop_ids=stop_ids, **sampling)
        return self._text_pieces(tokens, StopMatcher(texts))

    def generate(self, prompt: str, max_tokens: int = 128, **kwargs) -> str:
        """The continuation of `prompt` as one string (keywords as for :meth:`stream`)."""
        return "".join(self.stream(prompt, max_tokens, **kwargs))

    def generate_n(
        self,
        prompt: str,
        n: int,
        max_tokens: int = 128,
        *,
        parse_special: bool = False,
        stop: str | Sequence[str | int] = (),
        **sampling,
    ) -> list[str]:
        """`n` continuations of `prompt` sharing one prefill (see :meth:`generate_n_tokens`)."""
        texts, ids = self._split_stops(stop)
        prompt_ids = self.tokenize(prompt, parse_special=parse_special)
        stop_ids = self.tokenizer.eog_ids | ids
        completions = self.generate_n_tokens(
            prompt_ids, n, max_tokens, stop_ids=stop_ids, **sampling
        )
        return ["".join(self._text_pieces(c, StopMatcher(texts))) for c in completions]

    def _text_pieces(self, tokens: Iterable[int], matcher: StopMatcher) -> Iterator[str]:
        """Detokenize `tokens` as they come, ending at the first stop string of `matcher`."""
        # no llama.cpp space clean-up on generated text: it would damage code (" ?" -> "?")
        detokenizer = StreamingDetokenizer(self.tokenizer, clean_spaces=False)
        for token in tokens:
            text, stopped = matcher.feed(detokenizer.push(token))
            if text:
                yield text
            if stopped:
                return
        text, stopped = matcher.feed(detokenizer.flush())
        tail = text if stopped else text + matcher.flush()
        if tail:
            yield tail

    # -- chat ---------------------------------------------------------------------------

    def chat_prompt(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True
    ) -> RenderedPrompt:
        """The prompt the model sees for `messages` (dicts with "role" and "content"), with
        the format's default system message when there is no system message; ending with
        the start of the assistant's reply unless `add_generation_prompt` is false."""
        fmt = self._require_chat_format()
        tokenizer = self.tokenizer
        return render(
            fmt,
            parse_messages(messages),
            bos_token=_token_text(tokenizer, tokenizer.bos_id),
            eos_token=_token_text(tokenizer, tokenizer.eos_id),
            add_generation_prompt=add_generation_prompt,
        )

    def chat_prompt_ids(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Token ids of :meth:`chat_prompt` (special tokens only where the format put them)."""
        return self.tokenizer.encode_parts(self.chat_prompt(messages).parts)

    def chat_stream(
        self,
        messages: Sequence[Mapping[str, Any]],
        max_tokens: int = DEFAULT_CHAT_TOKENS,
        *,
        stop: str | Sequence[str | int] = (),
        **sampling,
    ) -> Iterator[str]:
        """Stream the assistant's reply to `messages` as text pieces.

        The reply ends at the format's stop tokens and stop strings, at `stop` strings, or
        after `max_tokens`. Sampling keywords as for :meth:`stream`. Malformed messages
        raise ChatError at once, not when iterating.
        """
        fmt = self._require_chat_format()
        texts, ids = self._split_stops(stop)
        matcher = StopMatcher((*fmt.stop_strings, *texts))
        stop_ids = stop_token_ids(self.tokenizer, fmt.stop_tokens) | ids
        prompt_ids = self.chat_prompt_ids(messages)
        tokens = self.generate_tokens(prompt_ids, max_tokens, stop_ids=stop_ids, **sampling)
        return self._text_pieces(tokens, matcher)

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        max_tokens: int = DEFAULT_CHAT_TOKENS,
        **kwargs,
    ) -> str:
        """The assistant's reply to `messages` as one string (see :meth:`chat_stream`)."""
        return "".join(self.chat_stream(messages, max_tokens, **kwargs))

    def _split_stops(
        self, stop: str | Sequence[str | int]
    ) -> tuple[tuple[str, ...], frozenset[int]]:
        """`stop` as (stop strings, stop token ids); one string is one stop, not one per
        character. Ids outside the vocabulary are refused."""
        items = (stop,) if isinstance(stop, str) else tuple(stop)
        ids = frozenset(i for i in items if isinstance(i, int) and not isinstance(i, bool))
        for token in ids:
            if not 0 <= token < self.config.n_vocab:
                raise ValueError(
                    f"stop token id {token} is out of range [0, {self.config.n_vocab})"
                )
        return tuple(i for i in items if not isinstance(i, int) or isinstance(i, bool)), ids

    def _require_chat_format(self) -> ChatFormat:
        if self.chat_format is None:
            raise ChatError(self.chat_format_reason)
        return self.chat_format


def _token_text(tokenizer: Tokenizer, token_id: int | None) -> str:
    """The text of a special token for templates ("" when the model has none)."""
    return "" if token_id is None else tokenizer.token_text(token_id)


def load(path: str | Path | None = None, **kwargs) -> LLM:
    """Load a model: `corral.load("model.gguf")`, or the embedded default with no path."""
    return LLM(path, **kwargs)
