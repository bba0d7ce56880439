"""Size predictions for operations that can build a huge value in a single C call.

A loop is stopped by the clock between iterations, but ``'x' * 10**9``, ``10 ** 10**8``,
``s.center(10**9)``, ``'%999999999d' % 1`` or ``s.replace('', s)`` each run as one call that
the clock cannot interrupt. The functions here predict the size of such a result from the
operands and raise BudgetExceeded (through ``Budget.refuse_over``) before the call is made.
Everything else is measured right after it is built (``Budget.charge``).
"""

import re
import string
from collections.abc import Callable, Mapping
from typing import Any

from corral.chat.budget import Budget

Args = tuple[Any, ...]
Kwargs = dict[str, Any]

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")
_SEQUENCES = (str, bytes, list, tuple)
_MAX_DIGITS = 12  # a width with more digits than this is refused without converting it


def _int(value: object) -> int | None:
    """`value` if it is an int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _arg(args: Args, kwargs: Kwargs, index: int, name: str, default: Any = None) -> Any:
    """Argument `name` given at position `index` or by keyword."""
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _width(budget: Budget, text: str) -> int:
    """A width written in a format string, refused outright when it has too many digits."""
    if len(text) > _MAX_DIGITS:
        budget.refuse_over(budget.max_value + 1, "a format width")
    return int(text)


def _largest(budget: Budget, values: list[Any]) -> int:
    """Size of the largest value (0 for none)."""
    return max((budget.size(v) for v in values), default=0)


def check_binop(budget: Budget, operator: str, left: Any, right: Any) -> None:
    """Refuse ``*``, ``**``, ``+`` and ``%`` whose result would be too large."""
    if operator == "*":
        count, seq = (_int(right), left) if _int(right) is not None else (_int(left), right)
        if count is not None and isinstance(seq, _SEQUENCES):
            budget.refuse_over(budget.size(seq) * max(count, 0), "'*'")
        elif _int(left) is not None and _int(right) is not None:
            budget.refuse_over((left.bit_length() + right.bit_length()) // 3, "'*'")
    elif operator == "**":
        base, exponent = _int(left), _int(right)
        if base is not None and exponent is not None and exponent > 0 and abs(base) > 1:
            budget.refuse_over(base.bit_length() * exponent // 3, "'**'")
    elif operator == "+":
        if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            budget.refuse_over(budget.size(left) + budget.size(right), "'+'")
    elif operator == "%" and isinstance(left, str):
        check_percent(budget, left, right)


def check_percent(budget: Budget, fmt: str, values: Any) -> None:
    """Refuse ``fmt % values`` with huge widths/precisions or many copies of a big value."""
    args = list(values) if isinstance(values, tuple) else [values]
    fields = 0
    widths = 0
    for match in _PERCENT_SPEC.finditer(fmt):
        fields += 1
        for group in match.groups():
            if group == "*":
                widths += max((abs(n) for n in map(_int, args) if n is not None), default=0)
            elif group:
                widths += _width(budget, group)
    budget.refuse_over(len(fmt) + widths + fields * _largest(budget, args), "'%' formatting")


def check_format(budget: Budget, fmt: str, args: Args, kwargs: Kwargs) -> None:
    """Refuse ``fmt.format(*args, **kwargs)`` with huge widths or many copies of a big value."""
    values = [*args, *kwargs.values()]
    fields = 0
    widths = 0
    for _, field, spec, _ in string.Formatter().parse(fmt):
        if field is None:
            continue
        fields += 1
        widths += sum(_width(budget, digits) for digits in _DIGITS.findall(spec or ""))
        if spec and "{" in spec:  # nested width such as "{:{w}}": any value may be the width
            for value in values:
                if _int(value) is not None:
                    widths += abs(value)
                elif isinstance(value, str) and value.isdigit():
                    widths += _width(budget, value)
    budget.refuse_over(len(fmt) + widths + fields * _largest(budget, values), "str.format")


def _check_replace(budget: Budget, text: Any, old: Any, new: Any, count: Any) -> None:
    """Refuse ``text.replace(old, new, count)`` that would grow too large."""
    if not (isinstance(text, (str, bytes)) and isinstance(old, type(text))):
        return
    if not isinstance(new, type(text)):
        return
    hits = text.count(old) if old else len(text) + 1
    limit = _int(count)
    if limit is not None and limit >= 0:
        hits = min(hits, limit)
    budget.refuse_over(len(text) + hits * (len(new) - len(old)), "replace")


def _check_join(budget: Budget, separator: Any, items: list[Any]) -> None:
    """Refuse joining `items` with `separator` into a too large string."""
    total = sum(budget.size(item) for item in items)
    budget.refuse_over(total + budget.size(separator) * len(items), "join")


def check_method(budget: Budget, method: Any, args: Args, kwargs: Kwargs) -> tuple[Args, Kwargs]:
    """Refuse a call of a str/bytes/int method that would build a too large result.

    Returns the arguments to call with: ``str.join`` gets its iterable as a list, which is
    measured first.
    """
    owner = getattr(method, "__self__", None)
    name = getattr(method, "__name__", "")
    if isinstance(owner, (str, bytes)):
        if name in ("center", "ljust", "rjust", "zfill"):
            width = _int(_arg(args, kwargs, 0, "width"))
            if width is not None:
                budget.refuse_over(width, name)
        elif name == "expandtabs":
            size = _int(_arg(args, kwargs, 0, "tabsize", 8)) or 0
            budget.refuse_over(
                len(owner) + owner.count("\t" if isinstance(owner, str) else b"\t") * size, name
            )
        elif name == "replace":
            _check_replace(
                budget,
                owner,
                _arg(args, kwargs, 0, "old"),
                _arg(args, kwargs, 1, "new"),
                _arg(args, kwargs, 2, "count", -1),
            )
        elif name == "join" and len(args) == 1 and not kwargs:
            items = list(args[0])
            _check_join(budget, owner, items)
            return (items,), kwargs
        elif name == "translate" and args and isinstance(args[0], Mapping):
            longest = max((budget.size(v) for v in args[0].values()), default=1)
            budget.refuse_over(len(owner) * max(longest, 1), name)
    elif _int(owner) is not None and name == "to_bytes":
        length = _int(_arg(args, kwargs, 0, "length", 1))
        if length is not None:
            budget.refuse_over(length, name)
    return args, kwargs


# -- filters: each check gets the filter's arguments after any context/environment one ---------

FilterCheck = Callable[[Budget, Args, Kwargs], tuple[Args, Kwargs]]


def _filter_center(budget: Budget, args: Args, kwargs: Kwargs) -> tuple[Args, Kwargs]:
    width = _int(_arg(args, kwargs, 1, "width", 80))
    if width is not None:
        budget.refuse_over(width, "center")
    return args, kwargs


def _filter_indent(budget: Budget, args: Args, kwargs: Kwargs) -> tuple[Args, Kwargs]:
    text, width = _arg(args, kwargs, 0, "s", ""), _arg(args, kwargs, 1, "width", 4)
    pad = _int(width) if _int(width) is not None else budget.size(width)
    lines = str(text).count("\n") + 1 if isinstance(text, str) else 1
    budget.refuse_over(budget.size(text) + lines * max(pad, 0), "indent")
    return args, kwargs


def _filter_format(budget: Budget, args: Args, kwargs: Kwargs) -> tuple[Args, Kwargs]:
    fmt = _arg(args, {}, 0, "value")
    if isinstance(fmt, str):
        check_percent(budget, fmt, kwargs if kwargs else tuple(args[1:]))
    return args, kwargs


def _filter_replace(budget: Budget, args: Args, kwargs: Kwargs) -> tuple[Args, Kwargs]:
    _check_replace(
        budget,
        _arg(args, kwargs, 0, "s"),
        _arg(args, kwargs, 1, "old"),
        _arg(args, kwargs, 2, "new"),
        _arg(args, kwargs, 3, "count"),
    )
    return args, kwargs


def _filter_join(budget: Budget, args: Args, kwargs: Kwargs) -> tuple[Args, Kwargs]:
    if not args:
        return args, kwargs
    items = list(args[0])
    separator = _arg(args, kwargs, 1, "d", "")
    _check_join(budget, separator, items)
    return (items, *args[1:]), kwargs


def _filter_count_arg(name: str, index: int, arg: str) -> FilterCheck:
    """A check refusing an int argument (a slice/batch count) above one value's size."""

    def check(budget: Budget, args: Args, kwargs: Kwargs) -> tuple[Args, Kwargs]:
        count = _int(_arg(args, kwargs, index, arg))
        if count is not None:
            budget.refuse_over(count, name)
        return args, kwargs

    return check


def _filter_wordwrap(budget: Budget, args: Args, kwargs: Kwargs) -> tuple[Args, Kwargs]:
    text = _arg(args, kwargs, 0, "s", "")
    width = _int(_arg(args, kwargs, 1, "width", 79)) or 1
    wrap = _arg(args, kwargs, 3, "wrapstring") or "\n"
    if isinstance(text, str):
        lines = len(text) // max(width, 1) + text.count("\n") + 1
        budget.refuse_over(len(text) + lines * budget.size(wrap), "wordwrap")
    return args, kwargs


def _filter_tojson(budget: Budget, args: Args, kwargs: Kwargs) -> tuple[Args, Kwargs]:
    indent = _arg(args, kwargs, 2, "indent")
    if indent is not None:
        pad = _int(indent) if _int(indent) is not None else budget.size(indent)
        value = _arg(args, kwargs, 0, "x")
        extra = _indentation(value, max(pad, 0), 1, budget.max_value + 1)
        budget.refuse_over(budget.size(value) + extra, "tojson")
    return args, kwargs


def _indentation(value: Any, pad: int, depth: int, limit: int) -> int:
    """Characters ``json.dumps(indent=pad)`` adds to `value`: a line and indentation per item
    and per closing bracket (stops counting past `limit`)."""
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, (list, tuple)):
        children = value
    else:
        return 0
    extra = (depth - 1) * pad + 1
    for child in children:
        extra += depth * pad + 1 + _indentation(child, pad, depth + 1, limit - extra)
        if extra > limit:
            break
    return extra


def _filter_sum(budget: Budget, args: Args, kwargs: Kwargs) -> tuple[Args, Kwargs]:
    start = _arg(args, kwargs, 2, "start", 0)
    if not args or isinstance(start, (int, float)):
        return args, kwargs
    items = list(args[0])  # summing sequences copies the total once per item
    total = budget.size(start) + sum(budget.size(item) for item in items)
    budget.refuse_over(total * max(len(items), 1), "sum")
    return (items, *args[1:]), kwargs


FILTER_CHECKS: dict[str, FilterCheck] = {
    "center": _filter_center,
    "indent": _filter_indent,
    "format": _filter_format,
    "replace": _filter_replace,
    "join": _filter_join,
    "slice": _filter_count_arg("slice", 1, "slices"),
    "batch": _filter_count_arg("batch", 1, "linecount"),
    "wordwrap": _filter_wordwrap,
    "tojson": _filter_tojson,
    "sum": _filter_sum,
}
