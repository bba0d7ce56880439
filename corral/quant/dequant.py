"""Dequantize ggml tensors to float in pure torch: one registered function per type.

Each type module (`dense`, `legacy`, `kquants`) decorates a *block dequantizer* with
`@register_dequantizer(GGMLType.X)`: a function from the packed blocks, a uint8 tensor
`(n_blocks, type_size)`, to their values, a float32 tensor `(n_blocks, block_size)`.
`dequantize` checks the byte count against the shape, views the bytes as blocks and calls
it. Every block dequantizer works on all blocks at once with tensor ops only, so the same
code runs on CPU and CUDA; results are bit-exact with gguf-py's `gguf.quants.dequantize`
(the float32 operations happen in the same order). Multi-byte fields are little-endian
as on disk, read with native-order views: corral assumes a little-endian host.

The small helpers below (`reinterpret`, `f16_field`, `unpack_bits`) are shared by the
type modules for slicing fields out of the blocks.
"""

import math
from collections.abc import Callable

import torch

from corral.errors import ModelFormatError, UnsupportedError
from corral.quant.ggml_types import LAYOUTS, GGMLType, row_nbytes

BlockDequantizer = Callable[[torch.Tensor], torch.Tensor]

_DEQUANTIZERS: dict[GGMLType, BlockDequantizer] = {}


def register_dequantizer(ggml_type: GGMLType) -> Callable[[BlockDequantizer], BlockDequantizer]:
    """Decorator making `fn` the block dequantizer of `ggml_type`.

    `fn` maps packed blocks, uint8 `(n_blocks, type_size)`, to float32
    `(n_blocks, block_size)` on the same device.
    """

    def register(fn: BlockDequantizer) -> BlockDequantizer:
        if ggml_type in _DEQUANTIZERS:
            raise ValueError(f"a dequantizer for {ggml_type.name} is already registered")
        _DEQUANTIZERS[ggml_type] = fn
        return fn

    return register


def supported_types() -> frozenset[GGMLType]:
    """The ggml types `dequantize` accepts."""
    return frozenset(_DEQUANTIZERS)


def dequantize(
    data: torch.Tensor,
    ggml_type: GGMLType,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Unpack the ggml-packed bytes of one tensor into a float tensor of `shape`.

    `data` is a uint8 tensor holding exactly the tensor's packed bytes (on any device);
    `shape` is in torch order, its last dim being the row (ggml ne0), a whole number of
    blocks. Values are computed in float32 and then cast to `dtype`; the result lives on
    `data`'s device (for F32 to float32 it may share memory with `data`).

    Raises `UnsupportedError` for a type without a dequantizer and `ModelFormatError`
    when the byte count does not match the shape.
    """
    dequantize_blocks = _DEQUANTIZERS.get(ggml_type)
    if dequantize_blocks is None:
        raise UnsupportedError(
            f"dequantization of ggml type {_type_name(ggml_type)} is not supported"
        )
    ggml_type = GGMLType(ggml_type)
    if data.dtype != torch.uint8:
        raise TypeError(f"packed {ggml_type.name} data must be a uint8 tensor, got {data.dtype}")
    n_bytes = _expected_nbytes(ggml_type, shape)
    if data.numel() != n_bytes:
        raise ModelFormatError(
            f"{ggml_type.name} tensor of shape {tuple(shape)} takes {n_bytes} bytes, "
            f"got {data.numel()}"
        )
    type_size = LAYOUTS[ggml_type].type_size
    blocks = data.reshape(n_bytes // type_size, type_size)  # (n_blocks, type_size)
    values = dequantize_blocks(blocks)  # (n_blocks, block_size)
    return values.reshape(shape).to(dtype)  # shape


def _type_name(ggml_type: int) -> str:
    try:
        return GGMLType(ggml_type).name
    except ValueError:
        return f"id {ggml_type} (unknown)"


def _expected_nbytes(ggml_type: GGMLType, shape: tuple[int, ...]) -> int:
    """Bytes a `ggml_type` tensor of `shape` takes; ModelFormatError for impossible shapes."""
    if len(shape) == 0 or any(dim < 0 for dim in shape):
        raise ModelFormatError(f"invalid shape {tuple(shape)} for a {ggml_type.name} tensor")
    try:
        return math.prod(shape[:-1]) * row_nbytes(ggml_type, shape[-1])
    except ValueError as err:
        raise ModelFormatError(f"shape {tuple(shape)}: {err}") from err


def reinterpret(field: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """View the uint8 bytes `field` (..., k) as `dtype` (..., k / dtype.itemsize).

    Copies first when the bytes are strided or not aligned for `dtype`.
    """
    field = field.contiguous()
    if field.storage_offset() % dtype.itemsize:
        field = field.clone()
    return field.view(dtype)


def f16_field(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The fp16 field at byte `offset` of every block, as float32 `(n_blocks, 1)`."""
    return reinterpret(blocks[:, offset : offset + 2], torch.float16).float()  # (n_blocks, 1)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Split each byte of uint8 `packed` (..., m) into `count` fields of `bits` bits.

    Returns uint8 (..., count, m): entry [..., i, j] is bits [i*bits, (i+1)*bits) of
    byte j, lowest bits first.
    """
    shifts = torch.arange(0, bits * count, bits, dtype=torch.uint8, device=packed.device)
    shifts = shifts.view(count, 1)  # (count, 1)
    mask = (1 << bits) - 1
    return (packed.unsqueeze(-2) >> shifts) & mask  # (..., count, m)


# The type modules register themselves on import; they need the helpers defined above.
from corral.quant import dense, kquants, legacy  # noqa: E402, F401
