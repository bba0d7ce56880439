"""KV-cache slots: which cache row each running sequence owns, and prompt-prefix reuse.

The cache holds `n_slots` rows of `context` positions each (llama.cpp's server layout:
`-c` total positions split across `--parallel` slots). A row remembers the tokens whose
keys/values it holds, also after its sequence ends, so a new prompt that starts like an
earlier one reuses those entries in place, and a prompt that starts like a running
sequence's copies that sequence's entries instead of recomputing them.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class Slot:
    """One KV cache row: `tokens` are the tokens whose entries it holds, in order."""

    row: int
    tokens: list[int] = field(default_factory=list)
    busy: bool = False
    last_used: int = 0


@dataclass(frozen=True)
class Placement:
    """Where a new sequence goes: `slot`, keeping its first `reused` entries; when `source`
    is set, those entries are first copied from that busy row."""

    slot: Slot
    reused: int
    source: int | None = None


class SlotTable:
    """Hands out cache rows to sequences and finds cached prompt prefixes."""

    def __init__(self, n_slots: int, context: int) -> None:
        self.slots = [Slot(row) for row in range(n_slots)]
        self.context = context
        self._clock = 0

    def has_free(self) -> bool:
        """True when a row is free."""
        return any(not slot.busy for slot in self.slots)

    def place(self, prompt: Sequence[int]) -> Placement:
        """The best row for `prompt` (a row must be free): the free row with the longest
        cached prefix of it, unless a busy row holds a longer one to copy; at least the
        prompt's last token is always left to compute (its logits start generation)."""
        limit = len(prompt) - 1
        free = [slot for slot in self.slots if not slot.busy]
        if not free:
            raise RuntimeError("no free KV cache slot")
        best = max(free, key=lambda s: (min(common_prefix(s.tokens, prompt), limit), -s.last_used))
        reused = min(common_prefix(best.tokens, prompt), limit)
        busy = [slot for slot in self.slots if slot.busy]
        donor = max(busy, key=lambda s: common_prefix(s.tokens, prompt), default=None)
        shared = 0 if donor is None else min(common_prefix(donor.tokens, prompt), limit)
        if shared > reused:
            # the copy overwrites the target: take the least recently used free row
            target = min(free, key=lambda s: s.last_used)
            return Placement(target, shared, donor.row)
        return Placement(best, reused)

    def occupy(self, placement: Placement, prompt: Sequence[int]) -> None:
        """Mark the placement's row busy, holding the reused prefix of `prompt`."""
        slot = placement.slot
        slot.busy = True
        slot.tokens = list(prompt[: placement.reused])
        self._clock += 1
        slot.last_used = self._clock

    def release(self, slot: Slot) -> None:
        """Free a row; its cached tokens stay for later prompts."""
        slot.busy = False
        self._clock += 1
        slot.last_used = self._clock

    def used_tokens(self) -> int:
        """Positions held by running sequences."""
        return sum(len(slot.tokens) for slot in self.slots if slot.busy)
