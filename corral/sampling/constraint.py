"""Constrained output: JSON mode, JSON Schema, regular expressions and llama.cpp GBNF grammars.

A Constraint says which tokens may come next; the sampler masks every other token before
sampling, so the output matches at any temperature. The grammar engine is llguidance (an
Earley parser over a lexer of derivative-based regexes), driven by the bytes of our own
tokenizer's tokens (:mod:`corral.sampling.grammar_tokenizer`), so SentencePiece and
byte-level BPE vocabularies work alike.

    constraint = build_constraint(tokenizer, json_schema={"type": "object"})
    while not constraint.is_done():
        logits[~constraint.allowed()] = -inf      # (V,)
        token = sample(logits)
        if tokenizer.is_eog(token): break          # allowed only where the grammar may end
        constraint.accept(token)

What each kind means:
- ``grammar``: llama.cpp GBNF text, start rule ``root`` (converted to llguidance's Lark).
- ``json_schema``: JSON Schema (draft 2020-12 subset llguidance supports; unsupported
  keywords are refused, not ignored). Output is compact with ", " and ": " separators,
  like Python's ``json.dumps``: bounded whitespace keeps a sampled output from drifting.
- ``json_mode``: any JSON object (OpenAI's ``response_format: json_object``).
- ``regex``: the whole output matches (Rust ``regex`` syntax; ``\\d``, ``\\w`` are Unicode
  classes, as in Python's ``re`` on str).

Invalid input raises ConstraintError at build time, before any generation starts.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import llguidance
import numpy as np
import torch
from llguidance.gbnf_to_lark import gbnf_to_lark

from corral.errors import CorralError
from corral.sampling.grammar_tokenizer import end_tokens, grammar_tokenizer
from corral.sampling.sampler import Constraint
from corral.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

# bound on grammar / schema / regex text: they come from requests, so they are hostile input
MAX_SPEC_CHARS = 1 << 20
# JSON layout: no free whitespace (a sampled output could otherwise fill up with newlines)
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


class ConstraintError(CorralError, ValueError):
    """An invalid grammar, JSON schema or regex, or a token the constraint does not allow."""


class GrammarConstraint:
    """A Constraint backed by an llguidance matcher (one per generated sequence)."""

    def __init__(self, matcher: llguidance.LLMatcher, tokenizer: Tokenizer, kind: str) -> None:
        self._matcher = matcher
        self._tokenizer = tokenizer
        self.kind = kind
        self.vocab_size = tokenizer.vocab_size
        # llguidance writes one bit per token: token 32*w + b is bit b of word w
        self._bits = np.zeros((self.vocab_size + 31) // 32, dtype=np.int32)  # (ceil(V/32),)

    def allowed(self) -> torch.Tensor:
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        self._raise_if_error()
        # little-endian words: byte 4w+j bit k is token 32w+8j+k, unpackbits' "little" order
        flags = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self.vocab_size]
        return torch.from_numpy(flags).view(torch.bool)  # (V,)

    def accept(self, token: int) -> None:
        token = self._tokenizer.check_id(token)
        # validate_tokens() checks text tokens only; an end token is valid where the grammar
        # may end
        if self._tokenizer.is_eog(token):
            valid = self._matcher.is_accepting() and not self._matcher.is_error()
        else:
            valid = self._matcher.validate_tokens([token]) == 1
        if not valid:
            self._raise_if_error()
            piece = self._tokenizer.token_bytes(token, special=True)
            raise ConstraintError(
                f"token {token} ({piece!r}) is not allowed here by the {self.kind} constraint"
            )
        if not self._matcher.consume_token(token):
            self._raise_if_error()

    def is_done(self) -> bool:
        return self._matcher.is_stopped() and not self._matcher.is_error()

    def _raise_if_error(self) -> None:
        if self._matcher.is_error():
            raise ConstraintError(f"{self.kind} constraint failed: {self._matcher.get_error()}")


def build_constraint(
    tokenizer: Tokenizer,
    *,
    grammar: str | None = None,
    json_schema: str | dict | None = None,
    json_mode: bool = False,
    regex: str | None = None,
) -> Constraint | None:
    """The constraint for exactly one of `grammar` (GBNF), `json_schema`, `json_mode`,
    `regex`; None when none is given. ConstraintError naming the problem when the
    specification is invalid or several are given."""
    given = [
        name
        for name, value in (
            ("grammar", grammar),
            ("json_schema", json_schema),
            ("json_mode", json_mode or None),
            ("regex", regex),
        )
        if value is not None
    ]
    if not given:
        return None
    if len(given) > 1:
        raise ConstraintError(
            f"give only one of grammar, json_schema, json_mode, regex; got {given}"
        )
    if not end_tokens(tokenizer):
        raise ConstraintError(
            "constrained output needs an end-of-generation token; the model has none"
        )
    kind = given[0]
    if grammar is not None:
        spec = _gbnf_grammar(grammar)
    elif json_schema is not None:
        spec = _json_schema_grammar(json_schema)
    elif regex is not None:
        _check_text("regex", regex)
        spec = llguidance.LLMatcher.grammar_from_regex(regex)
    else:
        kind = "JSON mode"
        spec = _json_schema_grammar({"type": "object"})
    matcher = llguidance.LLMatcher(grammar_tokenizer(tokenizer), spec, log_level=0)
    if matcher.is_error():
        raise ConstraintError(f"invalid {kind}: {_first_lines(matcher.get_error())}")
    for warning in matcher.get_grammar_warnings():
        logger.warning("%s: %s", kind, warning)
    return GrammarConstraint(matcher, tokenizer, kind)


def _check_text(name: str, text: object) -> None:
    if not isinstance(text, str):
        raise ConstraintError(f"{name} must be a string, not {type(text).__name__}")
    if len(text) > MAX_SPEC_CHARS:
        raise ConstraintError(f"{name} is too long ({len(text)} > {MAX_SPEC_CHARS} characters)")


def _gbnf_grammar(text: str) -> str:
    """llguidance grammar of llama.cpp GBNF `text`."""
    _check_text("grammar", text)
    try:
        lark = gbnf_to_lark(text)
    except RecursionError:
        raise ConstraintError("invalid grammar: nested too deeply") from None
    except Exception as error:  # the converter raises plain Exception with a position
        raise ConstraintError(f"invalid grammar: {error}") from None
    return llguidance.LLMatcher.grammar_from_lark(lark)


def _json_schema_grammar(schema: str | dict) -> str:
    """llguidance grammar of a JSON schema given as text or as a dict."""
    if isinstance(schema, str):
        _check_text("json_schema", schema)
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as error:
            raise ConstraintError(f"invalid json_schema: not JSON ({error})") from None
    if not isinstance(schema, dict):
        raise ConstraintError(
            f"invalid json_schema: expected an object, got {type(schema).__name__}"
        )
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except (ValueError, TypeError) as error:
        raise ConstraintError(f"invalid json_schema: {error}") from None


def _first_lines(message: str, limit: int = 6) -> str:
    """The head of an llguidance error (its tail can dump the whole grammar)."""
    lines = message.strip().splitlines()
    return "\n".join(lines[:limit]) + ("\n..." if len(lines) > limit else "")
