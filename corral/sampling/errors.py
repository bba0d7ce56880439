"""Errors of the sampling layer."""

from corral.errors import CorralError


class SamplingError(CorralError, RuntimeError):
    """Sampling cannot go on: the logits hold NaN/+inf, or no token is allowed."""


class SamplingParamsError(CorralError, ValueError):
    """A sampling parameter is out of range; the message names the parameter."""
