"""QTensor: one quantized linear weight, in a form that does not depend on the file it came from.

Scheme "gptq" (grouped integers with a per-group scale and zero point, GPTQ/AutoGPTQ style):

    weight[n, k] = scales[g_idx[k], n] * (code[k, n] - zeros[g_idx[k], n])

| field   | dtype          | shape        | holds                                             |
|---------|----------------|--------------|---------------------------------------------------|
| qweight | int32          | (K*b/32, N)  | codes, packed down K: 32 codes per b words, read   |
|         |                |              | as one little-endian bit stream (AutoGPTQ layout)  |
| scales  | float16/32     | (G, N)       | step of every group and output                    |
| zeros   | int16          | (G, N)       | the true zero point (file conventions resolved:   |
|         |                |              | AutoGPTQ's stored "zero - 1" has had its 1 added)  |
| g_idx   | int32          | (K,)         | group of every input column (act-order permutes)  |

N = out_features, K = in_features, G = groups, b = bits. Readers (corral.formats.gptq)
validate shapes and ranges before building one; corral.quant.gptq dequantizes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QTensor:
    """A quantized (out_features, in_features) weight; see the module docstring for fields."""

    scheme: str
    shape: tuple[int, int]  # (N, K), as the dense weight would be
    bits: int
    group_size: int  # input columns per group (K when the checkpoint says -1)
    qweight: torch.Tensor  # (K*b/32, N) int32
    scales: torch.Tensor  # (G, N)
    zeros: torch.Tensor  # (G, N) int16
    g_idx: torch.Tensor  # (K,) int32

    @property
    def n_groups(self) -> int:
        """Number of groups G."""
        return self.scales.shape[0]

    def select_rows(self, index: torch.Tensor) -> QTensor:
        """The weight whose output row i is row index[i] of this one (e.g. a RoPE row
        reordering); codes, scales and zeros of each output move together."""
        return QTensor(
            scheme=self.scheme,
            shape=(len(index), self.shape[1]),
            bits=self.bits,
            group_size=self.group_size,
            qweight=self.qweight[:, index],  # (K*b/32, N')
            scales=self.scales[:, index],  # (G, N')
            zeros=self.zeros[:, index],  # (G, N')
            g_idx=self.g_idx,
        )

    def to(self, device: torch.device) -> QTensor:
        """The same weight with every tensor on `device`."""
        return QTensor(
            scheme=self.scheme,
            shape=self.shape,
            bits=self.bits,
            group_size=self.group_size,
            qweight=self.qweight.to(device),
            scales=self.scales.to(device),
            zeros=self.zeros.to(device),
            g_idx=self.g_idx.to(device),
        )
