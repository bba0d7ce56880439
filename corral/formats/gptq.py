"""GPTQ checkpoints: the quantization config and the per-layer tensors, validated.

Config: ``quantize_config.json`` (AutoGPTQ, GPTQModel) or the ``quantization_config`` object
of ``config.json`` (transformers/optimum), with ``quant_method`` "gptq":

| key               | values                       | meaning                                  |
|-------------------|------------------------------|------------------------------------------|
| bits              | 2, 3, 4, 8                   | bits per weight                          |
| group_size        | > 0, or -1                   | input columns per scale; -1 = whole row  |
| desc_act          | bool (false)                 | act-order: g_idx maps columns to groups   |
| sym               | bool (true)                  | symmetric grid (informational here)      |
| checkpoint_format | "gptq" (default), "gptq_v2"  | zero stored minus one (v1), or as is (v2) |

Tensors of a quantized linear ``P`` with K inputs, N outputs, G = ceil(K / group_size)
groups: ``P.qweight`` int32 (K*bits/32, N), ``P.qzeros`` int32 (G, N*bits/32), ``P.scales``
float (G, N), ``P.g_idx`` int (K,) with values in [0, G) (optional without act-order), and
an optional all-zero ``P.bias``. Any mismatch is refused naming the layer and the file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from corral.errors import ModelFormatError, UnsupportedError
from corral.formats.hf import read_json_object
from corral.quant.gptq import CHECKPOINT_FORMATS, RUN, SUPPORTED_BITS, zero_points
from corral.weights.qtensor import QTensor

QUANTIZE_CONFIG = "quantize_config.json"
MAX_GROUP_SIZE = 1 << 20
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)


@dataclass(frozen=True)
class GPTQConfig:
    """How a GPTQ checkpoint is quantized (see the module docstring)."""

    bits: int
    group_size: int
    desc_act: bool
    sym: bool
    checkpoint_format: str
    model_file_base_name: str | None = None


def _field(raw: Mapping[str, Any], key: str, kind: type, default: Any, source: str) -> Any:
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ModelFormatError(
            f"{source}: '{key}' should be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def parse_gptq_config(raw: Mapping[str, Any], source: str) -> GPTQConfig:
    """Validate a GPTQ quantization config object (``source`` names it in errors)."""
    method = _field(raw, "quant_method", str, "gptq", source)
    if method != "gptq":
        raise UnsupportedError(f"{source}: quant_method {method!r} is not supported (gptq only)")
    bits = _field(raw, "bits", int, None, source)
    if bits not in SUPPORTED_BITS:
        raise ModelFormatError(f"{source}: 'bits' must be one of {SUPPORTED_BITS}, got {bits}")
    group_size = _field(raw, "group_size", int, -1, source)
    if group_size != -1 and not 0 < group_size <= MAX_GROUP_SIZE:
        raise ModelFormatError(f"{source}: 'group_size' must be positive or -1, got {group_size}")
    fmt = _field(raw, "checkpoint_format", str, None, source) or _field(
        raw, "format", str, "gptq", source
    )
    if fmt not in CHECKPOINT_FORMATS:
        raise UnsupportedError(
            f"{source}: checkpoint_format {fmt!r} is not supported "
            f"({', '.join(CHECKPOINT_FORMATS)})"
        )
    pack_dtype = _field(raw, "pack_dtype", str, "int32", source)
    if pack_dtype not in ("int32", "torch.int32"):
        raise UnsupportedError(f"{source}: pack_dtype {pack_dtype!r} is not supported (int32)")
    return GPTQConfig(
        bits=bits,
        group_size=group_size,
        desc_act=_field(raw, "desc_act", bool, False, source),
        sym=_field(raw, "sym", bool, True, source),
        checkpoint_format=fmt,
        model_file_base_name=_field(raw, "model_file_base_name", str, None, source),
    )


def read_gptq_config(folder: Path, config_json: Mapping[str, Any]) -> GPTQConfig | None:
    """The folder's GPTQ config: ``quantize_config.json``, else config.json's
    ``quantization_config``; None for an unquantized model. Other quantization methods
    (AWQ, bitsandbytes, ...) are refused."""
    path = folder / QUANTIZE_CONFIG
    raw = read_json_object(path, required=False)
    if raw is not None:
        return parse_gptq_config(raw, str(path))
    embedded = config_json.get("quantization_config")
    if embedded is None:
        return None
    source = f"{folder / 'config.json'}: quantization_config"
    if not isinstance(embedded, dict):
        raise ModelFormatError(f"{source}: expected an object")
    return parse_gptq_config(embedded, source)


TensorGetter = Callable[[str], torch.Tensor | None]


def read_gptq_linear(
    prefix: str,
    get: TensorGetter,
    config: GPTQConfig,
    shape: tuple[int, int],
    source: str,
) -> QTensor:
    """The QTensor of layer `prefix` (e.g. "model.layers.0.self_attn.q_proj") whose dense
    weight is `shape` (N, K). `get(name)` returns a stored tensor or None when absent."""
    where = f"{source}: layer '{prefix}'"
    n_out, n_in = shape
    bits = config.bits
    if n_in % RUN or n_out % RUN:
        raise ModelFormatError(
            f"{where}: GPTQ needs in/out features divisible by {RUN}, got {n_in} and {n_out}"
        )
    group_size = n_in if config.group_size == -1 else config.group_size
    n_groups = math.ceil(n_in / group_size)

    def tensor(suffix: str, dtypes: tuple[torch.dtype, ...], expected: tuple[int, ...]):
        value = get(f"{prefix}.{suffix}")
        if value is None:
            return None
        if value.dtype not in dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
            raise ModelFormatError(f"{where}: {suffix} is {value.dtype}, expected {names}")
        if tuple(value.shape) != expected:
            raise ModelFormatError(
                f"{where}: {suffix} has shape {list(value.shape)}, but {bits}-bit weights of "
                f"shape [{n_out}, {n_in}] with group size {config.group_size} need {list(expected)}"
            )
        return value

    qweight = tensor("qweight", (torch.int32,), (n_in * bits // 32, n_out))
    qzeros = tensor("qzeros", (torch.int32,), (n_groups, n_out * bits // 32))
    scales = tensor("scales", FLOAT_DTYPES, (n_groups, n_out))
    g_idx = tensor("g_idx", INDEX_DTYPES, (n_in,))
    for name, value in (("qweight", qweight), ("qzeros", qzeros), ("scales", scales)):
        if value is None:
            raise ModelFormatError(f"{where}: tensor '{prefix}.{name}' is missing")
    assert qweight is not None and qzeros is not None and scales is not None
    if g_idx is None:
        if config.desc_act:
            raise ModelFormatError(f"{where}: desc_act is set but '{prefix}.g_idx' is missing")
        g_idx = torch.arange(n_in, dtype=torch.int32) // group_size
    elif n_in and (int(g_idx.min()) < 0 or int(g_idx.max()) >= n_groups):
        raise ModelFormatError(
            f"{where}: g_idx values span [{int(g_idx.min())}, {int(g_idx.max())}], outside the "
            f"{n_groups} groups [0, {n_groups})"
        )
    bias = tensor("bias", FLOAT_DTYPES, (n_out,))
    if bias is not None and bool(bias.any()):
        raise UnsupportedError(f"{where}: a non-zero bias is not supported (Llama has none)")
    return QTensor(
        scheme="gptq",
        shape=shape,
        bits=bits,
        group_size=group_size,
        qweight=qweight,
        scales=scales,
        zeros=zero_points(qzeros, bits, config.checkpoint_format).to(torch.int16),
        g_idx=g_idx.to(torch.int32),
    )
