"""BlockWeight: a weight kept as the quantized blocks its file stores (GGUF's ggml types).

The loader either dequantizes it (CPU) or repacks the blocks for the fused GPU kernels
(corral.quant.linear.PackedLinear); no dense copy is made on the GPU path.
"""

from dataclasses import dataclass

import torch

from corral.quant.ggml_types import GGMLType


@dataclass(frozen=True)
class BlockWeight:
    """A (rows, cols) weight as raw ggml blocks: `data` is uint8, rows after rows."""

    qtype: GGMLType
    shape: tuple[int, ...]  # torch order: (out_features, in_features)
    data: torch.Tensor  # (nbytes,) uint8, on the CPU
    source: str  # "file: tensor 'name'", for error messages

    @property
    def nbytes(self) -> int:
        """Bytes of the stored blocks."""
        return self.data.numel()
