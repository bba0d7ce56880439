"""Sampling: parameters, logit processors and the sampler."""

from corral.sampling.errors import SamplingError, SamplingParamsError
from corral.sampling.params import SamplingParams, params_from_kwargs
from corral.sampling.sampler import Constraint, Sampler, TokenLogprobs, check_logit_bias

__all__ = [
    "Constraint",
    "Sampler",
    "SamplingError",
    "SamplingParams",
    "SamplingParamsError",
    "TokenLogprobs",
    "check_logit_bias",
    "params_from_kwargs",
]
