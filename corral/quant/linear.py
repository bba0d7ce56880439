"""A linear layer whose weight stays quantized in memory.

On CUDA the weight's GGUF blocks (corral.kernels.packing) or GPTQ codes
(corral.kernels.gptq) are repacked once at load, with the same bits per weight, and every
call runs a fused dequantize-and-multiply Triton kernel, so no dequantized copy of the
weights ever exists. On the CPU, GGUF blocks are repacked into the CPU kernels' layout
(corral.kernels.cpu.layout, also the file's bits) and multiplied by numba kernels. A
GPU-layout weight on the CPU (tests of the GPU kernels' twins) goes through the pure-torch
twin, which dequantizes on the fly.
"""

import torch
from torch import nn

from corral.errors import UnsupportedError
from corral.kernels.cpu.layout import (
    CpuWeight,
    concat_cpu_rows,
    cpu_layout_error,
    cpu_rows_concatenable,
    to_cpu_layout,
)
from corral.kernels.cpu.linear import cpu_linear
from corral.kernels.gptq import gptq_layout_error, pack_gptq
from corral.kernels.packing import PackedWeight, concat_rows, pack, rows_concatenable
from corral.kernels.reference import linear_reference
from corral.weights.qtensor import QTensor


class PackedLinear(nn.Module):
    """y = x @ W.T for a weight W (out_features, in_features) kept as packed quant blocks."""

    def __init__(self, packed: PackedWeight | CpuWeight) -> None:
        super().__init__()
        self.packed = packed
        self.out_features, self.in_features = packed.shape

    @classmethod
    def from_gguf_blocks(
        cls, raw: torch.Tensor, qtype: str, shape: tuple[int, int], device: torch.device
    ) -> "PackedLinear | None":
        """From a GGUF tensor's raw bytes (uint8, out_features rows of blocks) of `qtype`;
        None on the CPU when the CPU kernels have no layout for it (then it is dequantized
        at load)."""
        rows = raw.to(device).view(shape[0], -1)  # (N, bytes per row); repacked on `device`
        packed = pack(rows, qtype, shape[1])
        if device.type == "cuda":
            return cls(packed)
        return None if cpu_layout_error(packed) else cls(to_cpu_layout(packed))

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

    def rows_concatenable(self, other: "PackedLinear") -> bool:
        """True when `other`'s output rows can follow this one's in one weight (`concat`)."""
        a, b = self.packed, other.packed
        if isinstance(a, CpuWeight) and isinstance(b, CpuWeight):
            return cpu_rows_concatenable(a, b)
        if isinstance(a, PackedWeight) and isinstance(b, PackedWeight):
            return rows_concatenable(a, b)
        return False

    @classmethod
    def concat(cls, linears: list["PackedLinear"]) -> "PackedLinear":
        """One linear whose output rows are those of `linears` (all `rows_concatenable`)."""
        weights = [linear.packed for linear in linears]
        if isinstance(weights[0], CpuWeight):
            return cls(concat_cpu_rows(weights))
        return cls(concat_rows(weights))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features), in x's dtype."""
        if isinstance(self.packed, CpuWeight):
            return cpu_linear(x, self.packed)
        if x.device.type == "cuda":
            from corral.kernels.triton.linear import quantized_linear

            return quantized_linear(x, self.packed)
        return linear_reference(x, self.packed)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.packed.qtype}"
