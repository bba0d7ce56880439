"""The ggml tensor type table: id, block size (elements) and block size (bytes).

Numbers follow ggml's `enum ggml_type` and `ggml_type_traits` (ggml/src/ggml.c). The GGUF
reader uses the table to size every tensor before touching its bytes; dequantizers
register themselves per type in `corral.quant.dequant`.
"""

from dataclasses import dataclass
from enum import IntEnum


class GGMLType(IntEnum):
    """ggml tensor element types, by their on-disk id."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39


@dataclass(frozen=True)
class TypeLayout:
    """How a type packs elements: `block_size` elements take `type_size` bytes."""

    block_size: int
    type_size: int


LAYOUTS: dict[GGMLType, TypeLayout] = {
    GGMLType.F32: TypeLayout(1, 4),
    GGMLType.F16: TypeLayout(1, 2),
    GGMLType.Q4_0: TypeLayout(32, 18),
    GGMLType.Q4_1: TypeLayout(32, 20),
    GGMLType.Q5_0: TypeLayout(32, 22),
    GGMLType.Q5_1: TypeLayout(32, 24),
    GGMLType.Q8_0: TypeLayout(32, 34),
    GGMLType.Q8_1: TypeLayout(32, 40),
    GGMLType.Q2_K: TypeLayout(256, 84),
    GGMLType.Q3_K: TypeLayout(256, 110),
    GGMLType.Q4_K: TypeLayout(256, 144),
    GGMLType.Q5_K: TypeLayout(256, 176),
    GGMLType.Q6_K: TypeLayout(256, 210),
    GGMLType.Q8_K: TypeLayout(256, 292),
    GGMLType.IQ2_XXS: TypeLayout(256, 66),
    GGMLType.IQ2_XS: TypeLayout(256, 74),
    GGMLType.IQ3_XXS: TypeLayout(256, 98),
    GGMLType.IQ1_S: TypeLayout(256, 50),
    GGMLType.IQ4_NL: TypeLayout(32, 18),
    GGMLType.IQ3_S: TypeLayout(256, 110),
    GGMLType.IQ2_S: TypeLayout(256, 82),
    GGMLType.IQ4_XS: TypeLayout(256, 136),
    GGMLType.I8: TypeLayout(1, 1),
    GGMLType.I16: TypeLayout(1, 2),
    GGMLType.I32: TypeLayout(1, 4),
    GGMLType.I64: TypeLayout(1, 8),
    GGMLType.F64: TypeLayout(1, 8),
    GGMLType.IQ1_M: TypeLayout(256, 56),
    GGMLType.BF16: TypeLayout(1, 2),
    GGMLType.TQ1_0: TypeLayout(256, 54),
    GGMLType.TQ2_0: TypeLayout(256, 66),
    GGMLType.MXFP4: TypeLayout(32, 17),
}


def row_nbytes(ggml_type: GGMLType, n_elements: int) -> int:
    """Bytes taken by one row of `n_elements`; the row must be a whole number of blocks."""
    layout = LAYOUTS[ggml_type]
    if n_elements % layout.block_size:
        raise ValueError(
            f"{ggml_type.name} rows must be a multiple of {layout.block_size} elements, "
            f"got {n_elements}"
        )
    return n_elements // layout.block_size * layout.type_size
