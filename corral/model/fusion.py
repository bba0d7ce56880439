"""Projections that read the same input, fused into one matmul at load.

Attention's Q, K and V projections all read the normed hidden state, and so do the MLP's
gate and up projections. Concatenating their weights along the output rows turns three
(two) matmuls into one: one kernel launch and one pass over the activations, and a wider
output for the kernel to spread over the GPU. Weights fuse when they are stored alike
(dense weights of one dtype and device; packed weights of one quant type, see
`PackedLinear.concat`); a run of consecutive projections that fuse becomes
one `SplitLinear`, so a Q4_K_M layer whose V is Q6_K fuses Q and K and keeps V apart.

The MLP's gate and up, when packed for the Triton kernels, fuse further: their rows are
interleaved (`SwiGLULinear`) so that a decode matvec computes silu(gate) * up itself.
"""

import os
from collections.abc import Sequence

import torch
from torch import nn

from corral.kernels.packing import PackedWeight, interleave_rows
from corral.kernels.reference import linear_reference, swiglu_reference
from corral.quant.linear import PackedLinear


class SplitLinear(nn.Module):
    """One linear computing several projections: its output split by `sizes`."""

    def __init__(self, linear: nn.Module, sizes: Sequence[int]) -> None:
        super().__init__()
        self.linear = linear
        self.sizes = list(sizes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (..., K) -> one (..., size) output per projection, views of one matmul."""
        return self.linear(x).split(self.sizes, dim=-1)


def fusable(a: nn.Module, b: nn.Module) -> bool:
    """True when linears `a` and `b` (same input) can be one matmul: dense weights of one
    dtype and device, or packed weights `PackedLinear.rows_concatenable`."""
    if type(a) is nn.Linear and type(b) is nn.Linear:
        wa, wb = a.weight, b.weight
        no_bias = a.bias is None and b.bias is None
        return no_bias and (wa.dtype, wa.device, wa.shape[1]) == (wb.dtype, wb.device, wb.shape[1])
    if isinstance(a, PackedLinear) and isinstance(b, PackedLinear):
        return a.rows_concatenable(b)
    return False


def fuse(modules: Sequence[nn.Module]) -> nn.Module:
    """The `fusable` linears `modules` as one whose output rows are theirs in order."""
    if isinstance(modules[0], PackedLinear):
        return PackedLinear.concat(list(modules))
    weight = torch.cat([m.weight for m in modules])  # (sum of N, K)
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    return fused


def fuse_runs(modules: Sequence[nn.Module]) -> nn.ModuleList:
    """`modules` (projections of one input, in output order) as SplitLinears over the
    longest runs of consecutive `fusable` modules; calling them in order and chaining
    their outputs gives each module's output in order."""
    runs: list[list[nn.Module]] = []
    for module in modules:
        if runs and fusable(runs[-1][-1], module):
            runs[-1].append(module)
        else:
            runs.append([module])
    return nn.ModuleList(
        SplitLinear(run[0] if len(run) == 1 else fuse(run), [m.out_features for m in run])
        for run in runs
    )


class SwiGLULinear(nn.Module):
    """SwiGLU's gate and up projections as one packed weight whose rows alternate (gate
    row 0, up row 0, gate row 1, ...): x (..., K) -> silu(gate(x)) * up(x) (..., N).

    On CUDA this is `swiglu_linear`: a decode step's matvec stores the product from its
    epilogue, one kernel where there were two. Elsewhere (GPU-layout weights on the CPU,
    in tests) torch computes it from the reference product."""

    def __init__(self, gate: PackedLinear, up: PackedLinear) -> None:
        super().__init__()
        self.packed = interleave_rows(gate.packed, up.packed)
        self.in_features, self.out_features = gate.in_features, gate.out_features
        self.out_int8_bits = 0  # int8 blocks of the output to write in decode (llama.py)

    @staticmethod
    def fusable(gate: nn.Module, up: nn.Module) -> bool:
        """True when `gate` and `up` are weights packed for the Triton kernels (not the
        CPU kernels' layout) of one shape that `PackedLinear.rows_concatenable`."""
        if not (isinstance(gate, PackedLinear) and isinstance(up, PackedLinear)):
            return False
        a, b = gate.packed, up.packed
        for_triton = isinstance(a, PackedWeight) and isinstance(b, PackedWeight)
        return for_triton and a.shape == b.shape and gate.rows_concatenable(up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> silu(gate) * up (..., out_features), in x's dtype."""
        if x.device.type == "cuda":
            from corral.kernels.triton.linear import swiglu_linear

            return swiglu_linear(x, self.packed, self.out_int8_bits)
        return swiglu_reference(linear_reference(x, self.packed))  # from (..., 2N) pairs

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features} (gate, up), {self.packed.qtype}"


def int8_down_enabled() -> bool:
    """Whether SwiGLU's gate/up matvec also writes the int8 blocks of its output for the
    down projection (CORRAL_INT8_DOWN=1; `matvec_int8`'s out_int8_bits), which saves the
    down input's quantizing launch (32 a step for a 7B model, ~83 us of a ~2.3 ms step on
    an H100, plus their launch gaps). Off by default until timed and run on a GPU: its
    programs hand the blocks to the last one through atomics
    (`int8_act.quantize_when_complete`), and Triton's interpreter, which the CPU tests
    use, runs one program at a time."""
    return os.environ.get("CORRAL_INT8_DOWN", "0") == "1"


def int8_bits(projections: Sequence[nn.Module | None]) -> int:
    """Bits of the int8 activation blocks that every packed weight of `projections` (which
    read one input) multiplies in decode, or 0 when some weight takes float activations
    (dense or CPU-layout weights, types without the int8 matvec, GPTQ act-order
    weights, which quantize their own gathered columns) or they differ: what
    that input's RMSNorm writes beside its output (corral.kernels.triton.int8_act)."""
    from corral.kernels.triton.decode import KERNEL_TYPES
    from corral.kernels.triton.matvec_int8 import int8_enabled

    found = set()
    for projection in (p for p in projections if p is not None):
        for module in projection.modules():
            packed = getattr(module, "packed", None)
            if isinstance(module, nn.Linear):
                found.add(0)  # a dense weight: torch's matmul on float activations
            elif (
                isinstance(packed, PackedWeight)
                and int8_enabled(packed.qtype)
                and "perm" not in packed.tensors  # act-order: blocks of x's gathered columns
            ):
                found.add(KERNEL_TYPES[packed.qtype].bits)
            elif packed is not None:
                found.add(0)
    return found.pop() if len(found) == 1 else 0
