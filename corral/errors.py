"""Errors corral raises for bad input. Each names the file, key or tensor that is wrong."""


class CorralError(Exception):
    """Base class of the errors corral raises on purpose."""


class ModelFormatError(CorralError, ValueError):
    """A model file is malformed, truncated, or contradicts itself."""


class UnsupportedError(CorralError, NotImplementedError):
    """The input is well-formed but uses something corral does not support (yet)."""


class TokenizerError(CorralError, ValueError):
    """Tokenizer metadata is malformed, or a token id is out of range."""
