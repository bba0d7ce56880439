"""SamplingParams: the user's sampling controls, validated once."""

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingParams:
    """Controls for choosing the next token, with llama.cpp's defaults.

    temperature 0 means greedy (argmax). top_k 0 and top_p 1.0 disable those filters.
    seed None draws a fresh random seed.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        """True when sampling reduces to argmax."""
        return self.temperature == 0.0 or self.top_k == 1
