"""A linear layer whose weight stays quantized in memory (GPU path).

On CUDA the weight's GGUF blocks (corral.kernels.packing) or GPTQ codes
(corral.kernels.gptq) are repacked once at load, with the same bits per weight, and every
call runs a fused dequantize-and-multiply Triton kernel, so no dequantized copy of the
weights ever exists. On the CPU the pure-torch twin dequantizes on the fly (a reference
path: the CPU loader dequantizes at load instead).
"""

import torch
from torch import nn

from corral.errors import UnsupportedError
from corral.kernels.gptq import gptq_layout_error, pack_gptq
from corral.kernels.packing import PackedWeight, pack
from corral.kernels.reference import linear_reference
from corral.weights.qtensor import QTensor


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

    @staticmethod
    def qtensor_layout_error(qt: QTensor) -> str | None:
        """Why `qt` cannot be kept packed (then it is dequantized at load), or None."""
        if qt.scheme != "gptq":
            return f"no kernel layout for quantization scheme {qt.scheme!r}"
        return gptq_layout_error(qt.bits, qt.group_size, qt.g_idx)

    @classmethod
    def from_qtensor(cls, qt: QTensor, device: torch.device) -> "PackedLinear":
        """From a GPTQ QTensor, repacked on `device` (see corral.kernels.gptq)."""
        reason = cls.qtensor_layout_error(qt)
        if reason:
            raise UnsupportedError(reason)
        qt = qt.to(device)
        return cls(pack_gptq(qt.qweight, qt.scales, qt.zeros, qt.g_idx, qt.bits, qt.group_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features), in x's dtype."""
        if x.device.type == "cuda":
            from corral.kernels.triton.linear import quantized_linear

            return quantized_linear(x, self.packed)
        return linear_reference(x, self.packed)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.packed.qtype}"
