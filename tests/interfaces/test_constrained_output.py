"""Constrained output as users ask for it: API keywords and llama.cpp's CLI flags."""

import json
import re
import subprocess
import sys

import jsonschema
import pytest

import corral
from corral.sampling.constraint import ConstraintError

CORRAL = [sys.executable, "-m", "corral.interfaces.cli"]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def corral_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CORRAL, *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def llm():
    return corral.load(n_ctx=256, device="cpu")


def test_api_regex_and_schema(llm):
    phone = llm.generate(
        "Call me at", max_tokens=20, temperature=1.0, seed=2, regex=r" \d{3}-\d{4}"
    )
    assert re.fullmatch(r" \d{3}-\d{4}", phone)
    reply = llm.chat(
        [{"role": "user", "content": "Describe a person as JSON."}],
        max_tokens=60,
        temperature=1.0,
        seed=4,
        json_schema=PERSON,
    )
    jsonschema.validate(json.loads(reply), PERSON)


def test_api_refuses_a_bad_grammar_before_generating(llm):
    with pytest.raises(ConstraintError, match="grammar"):
        llm.generate("x", grammar="root ::= missing")


def test_cli_json_schema_and_grammar_flags(tmp_path):
    prompt = "Give me a person as JSON:"
    result = corral_cli("run", "-p", prompt, "-n", "60", "--seed", "5", "-j", json.dumps(PERSON))
    assert result.returncode == 0, result.stderr
    jsonschema.validate(json.loads(result.stdout.removeprefix(prompt)), PERSON)

    grammar = tmp_path / "answer.gbnf"
    grammar.write_text('root ::= " " ("yes" | "no") "."\n')
    prompt = "Is the sky green? Answer:"
    result = corral_cli("run", "-p", prompt, "-n", "8", "--grammar-file", str(grammar))
    assert result.returncode == 0, result.stderr
    assert result.stdout.removeprefix(prompt).strip() in ("yes.", "no.")


def test_cli_constraint_errors_are_clear(tmp_path):
    result = corral_cli("run", "-p", "x", "--grammar", "root ::= foo")
    assert result.returncode == 1 and "Rule 'foo' not found" in result.stderr
    result = corral_cli("run", "-p", "x", "--json-schema-file", str(tmp_path / "none.json"))
    assert result.returncode == 1 and "--json-schema-file" in result.stderr
    assert "Traceback" not in result.stderr
    result = corral_cli("run", "-p", "x", "--regex", "a", "--json")
    assert result.returncode == 2  # argparse: not allowed together
