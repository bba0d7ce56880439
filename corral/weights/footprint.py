"""How much of a model stays quantized in memory (for memory estimates before loading)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class PackedWeights:
    """The weights a checkpoint keeps quantized in memory: how many parameters, in how many
    bytes (a tied LM head's packed copy of the embedding adds bytes, not parameters)."""

    params: int = 0
    nbytes: int = 0
