"""Llama-2-shaped GGUF files with random valid weights: speed measurements without downloads.

A file has the hyperparameters of a real model (llama.cpp's Llama-2 7B / 13B / 70B, or a
tiny shape for tests), the per-tensor types llama.cpp's `llama-quantize` would choose for a
file type (Q4_K_M, Q4_0, ...; with `pure`, every matrix of the file type's base type, as
`llama-quantize --pure`), an SPM vocabulary, and random blocks that decode to sane weights:

- quantized blocks are random bytes whose fp16 scale fields are overwritten: d by a small
  positive value giving the weights an RMS of about WEIGHT_RMS (0.02, like trained Llama
  weights), dmin / m (where the type has them) by the multiple of d that centres them on 0;
  every other bit pattern of a block is valid;
- F16 / BF16 / F32 matrices are random values with |w| in [2^-7, 2^-5);
- norms are 1.

Data is generated and written one chunk at a time (a 70B Q4_K_M file is ~41 GB).
"""

import dataclasses
import itertools
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from corral.formats.gguf_writer import Progress, TensorPlan, write_gguf
from corral.quant.ggml_types import LAYOUTS, GGMLType

WEIGHT_RMS = 0.02
CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class Shape:
    """Hyperparameters of a Llama-architecture model."""

    name: str
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_vocab: int = 32000
    n_ctx: int = 4096
    rms_eps: float = 1e-5
    rope_freq_base: float = 10000.0

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head


# llama.cpp's Llama-2 hyperparameters; "tiny" keeps every row a whole number of k-quant
# super-blocks (256) and has grouped-query attention like 70B.
SHAPES: dict[str, Shape] = {
    "tiny": Shape("tiny", 256, 512, 2, 4, 2, n_vocab=512, n_ctx=512),
    "7B": Shape("7B", 4096, 11008, 32, 32, 32),
    "13B": Shape("13B", 5120, 13824, 40, 40, 40),
    "70B": Shape("70B", 8192, 28672, 80, 64, 8),
}


@dataclass(frozen=True)
class FileType:
    """A llama.cpp file type: its `llama-quantize` name, `general.file_type` id (llama.h
    LLAMA_FTYPE_*) and the type of most of its matrices."""

    name: str
    ftype: int
    base: GGMLType


FILE_TYPES: dict[str, FileType] = {
    ft.name: ft
    for ft in (
        FileType("F32", 0, GGMLType.F32),
        FileType("F16", 1, GGMLType.F16),
        FileType("Q4_0", 2, GGMLType.Q4_0),
        FileType("Q4_1", 3, GGMLType.Q4_1),
        FileType("Q8_0", 7, GGMLType.Q8_0),
        FileType("Q5_0", 8, GGMLType.Q5_0),
        FileType("Q5_1", 9, GGMLType.Q5_1),
        FileType("Q2_K", 10, GGMLType.Q2_K),
        FileType("Q3_K_S", 11, GGMLType.Q3_K),
        FileType("Q3_K_M", 12, GGMLType.Q3_K),
        FileType("Q3_K_L", 13, GGMLType.Q3_K),
        FileType("Q4_K_S", 14, GGMLType.Q4_K),
        FileType("Q4_K_M", 15, GGMLType.Q4_K),
        FileType("Q5_K_S", 16, GGMLType.Q5_K),
        FileType("Q5_K_M", 17, GGMLType.Q5_K),
        FileType("Q6_K", 18, GGMLType.Q6_K),
        FileType("BF16", 32, GGMLType.BF16),
    )
}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # as llama-quantize
FILE_TYPE_NAMES = {ft.ftype: ft.name for ft in FILE_TYPES.values()}


def file_type(name: str) -> FileType:
    """The file type called `name` (llama-quantize's names and aliases, any case)."""
    key = ALIASES.get(name.upper(), name.upper())
    if key not in FILE_TYPES:
        known = ", ".join([*FILE_TYPES, *ALIASES])
        raise ValueError(f"unknown file type {name!r}; known: {known}")
    return FILE_TYPES[key]


# -- which type each tensor gets (llama.cpp src/llama-quant.cpp, llama_tensor_get_type) ----


def _use_more_bits(layer: int, n_layer: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, every third between."""
    return layer < n_layer // 8 or layer >= 7 * n_layer // 8 or (layer - n_layer // 8) % 3 == 2


def _attn_v_type(shape: Shape, name: str, base: GGMLType, layer: int) -> GGMLType:
    gqa = shape.n_head // shape.n_head_kv
    new = base
    if name == "Q2_K":
        new = GGMLType.Q4_K if gqa >= 4 else GGMLType.Q3_K
    elif name == "Q3_K_M":
        new = GGMLType.Q5_K if layer < 2 else GGMLType.Q4_K
    elif name == "Q3_K_L":
        new = GGMLType.Q5_K
    elif name in ("Q4_K_M", "Q5_K_M") and _use_more_bits(layer, shape.n_layer):
        new = GGMLType.Q6_K
    elif name == "Q4_K_S" and layer < 4:
        new = GGMLType.Q5_K
    is_70b = shape.n_layer == 80 and shape.n_head != shape.n_head_kv  # llama.cpp's LLM_TYPE_70B
    if is_70b and new in (GGMLType.Q3_K, GGMLType.Q4_K):
        new = GGMLType.Q5_K
    return new


def _ffn_down_type(name: str, base: GGMLType, layer: int, n_layer: int) -> GGMLType:
    if name == "Q2_K":
        return GGMLType.Q3_K
    if name == "Q4_K_S" and layer < n_layer // 8:
        return GGMLType.Q5_K
    if name == "Q3_K_M":
        return GGMLType.Q5_K if layer < n_layer // 16 else GGMLType.Q4_K
    if name == "Q3_K_L":
        return GGMLType.Q5_K
    if name in ("Q4_K_M", "Q5_K_M") and _use_more_bits(layer, n_layer):
        return GGMLType.Q6_K
    return base


def tensor_type(shape: Shape, ft: FileType, role: str, layer: int, pure: bool) -> GGMLType:
    """The type llama-quantize gives the matrix `role` (token_embd, output, attn_q, ...,
    ffn_down) of layer `layer` in a llama file of type `ft`; `pure`: always the base type."""
    base = ft.base
    if pure or base in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
        return base
    if role == "output":
        return base if base == GGMLType.Q8_0 else GGMLType.Q6_K
    if role == "attn_v":
        return _attn_v_type(shape, ft.name, base, layer)
    if role == "ffn_down":
        return _ffn_down_type(ft.name, base, layer, shape.n_layer)
    if role == "attn_output":
        attn_output = {"Q2_K": GGMLType.Q3_K, "Q3_K_M": GGMLType.Q4_K, "Q3_K_L": GGMLType.Q5_K}
        return attn_output.get(ft.name, base)
    return base


def tensor_plans(shape: Shape, ft: FileType, pure: bool = False) -> list[TensorPlan]:
    """Every tensor of the file in llama.cpp's converter order, with shape (torch order)
    and type. Norms are F32."""
    e, q, kv = shape.n_embd, shape.n_head * shape.head_dim, shape.n_head_kv * shape.head_dim
    layer_shapes = {
        "attn_norm": (e,),
        "attn_q": (q, e),
        "attn_k": (kv, e),
        "attn_v": (kv, e),
        "attn_output": (e, q),
        "ffn_norm": (e,),
        "ffn_gate": (shape.n_ff, e),
        "ffn_up": (shape.n_ff, e),
        "ffn_down": (e, shape.n_ff),
    }

    def plan(name: str, role: str, dims: tuple[int, ...], layer: int = 0) -> TensorPlan:
        kind = GGMLType.F32 if len(dims) == 1 else tensor_type(shape, ft, role, layer, pure)
        return TensorPlan(f"{name}.weight", dims, kind)

    plans = [plan("token_embd", "token_embd", (shape.n_vocab, e))]
    for i in range(shape.n_layer):
        plans += [plan(f"blk.{i}.{role}", role, dims, i) for role, dims in layer_shapes.items()]
    plans.append(plan("output_norm", "output_norm", (e,)))
    plans.append(plan("output", "output", (shape.n_vocab, e)))
    return plans


# -- random blocks -------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockScales:
    """Where a block type keeps its fp16 scales. `unit_rms`: RMS of the weights of random
    blocks whose d is 1 (measured); `min_ratio`: dmin (or m) as a multiple of d, which
    centres the weights on 0 (k-quants subtract dmin * m; Q4_1 / Q5_1 add m)."""

    d_offset: int
    unit_rms: float
    min_offset: int | None = None
    min_ratio: float = 0.0


BLOCK_SCALES: dict[GGMLType, BlockScales] = {
    GGMLType.Q4_0: BlockScales(0, 4.64),
    GGMLType.Q4_1: BlockScales(0, 4.61, 2, -7.5),
    GGMLType.Q5_0: BlockScales(0, 9.24),
    GGMLType.Q5_1: BlockScales(0, 9.23, 2, -15.5),
    GGMLType.Q8_0: BlockScales(0, 74.0),
    GGMLType.Q2_K: BlockScales(80, 13.9, 82, 1.5),
    GGMLType.Q3_K: BlockScales(108, 43.3),
    GGMLType.Q4_K: BlockScales(0, 258.0, 2, 7.5),
    GGMLType.Q5_K: BlockScales(0, 527.0, 2, 15.5),
    GGMLType.Q6_K: BlockScales(208, 1366.0),
}

# Dense types: random bits with the exponent forced to 2^-7 or 2^-6 (sign, the exponent's
# lowest bit and the mantissa stay random): (word dtype, bits kept, exponent bits set).
DENSE_BITS: dict[GGMLType, tuple[type[np.unsignedinteger], int, int]] = {
    GGMLType.F16: (np.uint16, 0x87FF, 0x2000),  # exponent 8|9 of bias 15
    GGMLType.BF16: (np.uint16, 0x80FF, 0x3C00),  # exponent 120|121 of bias 127
    GGMLType.F32: (np.uint32, 0x80FFFFFF, 0x3C000000),  # exponent 120|121 of bias 127
}


def random_bytes(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` uniformly random bytes (drawn as 64-bit words: ~20x faster than Generator.bytes)."""
    words = rng.integers(0, 2**64 - 1, (n + 7) // 8, dtype=np.uint64, endpoint=True)
    return words.view(np.uint8)[:n]


def _put_f16(blocks: np.ndarray, offset: int, values: np.ndarray) -> None:
    blocks[:, offset : offset + 2] = values.astype("<f2").view(np.uint8).reshape(-1, 2)


def random_blocks(rng: np.random.Generator, ggml_type: GGMLType, n_blocks: int) -> np.ndarray:
    """`n_blocks` random valid blocks of a quantized type, uint8 (n_blocks, type_size)."""
    scales = BLOCK_SCALES[ggml_type]
    size = LAYOUTS[ggml_type].type_size
    blocks = random_bytes(rng, n_blocks * size).reshape(n_blocks, size)  # (n_blocks, size)
    d = rng.uniform(0.5, 1.5, n_blocks).astype(np.float32) * (WEIGHT_RMS / scales.unit_rms)
    _put_f16(blocks, scales.d_offset, d)
    if scales.min_offset is not None:
        _put_f16(blocks, scales.min_offset, d * scales.min_ratio)
    return blocks


def random_dense(rng: np.random.Generator, ggml_type: GGMLType, n: int) -> np.ndarray:
    """`n` random F16 / BF16 / F32 values with |w| in [2^-7, 2^-5), as raw words (n,)."""
    dtype, keep, exponent = DENSE_BITS[ggml_type]
    width = np.dtype(dtype).itemsize
    words = random_bytes(rng, n * width).view(dtype)  # (n,)
    return (words & dtype(keep)) | dtype(exponent)


def tensor_chunks(plan: TensorPlan, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The packed bytes of a random tensor, in chunks of about CHUNK_BYTES."""
    if len(plan.shape) == 1:  # norms
        yield np.ones(plan.shape, dtype="<f4")
        return
    layout = LAYOUTS[plan.ggml_type]
    per_chunk = max(1, CHUNK_BYTES // layout.type_size)
    total = plan.nbytes // layout.type_size  # blocks (elements for dense types)
    for start in range(0, total, per_chunk):
        n = min(per_chunk, total - start)
        if plan.ggml_type in BLOCK_SCALES:
            yield random_blocks(rng, plan.ggml_type, n)
        else:
            yield random_dense(rng, plan.ggml_type, n)


# -- vocabulary and metadata ---------------------------------------------------------------


def spm_vocab(n_vocab: int) -> dict[str, Any]:
    """GGUF tokenizer keys of a Llama-like SentencePiece vocabulary of `n_vocab` tokens:
    <unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF>, then pieces of growing length
    ("▁", characters, "▁a", "ab", "▁ab", ...) with falling scores. Every piece is a shorter
    piece plus one character, so SPM merges reach all of them."""
    fixed = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    if n_vocab <= len(fixed):
        raise ValueError(f"n_vocab must be more than {len(fixed)}, got {n_vocab}")
    chars = string.ascii_letters + string.digits + string.punctuation
    lower = string.ascii_lowercase
    longer = (map("".join, itertools.product(lower, repeat=k)) for k in (2, 3, 4))
    words = itertools.chain(chars, *longer)
    pieces = itertools.chain(["\u2581"], *(("\u2581" + w, w) for w in words))
    tokens = fixed + list(itertools.islice(pieces, n_vocab - len(fixed)))
    if len(tokens) != n_vocab:
        raise ValueError(f"n_vocab {n_vocab} is larger than this vocabulary can grow")
    scores = np.zeros(n_vocab, dtype=np.float32)
    scores[len(fixed) :] = -np.arange(n_vocab - len(fixed), dtype=np.float32)
    types = np.full(n_vocab, 1, dtype=np.int32)  # NORMAL
    types[:3] = (2, 3, 3)  # UNKNOWN, CONTROL, CONTROL
    types[3 : len(fixed)] = 6  # BYTE
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    }


def shaped_metadata(shape: Shape, ft: FileType, pure: bool = False) -> dict[str, Any]:
    """The GGUF metadata of a shaped file (keys and value types as llama.cpp writes them)."""
    name = f"llama-2-{shape.name}-shaped-{ft.name}{'-pure' if pure else ''} (random weights)"
    return {
        "general.architecture": "llama",
        "general.type": "model",
        "general.name": name,
        "llama.block_count": shape.n_layer,
        "llama.context_length": shape.n_ctx,
        "llama.embedding_length": shape.n_embd,
        "llama.feed_forward_length": shape.n_ff,
        "llama.attention.head_count": shape.n_head,
        "llama.attention.head_count_kv": shape.n_head_kv,
        "llama.rope.freq_base": shape.rope_freq_base,
        "llama.attention.layer_norm_rms_epsilon": shape.rms_eps,
        "general.file_type": ft.ftype,
        "llama.vocab_size": shape.n_vocab,
        "llama.rope.dimension_count": shape.head_dim,
        "general.quantization_version": 2,
        **spm_vocab(shape.n_vocab),
    }


@dataclass(frozen=True)
class ShapedFile:
    """What `write_shaped_gguf` wrote."""

    path: Path
    size: int
    n_params: int
    types: Counter[str]


def write_shaped_gguf(
    path: str | Path,
    shape: Shape | str,
    ft: FileType | str,
    *,
    pure: bool = False,
    seed: int = 0,
    n_layer: int | None = None,
    progress: Progress | None = None,
) -> ShapedFile:
    """Write a `shape`-shaped llama GGUF of file type `ft` with random weights (the same
    file for the same arguments). `n_layer` overrides the shape's layer count."""
    shape = SHAPES[shape] if isinstance(shape, str) else shape
    if n_layer is not None:
        shape = dataclasses.replace(shape, n_layer=n_layer)
    ft = file_type(ft) if isinstance(ft, str) else ft
    plans = tensor_plans(shape, ft, pure)
    index = {plan.name: i for i, plan in enumerate(plans)}

    def chunks(plan: TensorPlan) -> Iterator[np.ndarray]:
        # one generator per tensor: its bytes depend only on the seed and its place
        return tensor_chunks(plan, np.random.default_rng((seed, index[plan.name])))

    size = write_gguf(path, shaped_metadata(shape, ft, pure), plans, chunks, progress)
    return ShapedFile(
        path=Path(path),
        size=size,
        n_params=sum(int(np.prod(plan.shape)) for plan in plans),
        types=Counter(plan.ggml_type.name for plan in plans),
    )
