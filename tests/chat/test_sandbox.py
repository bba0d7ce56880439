"""The template sandbox: escapes, endless loops and huge values are refused with TemplateError,
quickly, and the process goes on rendering; the features HF templates use work as in HF."""

from __future__ import annotations

import time

import pytest
from chat_refs import hf_render

from corral.chat import BUILTIN_FORMATS, ChatFormat, Message, TemplateError, render
from corral.chat.budget import MAX_SECONDS
from corral.chat.sandbox import MAX_TEMPLATE_CHARS

MESSAGES = [Message("user", "Hi")]
NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def run(template: str) -> str:
    """Render `template` over a one-message conversation."""
    fmt = ChatFormat("file", template, (), (), None)
    return render(fmt, MESSAGES, bos_token="<s>", eos_token="</s>").text


def refused(template: str, match: str) -> TemplateError:
    """Assert that rendering `template` raises TemplateError matching `match`."""
    with pytest.raises(TemplateError, match=match) as info:
        run(template)
    return info.value


def test_it_still_works_after_all_that() -> None:
    refused(NESTED_LOOPS, "longer than")
    refused("{{ 'x' * 10**9 }}", "would build")
    expected = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert run(BUILTIN_FORMATS["chatml"].template) == expected


ESCAPES = [
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__ }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ joiner.__init__.__globals__['os'] }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ raise_exception.__globals__ }}",
    "{{ strftime_now.__globals__['datetime'] }}",
    "{{ dict.__class__ }}",
    "{{ (1).__class__.__bases__ }}",
    "{{ '{0.__class__}'.format(1) }}",
    "{{ '{a.__class__.__mro__}'.format_map({'a': 1}) }}",
    "{{ self.__init__.__globals__ }}",
    "{{ messages[0]['content'].__class__ }}",
    "{% set ns = namespace() %}{% set ns._secret = 1 %}",
    "{{ namespace(__class__=1) }}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_escapes_are_refused(template: str) -> None:
    refused(template, "sandbox|unsafe|underscore")


def test_mutating_builtins_is_refused() -> None:
    refused("{% set l = [1] %}{{ l.append(2) }}", "sandbox|unsafe")
    refused("{{ messages.pop() }}", "sandbox|unsafe")


def test_lipsum_and_includes_are_unavailable() -> None:
    refused("{{ lipsum(10**6) }}", "lipsum")
    refused("{% include 'other' %}", "failed")
    refused("{% extends 'other' %}", "failed")


def test_endless_loop_stops_at_the_time_budget() -> None:
    start = time.monotonic()
    error = refused(NESTED_LOOPS, f"took longer than {MAX_SECONDS:g} s")
    assert time.monotonic() - start < 10 * MAX_SECONDS, "the time budget was not enforced"
    assert str(error).startswith("chat template stopped:")


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(10**9) %}{% endfor %}",
        "{% for i in range(100000) recursive %}{{ loop(range(100000)) }}{% endfor %}",
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{% set x = messages|map(attribute='content')|list %}"
        "{% for j in range(100000) %}{% set y = x|length %}{% endfor %}{% endfor %}",
    ],
    ids=["huge-range", "recursive-loop", "recursive-macro", "output-loop", "filter-loop"],
)
def test_loops_and_recursion_stop(template: str) -> None:
    start = time.monotonic()
    refused(template, "longer than|Range too big|recursion")
    assert time.monotonic() - start < 10 * MAX_SECONDS


def test_huge_output_is_refused() -> None:
    refused("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "output passed")
    refused("{% for i in range(100000) %}0123456789abcdef{% endfor %}", "output passed")


AMPLIFIERS = {
    "str-times": "{{ 'x' * 10**9 }}",
    "list-times": "{{ [0] * 10**9 }}",
    "int-pow": "{{ 10 ** 100000000 }}",
    "int-times": "{% set n = 10 ** 300000 %}{{ n * n * n * n * n * n * n * n }}",
    "center-filter": "{{ 'x'|center(1000000000) }}",
    "center-method": "{{ 'x'.center(1000000000) }}",
    "ljust": "{{ 'x'.ljust(10**9) }}",
    "zfill": "{{ '1'.zfill(10**9) }}",
    "expandtabs": "{{ ('\t' * 1000).expandtabs(10**6) }}",
    "percent": "{{ '%999999999d' % 1 }}",
    "percent-star": "{{ '%*d' % (999999999, 1) }}",
    "percent-copies": "{% set s = 'x' * 100000 %}{{ ('%(a)s' * 100) % {'a': s} }}",
    "format-filter": "{{ '%999999999s'|format('x') }}",
    "str-format": "{{ '{:>999999999}'.format(1) }}",
    "str-format-nested": "{{ '{:>{w}}'.format(1, w=999999999) }}",
    "str-format-copies": "{% set s = 'x' * 100000 %}{{ ('{0}' * 100).format(s) }}",
    "replace": "{% set s = 'x' * 100000 %}{{ s.replace('', s) }}",
    "replace-filter": "{% set s = 'x' * 100000 %}{{ s|replace('x', s) }}",
    "join": "{% set s = 'x' * 100000 %}{{ (range(10000)|map('string')|list)|join(s) }}",
    "join-method": "{% set s = 'x' * 100000 %}{{ s.join(range(10000)|map('string')) }}",
    "concat-doubling": "{% set a = 'xxxxxxxx' %}" + "{% set a = a ~ a %}" * 40,
    "plus-doubling": "{% set a = 'xxxxxxxx' %}" + "{% set a = a + a %}" * 40,
    "list-doubling": "{% set a = ['xxxxxxxx'] %}" + "{% set a = [a, a] %}" * 40 + "{{ a }}",
    "dict-doubling": "{% set a = {'k': 'v'} %}" + "{% set a = {'x': a, 'y': a} %}" * 40,
    "namespace-doubling": "{% set ns = namespace(s='xx') %}{% for i in range(60) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "namespace-after-list": "{% set ns = namespace(a='') %}{% set l = [ns] * 10000 %}"
    "{% set ns.a = 'x' * 100000 %}{{ l }}",
    "macro-doubling": "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('x') }}",
    "macro-buffer": "{% set big = 'x' * 100000 %}{% macro m() %}{% for i in range(100000) %}"
    "{{ big }}{% endfor %}{% endmacro %}{{ m()|length }}",
    "set-block": "{% set big = 'x' * 100000 %}{% set b %}{% for i in range(100000) %}{{ big }}"
    "{% endfor %}{% endset %}{{ b|length }}",
    "to-bytes": "{{ (1).to_bytes(1000000000, 'big') }}",
    "slice": "{{ [1]|slice(1000000000)|list }}",
    "batch": "{{ [1]|batch(1000000000, 0)|list }}",
    "wordwrap": "{{ ('x' * 100000)|wordwrap(1, wrapstring='y' * 1000) }}",
    "indent": "{{ ('\n' * 100000)|indent(1000) }}",
    "tojson-indent": "{{ (range(1000)|list)|tojson(indent=100000) }}",
    "sum-lists": "{{ ([[1] * 10] * 1000)|sum(start=[]) }}",
    "dict-views": "{% set d = {'a': 'x' * 1000} %}{{ [d.items()] * 10000 }}",
    "translate": "{{ ('x' * 100000).translate({120: 'y' * 100000}) }}",
}


@pytest.mark.parametrize("template", AMPLIFIERS.values(), ids=AMPLIFIERS.keys())
def test_huge_values_are_refused_before_they_are_built(template: str) -> None:
    start = time.monotonic()
    refused(template, "would build|was built|output passed|longer than")
    assert time.monotonic() - start < 10 * MAX_SECONDS


def test_raise_exception_gives_its_message() -> None:
    error = refused("{{ raise_exception('Roles must alternate') }}", "Roles must alternate")
    assert str(error) == "chat template: Roles must alternate"


def test_syntax_errors_and_size() -> None:
    refused("{% for %}", "syntax error on line 1")
    refused("{{ 'x' }}" + " " * MAX_TEMPLATE_CHARS, "characters long")
    refused("{{ 1 / 0 }}", "ZeroDivisionError")


FEATURES = {
    "tojson": "{{ messages|tojson }}|{{ {'é': [1, 2]}|tojson(indent=2) }}"
    "|{{ {'b': 1, 'a': 2}|tojson(sort_keys=True) }}",
    "loop-controls": "{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}"
    "{{ m.role }}{% break %}{% endfor %}",
    "namespace": "{% set ns = namespace(n=0) %}{% for m in messages %}"
    "{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
    "dict": "{{ dict(a=1, b=[2]) }}{{ dict.fromkeys(['x'], 0) }}",
    "variables": "{{ tools is none }}{{ documents is none }}{{ foo is defined }}[{{ foo }}]"
    "{{ bos_token }}{{ eos_token }}",
    "whitespace": "{%- for m in messages %}\n  {{ m.content | trim }}\n{% endfor %}\n"
    "{% if add_generation_prompt %}GO{% endif %}",
    "operators": "{{ '%s/%d' % ('a', 3) }}{{ '{:>4}|{}'.format('x', 2) }}{{ 'ab' * 3 }}"
    "{{ 2 ** 10 }}{{ [1] + [2] }}",
    "strings": "{% set x = 'a' ~ 1 ~ [2] %}{{ x }}{{ messages[-1]['content'][::-1] }}"
    "{{ 'a,b'.split(',') }}",
}


@pytest.mark.parametrize("template", FEATURES.values(), ids=FEATURES.keys())
def test_hf_template_features_render_as_in_hf(template: str) -> None:
    dialog = [
        {"role": "system", "content": "Sé"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Yo"},
        {"role": "user", "content": "Bye"},
    ]
    fmt = ChatFormat("file", template, (), (), None)
    messages = [Message(m["role"], m["content"]) for m in dialog]
    ours = render(fmt, messages, bos_token="<s>", eos_token="</s>").text
    theirs = hf_render(
        template, dialog, bos_token="<s>", eos_token="</s>", add_generation_prompt=True
    )
    assert ours == theirs


def test_strftime_now() -> None:
    assert run("{{ strftime_now('%Y') }}") == time.strftime("%Y")
