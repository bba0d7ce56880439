"""The time and size budget of one template render.

A jinja2 render cannot be interrupted from outside (a thread cannot be killed), so the
sandbox calls into the budget from its hooks instead: every loop iteration, call, filter,
attribute lookup and output chunk calls :meth:`Budget.tick`, which raises once the deadline
has passed, and every value the template builds is measured before or right after it is
made. A value's *size* is an upper estimate of the characters its ``str()``/``repr()``/JSON
would take, counting shared sub-values once per reference, so a list that holds the same
string twice counts it twice: that is what stops "double a list 40 times, then print it".
"""

import time
from collections.abc import ItemsView, Iterable, KeysView, ValuesView
from itertools import chain

from jinja2.utils import Namespace

MAX_SECONDS = 2.0
MAX_OUTPUT_CHARS = 1 << 20  # the rendered prompt
MAX_VALUE_CHARS = 1 << 20  # any one value the template builds or passes around
MAX_PRODUCED_CHARS = 128 << 20  # all new strings of one render together

_ITEM_OVERHEAD = 4  # ", " between items and the quotes of a string item
_OTHER_SIZE = 64  # objects whose text does not grow with their contents (macros, loops, ...)


class BudgetExceeded(Exception):
    """A render went over its time or size budget (turned into TemplateError by the caller)."""


class Budget:
    """Deadline and size accounting shared by the hooks of one render.

    `seconds`, `max_output`, `max_value` and `max_produced` default to the module limits.
    Sizes of immutable containers are memoised by identity; the memo keeps the objects
    alive, so identities are not reused while the budget lives.
    """

    def __init__(
        self,
        seconds: float = MAX_SECONDS,
        max_output: int = MAX_OUTPUT_CHARS,
        max_value: int = MAX_VALUE_CHARS,
        max_produced: int = MAX_PRODUCED_CHARS,
    ) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.max_output = max_output
        self.max_value = max_value
        self.max_produced = max_produced
        self.output = 0
        self.produced = 0
        self._memo: dict[int, tuple[object, int]] = {}

    def tick(self) -> None:
        """Raise BudgetExceeded once the deadline has passed."""
        if time.monotonic() > self.deadline:
            raise BudgetExceeded(f"took longer than {self.seconds:g} s")

    def refuse_over(self, predicted: int, what: str) -> None:
        """Raise BudgetExceeded before building `what` when `predicted` chars exceed a value."""
        if predicted > self.max_value:
            raise BudgetExceeded(
                f"{what} would build about {predicted} characters "
                f"(one value may hold at most {self.max_value})"
            )

    def check(self, value: object) -> object:
        """Return `value` unchanged after checking its size; tick the clock."""
        self.tick()
        size = self.size(value)
        if size > self.max_value:
            raise BudgetExceeded(
                f"a value of about {size} characters was built "
                f"(one value may hold at most {self.max_value})"
            )
        return value

    def charge(self, value: object) -> object:
        """Like :meth:`check`, and count a new string against the render's total."""
        self.check(value)
        if isinstance(value, (str, bytes)):
            self.produced += len(value)
            if self.produced > self.max_produced:
                raise BudgetExceeded(
                    f"more than {self.max_produced} characters of strings were built in total"
                )
        return value

    def emit(self, chunk: str) -> None:
        """Count one chunk of rendered output; raise when the output grows too large."""
        self.tick()
        self.output += len(chunk)
        if self.output > self.max_output:
            raise BudgetExceeded(f"the output passed {self.max_output} characters")

    def size(self, value: object) -> int:
        """Estimated characters of `value` as text (see the module docstring)."""
        return self._measure(value, set(), self.max_value + 1)[0]

    def _measure(self, value: object, active: set[int], limit: int) -> tuple[int, bool]:
        """(size, cacheable) of `value`; stops adding once the size passes `limit`.

        Containers that hold a Namespace (mutable) are not cacheable. `active` holds the
        containers being measured, so a cycle through a namespace counts as a few chars
        (its repr prints "[...]").
        """
        if isinstance(value, str):
            return len(value), True
        if value is None or isinstance(value, bool):
            return 5, True
        if isinstance(value, int):
            return value.bit_length() // 3 + 2, True
        if isinstance(value, float):
            return 24, True
        if isinstance(value, (bytes, bytearray)):
            return 4 * len(value) + 3, True
        key = id(value)
        known = self._memo.get(key)
        if known is not None:
            return known[1], True
        children: Iterable[object]
        if isinstance(value, Namespace):
            attrs = object.__getattribute__(value, "_Namespace__attrs")
            children = chain.from_iterable(attrs.items())
            cacheable = False
        elif isinstance(value, dict):
            children = chain.from_iterable(value.items())
            cacheable = True
        elif isinstance(value, (list, tuple, set, frozenset, KeysView, ValuesView, ItemsView)):
            children = value
            cacheable = True
        else:
            return _OTHER_SIZE, True
        if key in active:
            return 8, False
        active.add(key)
        total = 2
        for child in children:
            child_size, child_cacheable = self._measure(child, active, limit - total)
            total += child_size + _ITEM_OVERHEAD
            cacheable = cacheable and child_cacheable
            if total > limit:
                break
        active.discard(key)
        if cacheable and total <= limit:
            self._memo[key] = (value, total)
        return total, cacheable
