"""A linear layer whose weight stays quantized in memory (GPU path).

On CUDA the weight's GGUF blocks are repacked once at load (corral.kernels.packing, same
bits per weight) and every call runs a fused dequantize-and-multiply Triton kernel, so no
dequantized copy of the weights ever exists. On the CPU the pure-torch twin dequantizes on
the fly (a reference path: the CPU loader dequantizes at load instead).
"""

import torch
from torch import nn

from corral.kernels.packing import PackedWeight, pack
from corral.kernels.reference import linear_reference


class PackedLinear(nn.Module):
    """y = x @ W.T for a weight W (out_features, in_features) kept as packed quant blocks."""

    def __init__(self, packed: PackedWeight) -> None:
        super().__init__()
        self.packed = packed
        self.out_features, self.in_features = packed.shape

    @classmethod
    def from_gguf_blocks(
        cls, raw: torch.Tensor, qtype: str, shape: tuple[int, int], device: torch.device
    ) -> "PackedLinear":
        """From a GGUF tensor's raw bytes (uint8, out_features rows of blocks) of `qtype`."""
        rows = raw.to(device).view(shape[0], -1)  # (N, bytes per row); repacked on `device`
        return cls(pack(rows, qtype, shape[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features), in x's dtype."""
        if x.device.type == "cuda":
            from corral.kernels.triton.linear import quantized_linear

            return quantized_linear(x, self.packed)
        return linear_reference(x, self.packed)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.packed.qtype}"
