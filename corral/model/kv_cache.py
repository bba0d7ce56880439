"""The static per-layer key/value cache, stored in float or in Q8_0 blocks.

Storage types use llama.cpp's names (`--cache-type-k`, `--cache-type-v`): f32, f16, bf16,
or q8_0 (int8 codes plus a float16 scale per 32 values of a head vector:
corral.kernels.kv_q8). Keys and values may differ. The default (None) stores them in the
model's compute dtype. Attention reads float: a q8_0 cache is dequantized to the compute
dtype on read, except by the decode attention kernel on CUDA, which reads the codes.

Shapes: B = cache rows, Hkv = key/value heads, S = positions, D = head dim, T = new tokens.
"""

from dataclasses import dataclass

import torch

from corral.kernels.kv_q8 import Q8_BLOCK, check_head_dim, dequantize_q8_0, quantize_q8_0

FLOAT_CACHE_TYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
CACHE_TYPES = (*FLOAT_CACHE_TYPES, "q8_0")


def check_cache_type(cache_type: str | None, head_dim: int) -> None:
    """Raise ValueError unless `cache_type` (or None, the compute dtype) can hold vectors of
    `head_dim` values."""
    if cache_type is None or cache_type in FLOAT_CACHE_TYPES:
        return
    if cache_type != "q8_0":
        raise ValueError(f"unknown KV cache type {cache_type!r}; choose from {CACHE_TYPES}")
    check_head_dim(head_dim)


def cache_value_bytes(cache_type: str | None, dtype: torch.dtype) -> float:
    """Bytes one cached value takes in `cache_type` (None: `dtype`, the compute dtype)."""
    if cache_type == "q8_0":
        return 1 + 2 / Q8_BLOCK
    if cache_type is None:
        return torch.finfo(dtype).bits / 8
    return torch.finfo(FLOAT_CACHE_TYPES[cache_type]).bits / 8


@dataclass
class CacheTensor:
    """The keys or the values of one layer: `parts` are the stored tensors, all indexed
    (B, Hkv, S, ...) alike — (values,) for a float type, (codes, scales) for q8_0."""

    cache_type: str
    dtype: torch.dtype  # the compute dtype reads return
    parts: tuple[torch.Tensor, ...]

    @classmethod
    def zeros(
        cls,
        shape: tuple[int, int, int, int],
        cache_type: str | None,
        dtype: torch.dtype,
        device: torch.device,
    ) -> "CacheTensor":
        """An empty cache of `shape` (B, Hkv, S, D)."""
        check_cache_type(cache_type, shape[-1])
        if cache_type == "q8_0":
            codes = torch.zeros(shape, dtype=torch.int8, device=device)
            scale_shape = (*shape[:-1], shape[-1] // Q8_BLOCK)  # (B, Hkv, S, D/32)
            scales = torch.zeros(scale_shape, dtype=torch.float16, device=device)
            return cls("q8_0", dtype, (codes, scales))
        stored = dtype if cache_type is None else FLOAT_CACHE_TYPES[cache_type]
        name = next(n for n, t in FLOAT_CACHE_TYPES.items() if t == stored)
        return cls(name, dtype, (torch.zeros(shape, dtype=stored, device=device),))

    @property
    def quantized(self) -> bool:
        """True when stored as Q8_0 codes and scales."""
        return self.cache_type == "q8_0"

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (..., D) in storage form, one tensor per part."""
        if self.quantized:
            return quantize_q8_0(x)
        return (x.to(self.parts[0].dtype),)

    def decode(self, parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Stored parts (indexed alike) -> values (..., D) in the compute dtype."""
        if self.quantized:
            return dequantize_q8_0(*parts, self.dtype)
        return parts[0].to(self.dtype)


class KVCache:
    """Static per-layer key/value cache: shapes never change, positions are written in place."""

    def __init__(
        self,
        batch: int,
        n_positions: int,
        n_head_kv: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        cache_types: tuple[str | None, str | None] = (None, None),
    ) -> None:
        shape = (batch, n_head_kv, n_positions, head_dim)  # (B, Hkv, S, D)
        self.batch = batch
        self.k = CacheTensor.zeros(shape, cache_types[0], dtype, device)
        self.v = CacheTensor.zeros(shape, cache_types[1], dtype, device)

    @property
    def quantized(self) -> bool:
        """True when keys or values are stored as Q8_0 blocks."""
        return self.k.quantized or self.v.quantized

    def update(
        self,
        rows: torch.Tensor | None,
        positions: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        end: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, Hkv, T, D) at `positions` (B or 1, T) of cache rows `rows` (B,)
        (None: rows 0..B-1); return those rows' cache up to position `end`, as float in the
        compute dtype (B, Hkv, end, D)."""
        self.write(rows, positions, k, v)
        return self.read(rows, k.shape[0], end)

    def write(
        self, rows: torch.Tensor | None, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> None:
        """Store k, v (B, Hkv, T, D) at `positions` (B or 1, T) of rows `rows` (B,) or 0..B-1."""
        batch = k.shape[0]
        for cache, new in ((self.k, k), (self.v, v)):
            encoded = cache.encode(new)
            if rows is None and positions.shape[0] == 1:  # one shared run of positions
                for part, value in zip(cache.parts, encoded, strict=True):
                    part[:batch, :, positions[0]] = value
                continue
            index = torch.arange(batch, device=k.device) if rows is None else rows  # (B,)
            index = index[:, None].expand(batch, positions.shape[1])  # (B, T)
            spread = positions.expand(batch, -1)  # (B, T)
            for part, value in zip(cache.parts, encoded, strict=True):
                part[index, :, spread] = value.transpose(1, 2)  # indexed view: (B, T, Hkv, ...)

    def read(
        self, rows: torch.Tensor | None, batch: int, end: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, Hkv, end, D) of rows `rows` (None: the first `batch`)."""
        index = slice(None, batch) if rows is None else rows
        key, value = (c.decode(tuple(p[index, :, :end] for p in c.parts)) for c in (self.k, self.v))
        return key, value

    def _stored(self) -> list[torch.Tensor]:
        return [*self.k.parts, *self.v.parts]

    def share_prefix(self, n_positions: int) -> None:
        """Copy sequence 0's first `n_positions` entries to every other sequence."""
        for part in self._stored():
            part[1:, :, :n_positions] = part[:1, :, :n_positions]

    def copy_prefix(self, source: int, target: int, n_positions: int) -> None:
        """Copy row `source`'s first `n_positions` entries to row `target`."""
        for part in self._stored():
            part[target, :, :n_positions] = part[source, :, :n_positions]

    def save_position(self, batch: int, position: int) -> list[torch.Tensor]:
        """Copies of rows 0..batch-1 at `position`, for :meth:`restore_position`."""
        return [part[:batch, :, position].clone() for part in self._stored()]

    def restore_position(self, batch: int, position: int, saved: list[torch.Tensor]) -> None:
        """Put back what :meth:`save_position` copied."""
        for part, value in zip(self._stored(), saved, strict=True):
            part[:batch, :, position] = value
