"""Files split into raw byte parts, as model hubs ship big GGUFs: `x.gguf-split-a`, `-split-b`, ...

The parts are plain byte ranges of one file (`cat x.gguf-split-* > x.gguf` joins them), so
they are mapped side by side and read as one address space: a tensor inside one part is a
view of that part's mapping; the rare tensor straddling two parts is copied out.
"""

import pathlib
import re
import string

import numpy as np

SPLIT_SUFFIX = re.compile(r"^(?P<stem>.+)-split-(?P<letter>[a-z])$")


def part_paths(path: pathlib.Path) -> list[pathlib.Path]:
    """All parts of `path` in order: itself alone, or `-split-a`, `-split-b`, ... that exist.

    Naming any one part finds the whole run; the run must start at `a` and has no gaps.
    """
    match = SPLIT_SUFFIX.match(path.name)
    if match is None:
        return [path]
    stem = match["stem"]
    parts = []
    for letter in string.ascii_lowercase:
        candidate = path.with_name(f"{stem}-split-{letter}")
        if not candidate.is_file():
            break
        parts.append(candidate)
    if path not in parts:
        raise FileNotFoundError(
            f"{path}: the parts before it are missing (expected {stem}-split-a first)"
        )
    return parts


class PartedBytes:
    """Read-only bytes of a file stored as one or more consecutive parts, memory-mapped."""

    def __init__(self, paths: list[pathlib.Path]) -> None:
        self.paths = paths
        self._maps = [np.memmap(p, dtype=np.uint8, mode="r") for p in paths if p.stat().st_size]
        self._starts = np.cumsum([0] + [len(m) for m in self._maps])
        self.size = int(self._starts[-1])

    @property
    def first(self) -> np.ndarray:
        """The first part's bytes (where the header lives)."""
        return self._maps[0] if self._maps else np.zeros(0, dtype=np.uint8)

    def read(self, offset: int, nbytes: int) -> np.ndarray:
        """Bytes [offset, offset + nbytes): a view when inside one part, else a copy."""
        index = int(np.searchsorted(self._starts, offset, side="right")) - 1
        local = offset - int(self._starts[index])
        part = self._maps[index]
        if local + nbytes <= len(part):
            return part[local : local + nbytes].view(np.ndarray)
        pieces = []
        while nbytes > 0:
            part = self._maps[index]
            piece = part[local : local + nbytes]
            pieces.append(piece)
            nbytes -= len(piece)
            index, local = index + 1, 0
        joined = np.concatenate(pieces)
        joined.flags.writeable = False
        return joined
