"""Constrained output through llguidance: every sampled output is valid, with the embedded
byte-level BPE model (SmolLM2) and the tiny SentencePiece fixture model.

The sampling loop here is our own (masked argmax or seeded multinomial), independent of
corral's sampler, and runs many completions of one prompt as one batch.
"""

import ast
import json
import re
from pathlib import Path

import jsonschema
import pytest
import torch

import corral
from corral.sampling.constraint import ConstraintError, build_constraint
from corral.sampling.grammar_tokenizer import grammar_tokenizer

TINY_SPM = Path(__file__).parents[1] / "fixtures" / "models" / "tiny-llama-Q4_0.gguf"

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "enum": ["Paris", "London", "Tokyo", "New York"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}

ARITHMETIC_GBNF = r"""
root   ::= expr "="
expr   ::= term (("+" | "-") term)*
term   ::= factor (("*" | "/") factor)*
factor ::= number | "(" expr ")"
number ::= [0-9]+
"""


@pytest.fixture(scope="module")
def llm():
    return corral.load(n_ctx=512, device="cpu")


@pytest.fixture(scope="module")
def tiny():
    return corral.load(TINY_SPM, n_ctx=128, device="cpu")


def constrained_batch(llm, prompt, n, *, temperature, seed=0, max_tokens=60, **spec):
    """`n` completions of `prompt` under the constraint `spec`, decoded as one batch.

    Returns (text, finished) per completion; finished means the grammar ended (end token
    sampled, or nothing else allowed).
    """
    model, tokenizer = llm.model, llm.tokenizer
    constraints = [build_constraint(tokenizer, **spec) for _ in range(n)]
    prompt_ids = llm.tokenize(prompt)
    n_positions = model.n_positions
    generator = torch.Generator().manual_seed(seed)
    outputs: list[list[int]] = [[] for _ in range(n)]
    finished = [False] * n
    filler = tokenizer.eos_id
    model.setup_cache(batch=n, n_positions=n_positions)
    try:
        ids = torch.tensor([prompt_ids] * n)  # (n, T)
        logits = model(ids, 0, last_only=True)[:, -1]  # (n, V)
        position = len(prompt_ids)
        for _ in range(max_tokens):
            step = []
            for row, constraint in enumerate(constraints):
                if finished[row]:
                    step.append(filler)
                    continue
                mask = torch.zeros(logits.shape[-1], dtype=torch.bool)  # (V,)
                allowed = constraint.allowed()
                mask[: allowed.shape[0]] = allowed
                assert mask.any(), "the constraint allows no token"
                row_logits = logits[row].masked_fill(~mask, float("-inf"))
                if temperature == 0:
                    token = int(row_logits.argmax())
                else:
                    probs = torch.softmax(row_logits / temperature, dim=-1)
                    token = int(torch.multinomial(probs, 1, generator=generator))
                assert mask[token]
                if tokenizer.is_eog(token):
                    finished[row] = True
                else:
                    constraint.accept(token)
                    outputs[row].append(token)
                    finished[row] = constraint.is_done()
                step.append(token)
            if all(finished):
                break
            logits = model(torch.tensor(step)[:, None], position)[:, -1]  # (n, V)
            position += 1
    finally:
        model.setup_cache(batch=1, n_positions=n_positions)
    texts = [b"".join(tokenizer.token_bytes(t) for t in out).decode() for out in outputs]
    return list(zip(texts, finished, strict=True))


# -- the embedded model (byte-level BPE) ----------------------------------------------


def test_fifty_json_schema_completions_validate(llm):
    results = constrained_batch(
        llm, "Give me a person as JSON:", 50, temperature=1.0, max_tokens=100,
        json_schema=PERSON_SCHEMA,
    )  # fmt: skip
    for text, finished in results:
        assert finished, text
        jsonschema.validate(json.loads(text), PERSON_SCHEMA)
    assert len({text for text, _ in results}) > 10  # really sampled, not one answer 50 times


def test_json_schema_as_text(llm):
    [(text, finished)] = constrained_batch(
        llm, "A person:", 1, temperature=0, json_schema=json.dumps(PERSON_SCHEMA)
    )
    assert finished
    jsonschema.validate(json.loads(text), PERSON_SCHEMA)


def test_gbnf_yes_no(llm):
    grammar = 'root ::= ("yes" | "no") "."'
    results = constrained_batch(
        llm, "Is the sky blue? Answer:", 8, temperature=1.0, max_tokens=10, grammar=grammar
    )
    for text, finished in results:
        assert finished
        assert re.fullmatch(r"(yes|no)\.", text), text


def is_arithmetic(text: str) -> bool:
    """Whether `text` is an expression of integers, + - * / and parentheses, then "="."""
    if not re.fullmatch(r"[0-9+\-*/()]+=", text):
        return False
    try:
        tree = ast.parse(text[:-1], mode="eval")
    except SyntaxError:
        return False
    allowed = (ast.Expression, ast.BinOp, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.Div)
    return all(isinstance(node, allowed) for node in ast.walk(tree))


def test_gbnf_arithmetic(llm):
    results = constrained_batch(
        llm, "2+2=4\n3*(4+5)=27\n", 8, temperature=0.7, seed=1, max_tokens=30,
        grammar=ARITHMETIC_GBNF,
    )  # fmt: skip
    assert all(finished for _, finished in results), results
    for text, _ in results:
        assert is_arithmetic(text), text


def test_regex(llm):
    results = constrained_batch(
        llm, "Call me at", 8, temperature=1.0, max_tokens=12, regex=r"\d{3}-\d{4}"
    )
    for text, finished in results:
        assert finished
        assert re.fullmatch(r"\d{3}-\d{4}", text), text


def test_json_mode(llm):
    prompt = 'A JSON object with a name and an age: {"name": "Bob", "age": 30}\nAnother one:'
    [(text, finished)] = constrained_batch(llm, prompt, 1, temperature=0, json_mode=True)
    assert finished, text
    assert isinstance(json.loads(text), dict)


# -- the tiny SentencePiece model (random weights: only the constraint makes sense) ----


def test_spm_regex(tiny):
    pattern = r"(the|a) (cat|dog)"
    results = constrained_batch(
        tiny, "Once upon", 20, temperature=1.0, max_tokens=12, regex=pattern
    )
    for text, finished in results:
        assert finished
        assert re.fullmatch(pattern, text), text
    assert len({text for text, _ in results}) > 1


def test_spm_json_schema(tiny):
    results = constrained_batch(
        tiny, "Hello", 10, temperature=1.0, max_tokens=100, json_schema=PERSON_SCHEMA
    )
    for text, finished in results:
        assert finished, text
        jsonschema.validate(json.loads(text), PERSON_SCHEMA)


# -- the Constraint protocol ------------------------------------------------------------


def tokens_of(tokenizer, piece: bytes) -> list[int]:
    return [i for i in range(tokenizer.vocab_size) if tokenizer.token_bytes(i) == piece]


def test_end_token_only_where_the_grammar_may_end(llm):
    tokenizer = llm.tokenizer
    constraint = build_constraint(tokenizer, grammar='root ::= "yes" "."?')
    allowed = constraint.allowed()
    assert allowed.dtype == torch.bool and allowed.shape == (tokenizer.vocab_size,)
    assert not allowed[sorted(tokenizer.eog_ids)].any()
    assert not constraint.is_done()
    with pytest.raises(ConstraintError, match="not allowed"):
        constraint.accept(tokenizer.eos_id)
    [yes] = tokens_of(tokenizer, b"yes")
    constraint.accept(yes)
    allowed = constraint.allowed()
    assert allowed[sorted(tokenizer.eog_ids)].all()  # "yes" is complete, "." optional
    assert not constraint.is_done()
    constraint.accept(tokens_of(tokenizer, b".")[0])
    assert constraint.is_done()
    assert set(constraint.allowed().nonzero().flatten().tolist()) == set(tokenizer.eog_ids)
    constraint.accept(tokenizer.eos_id)


def test_rejected_token_leaves_the_state_unchanged(llm):
    tokenizer = llm.tokenizer
    constraint = build_constraint(tokenizer, regex=r"\d{3}-\d{4}")
    [letter] = tokens_of(tokenizer, b"a")
    with pytest.raises(ConstraintError, match=r"token \d+ \(b'a'\) is not allowed"):
        constraint.accept(letter)
    for piece in (b"5", b"5", b"5", b"-", b"1", b"2", b"3", b"4"):
        constraint.accept(tokens_of(tokenizer, piece)[0])
    assert constraint.is_done()


def test_control_tokens_never_allowed_as_text(llm):
    tokenizer = llm.tokenizer
    constraint = build_constraint(tokenizer, json_mode=True)
    im_start = tokenizer.token_id("<|im_start|>")
    assert not constraint.allowed()[im_start]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"grammar": "root ::= foo"}, "invalid grammar: Rule 'foo' not found"),
        ({"grammar": 'root ::= "a'}, "invalid grammar: Unexpected end of input"),
        ({"grammar": 'start ::= "a"'}, "invalid grammar: No 'root' rule"),
        ({"regex": "a(b"}, "(?s)invalid regex: .*unclosed group"),
        ({"json_schema": {"type": "objectx"}}, "invalid json_schema: Invalid type: objectx"),
        ({"json_schema": "{"}, "invalid json_schema: not JSON"),
        ({"json_schema": "[1, 2]"}, "invalid json_schema: expected an object"),
        ({"json_schema": {"type": "string", "format": "nope"}}, "Unknown format: nope"),
        ({"regex": "a", "json_mode": True}, "only one of"),
        ({"regex": 5}, "regex must be a string"),
    ],
)
def test_invalid_specification_is_refused_at_build_time(llm, spec, message):
    with pytest.raises(ConstraintError, match=message):
        build_constraint(llm.tokenizer, **spec)


def test_no_constraint_gives_none(llm):
    assert build_constraint(llm.tokenizer) is None
    assert build_constraint(llm.tokenizer, json_mode=False) is None


def test_grammar_tokenizer_is_built_once_per_tokenizer(llm, tiny):
    assert grammar_tokenizer(llm.tokenizer) is grammar_tokenizer(llm.tokenizer)
    assert grammar_tokenizer(tiny.tokenizer) is not grammar_tokenizer(llm.tokenizer)
    assert grammar_tokenizer(tiny.tokenizer).vocab_size == tiny.tokenizer.vocab_size


@pytest.mark.parametrize(
    ("model", "spec"),
    [
        ("tiny", {"regex": r"(the|a) (cat|dog)"}),
        ("tiny", {"json_schema": PERSON_SCHEMA}),
        ("llm", {"regex": r"(the|a) (cat|dog)"}),
        ("llm", {"grammar": ARITHMETIC_GBNF}),
    ],
)
def test_every_allowed_token_is_accepted(request, model, spec):
    """Along random walks, the mask never allows a token the grammar then rejects (this
    caught a non-canonical SentencePiece split given to llguidance)."""
    tokenizer = request.getfixturevalue(model).tokenizer
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        constraint = build_constraint(tokenizer, **spec)
        for _ in range(12):
            allowed = constraint.allowed().nonzero().flatten().tolist()
            text_tokens = [t for t in allowed if not tokenizer.is_eog(t)]
            if not text_tokens:
                break
            for token in text_tokens:  # validate without consuming
                assert constraint._matcher.validate_tokens([token]) == 1, token
            pick = int(torch.randint(len(text_tokens), (1,), generator=generator))
            constraint.accept(text_tokens[pick])
