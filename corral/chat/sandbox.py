"""Chat templates rendered in an immutable jinja2 sandbox with a time and size budget.

The environment is the one Hugging Face transformers renders chat templates with (so a model's
own template gives the same text here as ``apply_chat_template``): jinja2's
``ImmutableSandboxedEnvironment`` with ``trim_blocks``, ``lstrip_blocks`` and the loop
controls extension; ``raise_exception``, ``strftime_now``, a ``tojson`` filter that does not
escape HTML; a ``namespace`` that refuses underscore names and a ``dict`` that is not the
``dict`` type. ``lipsum`` is removed.

On top of that every render has a :class:`~corral.chat.budget.Budget`, enforced
cooperatively because a thread cannot be killed:

- the template's syntax tree is rewritten before compiling so that every ``for`` loop
  iterates through a filter that checks the clock per item, every ``~`` concatenation is
  measured before it is joined, and every list/tuple/dict literal is measured;
- binary ``* ** + %``, calls (macros included), filters, attribute and item lookups and
  ``namespace`` assignments tick the clock and measure what they build, with predictions
  for the operations that could build a huge value in one step (see guards.py);
- macro, ``set`` and ``filter`` block buffers are measured before they are joined, and the
  output is counted chunk by chunk.

Constant folding is turned off (``optimized=False`` and a finalize function that needs the
context), so nothing a template says is evaluated while it compiles.
"""

import contextvars
import functools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, pass_context
from jinja2.visitor import NodeTransformer

from corral.chat.budget import Budget, BudgetExceeded
from corral.chat.errors import TemplateError
from corral.chat.guards import FILTER_CHECKS, check_binop, check_format, check_method

MAX_TEMPLATE_CHARS = 256 << 10

_ITER = "corral_guard_iter"
_CONCAT = "corral_guard_concat"
_VALUE = "corral_guard_value"

_budget: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "corral_chat_budget", default=None
)


def _active() -> Budget:
    """The budget of the render in progress (raises outside a render, e.g. while compiling)."""
    budget = _budget.get()
    if budget is None:
        raise RuntimeError("template code ran outside a budgeted render")
    return budget


# -- globals and filters the templates see ---------------------------------------------------


class _RaisedByTemplate(jinja2.exceptions.TemplateError):
    """The template called ``raise_exception``."""


def _raise_exception(message: str) -> None:
    """``raise_exception(msg)`` of HF templates."""
    raise _RaisedByTemplate(message)


def _strftime_now(fmt: str) -> str:
    """``strftime_now(fmt)`` of HF templates: the local time now."""
    return datetime.now().strftime(fmt)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """HF's ``tojson``: plain ``json.dumps`` (jinja's own escapes HTML characters)."""
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _TemplateDict:
    """``dict(...)`` without exposing the ``dict`` type itself (as HF does)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _GuardedNamespace(Namespace):
    """``namespace(...)`` refusing underscore names (as HF does) and oversized values."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: B902 (jinja's signature trick)
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name, value in attrs.items():
            _GuardedNamespace._check(name, value)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _GuardedNamespace._check(name, value)
        Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object, value: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"a namespace cannot hold the underscore-prefixed attribute {name!r}"
            )
        _active().check(value)


def _guard_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    """The iterable of a ``for`` loop, checking the clock before each item."""
    budget = _active()
    for item in iterable:
        budget.tick()
        yield item


def _guard_concat(operands: list[Any]) -> str:
    """``a ~ b ~ ...``: measured before joining."""
    budget = _active()
    budget.refuse_over(sum(budget.size(x) for x in operands), "'~'")
    return budget.charge("".join(map(str, operands)))  # type: ignore[return-value]


def _guard_value(value: Any) -> Any:
    """A list/tuple/dict literal, measured."""
    return _active().check(value)


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` with the clock checked, the result measured and, for some filters, a prediction
    of the result's size made first (guards.FILTER_CHECKS)."""
    check = FILTER_CHECKS.get(name)
    leading = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0  # context/env arg

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _active()
        budget.tick()
        if check is not None:
            rest, kwargs = check(budget, args[leading:], kwargs)
            args = (*args[:leading], *rest)
        return budget.charge(func(*args, **kwargs))

    return guarded


@pass_context
def _finalize(context: jinja2.runtime.Context, value: Any) -> Any:
    """Every ``{{ value }}`` is measured before it becomes text."""
    return _active().check(value)


# -- the environment ----------------------------------------------------------------------------


class _BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment whose hooks consult the active render's Budget."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _active()
        budget.tick()
        check_binop(budget, operator, left, right)
        return budget.charge(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = _active()
        budget.tick()
        for value in (*args, *kwargs.values()):
            budget.check(value)
        args, kwargs = check_method(budget, __obj, args, kwargs)
        return budget.charge(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        _active().tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _active().tick()
        return super().getitem(obj, argument)

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        """Refuse at once (jinja returns an Undefined that fails only when used)."""
        raise jinja2.exceptions.SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__
        is_format_map = value.__name__ == "format_map"

        def guarded(*args: Any, **kwargs: Any) -> str:
            budget = _active()
            budget.tick()
            if is_format_map and len(args) == 1 and isinstance(args[0], Mapping):
                check_format(budget, fmt, (), dict(args[0]))
            else:
                check_format(budget, fmt, args, kwargs)
            return budget.charge(wrapped(*args, **kwargs))  # type: ignore[return-value]

        return guarded

    @staticmethod
    def concat(parts: Iterable[str]) -> str:  # type: ignore[override]
        """Join a macro/block buffer after measuring it."""
        budget = _active()
        parts = list(parts)
        budget.refuse_over(sum(map(len, parts)), "a block")
        return budget.charge("".join(parts))  # type: ignore[return-value]


class _InsertGuards(NodeTransformer):
    """Rewrites a parsed template so loops, ``~`` and literals go through the guard filters."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = self.generic_visit(node)
        node.iter = _filter(node.iter, _ITER)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = self.generic_visit(node)
        return _filter(nodes.List(node.nodes, lineno=node.lineno), _CONCAT)

    def visit_List(self, node: nodes.List) -> nodes.Node:
        return _filter(self.generic_visit(node), _VALUE)

    def visit_Dict(self, node: nodes.Dict) -> nodes.Node:
        return _filter(self.generic_visit(node), _VALUE)

    def visit_Tuple(self, node: nodes.Tuple) -> nodes.Node:
        node = self.generic_visit(node)
        return _filter(node, _VALUE) if node.ctx == "load" else node


def _filter(node: nodes.Expr, name: str) -> nodes.Filter:
    """``node | name`` as a syntax tree node."""
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


def _make_environment() -> _BudgetedEnvironment:
    """The one shared environment (templates compiled in it are cached)."""
    env = _BudgetedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols],
        optimized=False,
        finalize=_finalize,
    )
    env.filters["tojson"] = _tojson
    env.filters = {name: _guard_filter(name, f) for name, f in env.filters.items()}
    env.filters.update({_ITER: _guard_iter, _CONCAT: _guard_concat, _VALUE: _guard_value})
    env.globals.pop("lipsum", None)
    env.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        dict=_TemplateDict(),
        namespace=_GuardedNamespace,
    )
    return env


_ENV = _make_environment()


@functools.lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """Compile a chat template; TemplateError when it is too long or not valid jinja."""
    if not isinstance(source, str):
        raise TemplateError(f"chat template must be a string, got {type(source).__name__}")
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError(
            f"chat template is {len(source)} characters long (at most {MAX_TEMPLATE_CHARS})"
        )
    try:
        tree = _InsertGuards().visit(_ENV.parse(source))
        return _ENV.from_string(tree)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"chat template syntax error on line {e.lineno}: {e.message}") from e
    except (jinja2.TemplateError, RecursionError, MemoryError, ValueError) as e:
        raise TemplateError(f"chat template does not compile: {_describe(e)}") from e


def render_template(source: str, context: Mapping[str, Any], budget: Budget) -> str:
    """Render `source` with `context` within `budget`.

    Any failure becomes TemplateError: ``raise_exception`` (its message), a sandbox
    violation, an exceeded budget, or any other exception the template provokes.
    """
    template = compile_template(source)
    token = _budget.set(budget)
    try:
        chunks = []
        for chunk in template.generate(**context):
            budget.emit(chunk)
            chunks.append(chunk)
        return "".join(chunks)
    except BudgetExceeded as e:
        raise TemplateError(f"chat template stopped: {e}") from e
    except _RaisedByTemplate as e:
        raise TemplateError(f"chat template: {e.message}") from e
    except jinja2.exceptions.SecurityError as e:
        raise TemplateError(f"chat template refused by the sandbox: {e}") from e
    except Exception as e:  # the template is hostile input: nothing it provokes escapes
        raise TemplateError(f"chat template failed: {_describe(e)}") from e
    finally:
        _budget.reset(token)


def _describe(error: BaseException) -> str:
    """``Type: message`` of an exception, the message cut to a readable length."""
    text = str(error)
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
