"""Typed, validated reads of tokenizer keys from a plain GGUF metadata mapping.

The mapping is what corral's GGUF reader returns: strings as ``str``, string arrays as
``list[str]``, numeric arrays as numpy arrays (lists are accepted too), integers as ``int`` and
booleans as ``bool``. Every failure raises :class:`~corral.errors.TokenizerError` naming the
source and the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from corral.errors import TokenizerError

_MISSING = object()


class MetadataReader:
    """Reads tokenizer keys of one metadata mapping; errors name `source` and the key."""

    def __init__(self, metadata: Mapping[str, Any], source: str) -> None:
        if not isinstance(metadata, Mapping):
            raise TokenizerError(f"{source}: tokenizer metadata must be a mapping")
        self._metadata = metadata
        self.source = source

    def error(self, key: str, problem: str) -> TokenizerError:
        """A TokenizerError about `key`, naming the source."""
        return TokenizerError(f"{self.source}: {key}: {problem}")

    def has(self, key: str) -> bool:
        """Whether `key` is present."""
        return key in self._metadata

    def _get(self, key: str, required: bool) -> Any:
        value = self._metadata.get(key, _MISSING)
        if value is _MISSING and required:
            raise self.error(key, "missing")
        return value

    def string(self, key: str, *, required: bool = False) -> str | None:
        """A string value, or None when absent and not required."""
        value = self._get(key, required)
        if value is _MISSING:
            return None
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {type(value).__name__}")
        return value

    def boolean(self, key: str) -> bool | None:
        """A bool value, or None when absent."""
        value = self._get(key, False)
        if value is _MISSING:
            return None
        if not isinstance(value, bool | np.bool_):
            raise self.error(key, f"expected a bool, got {type(value).__name__}")
        return bool(value)

    def integer(self, key: str) -> int | None:
        """An integer value, or None when absent."""
        value = self._get(key, False)
        if value is _MISSING:
            return None
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
            raise self.error(key, f"expected an integer, got {type(value).__name__}")
        return int(value)

    def strings(self, key: str, *, required: bool = False) -> list[str] | None:
        """An array of strings, or None when absent and not required."""
        value = self._get(key, required)
        if value is _MISSING:
            return None
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise self.error(key, f"expected an array of strings, got {type(value).__name__}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(key, f"element {i} is {type(item).__name__}, not a string")
        return list(value)

    def numbers(self, key: str, kind: str, length: int) -> list[float] | list[int] | None:
        """A numeric array of exactly `length` elements (`kind` "float" or "int"), or None."""
        value = self._get(key, False)
        if value is _MISSING:
            return None
        if isinstance(value, str | bytes) or not isinstance(value, np.ndarray | Sequence):
            raise self.error(key, f"expected a numeric array, got {type(value).__name__}")
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise self.error(key, f"not a numeric array ({exc})") from None
        if array.ndim != 1:
            raise self.error(key, f"expected a 1-D array, got shape {array.shape}")
        if len(array) != length:
            raise self.error(
                key, f"has {len(array)} entries but tokenizer.ggml.tokens has {length}"
            )
        if kind == "float":
            if length and array.dtype.kind not in "fiu":
                raise self.error(key, f"expected numbers, got dtype {array.dtype}")
            return array.astype(np.float32).tolist()
        if length and array.dtype.kind not in "iu":
            raise self.error(key, f"expected integers, got dtype {array.dtype}")
        return array.astype(np.int64).tolist()
