"""Sampling: parameters, logit processors and the sampler."""

from corral.sampling.params import SamplingParams
from corral.sampling.sampler import Sampler

__all__ = ["SamplingParams", "Sampler"]
