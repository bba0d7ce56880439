"""Errors of the chat layer."""

from corral.errors import CorralError


class ChatError(CorralError, ValueError):
    """Malformed messages, or no usable prompt format; the message names the index or field."""


class TemplateError(ChatError):
    """A chat template failed: bad syntax, raise_exception, a sandbox violation, or a budget
    (time, output size) was exceeded."""
