"""AutoGPTQ's own code as an independent GPTQ reference, loaded by file path from its sdist.

The auto-gptq package does not import against transformers 5, but three of its files work
on their own: ``nn_modules/qlinear/qlinear_cuda.py`` (``QuantLinear.pack`` and, without the
CUDA extension, a pure-torch dequantizing forward that honours ``g_idx``) and
``quantization/gptq.py`` + ``quantization/quantizer.py`` (the GPTQ algorithm). The sdist is
fetched once with pip into the test cache (see ``tests.reference_data.cache_dir``).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pathlib
import sys
import tarfile
import tempfile
import types
from typing import Any

import torch

from tests.reference_data import cache_dir, download_sdist

AUTO_GPTQ_VERSION = "0.7.1"
_SDIST_NAME = f"auto_gptq-{AUTO_GPTQ_VERSION}.tar.gz"
_PREFIX = f"auto_gptq-{AUTO_GPTQ_VERSION}/auto_gptq/"
_FILES = (
    "nn_modules/qlinear/qlinear_cuda.py",
    "quantization/gptq.py",
    "quantization/quantizer.py",
)


def _sdist() -> pathlib.Path:
    """The cached auto-gptq sdist.

    Its setup.py imports torch to decide about CUDA extensions, hence BUILD_CUDA_EXT=0 and
    --no-build-isolation (only the metadata step runs; nothing is built or installed).
    """
    return download_sdist(
        f"auto-gptq=={AUTO_GPTQ_VERSION}",
        _SDIST_NAME,
        pip_args=("--no-build-isolation",),
        env={"BUILD_CUDA_EXT": "0"},
    )


@functools.cache
def _source_dir() -> pathlib.Path:
    """Directory holding the few auto_gptq files the tests load, extracted on first use."""
    root = cache_dir() / f"auto_gptq-{AUTO_GPTQ_VERSION}"
    if all((root / name).is_file() for name in _FILES):
        return root
    with tarfile.open(_sdist(), "r:gz") as tar:
        for name in _FILES:
            member = tar.getmember(_PREFIX + name)
            source = tar.extractfile(member)
            if source is None:
                raise ValueError(f"{name} in {_SDIST_NAME} is not a regular file")
            dest = root / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            with source, tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as out:
                out.write(source.read())
            os.replace(out.name, dest)
    return root


def _load(module_name: str, path: pathlib.Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@functools.cache
def quant_linear_class() -> Any:
    """AutoGPTQ's ``qlinear_cuda.QuantLinear`` (torch fallback: no CUDA extension)."""
    module = _load("autogptq_ref_qlinear_cuda", _source_dir() / _FILES[0])
    return module.QuantLinear


@functools.cache
def gptq_module() -> types.ModuleType:
    """AutoGPTQ's ``quantization.gptq`` module (``GPTQ``), its ``.quantizer`` import served
    by a stand-in package pointing at the extracted ``quantization/`` folder."""
    package = types.ModuleType("autogptq_ref_quantization")
    package.__path__ = [str(_source_dir() / "quantization")]
    sys.modules[package.__name__] = package
    _load(f"{package.__name__}.quantizer", _source_dir() / _FILES[2])
    return _load(f"{package.__name__}.gptq", _source_dir() / _FILES[1])


def quantizer_module() -> types.ModuleType:
    """AutoGPTQ's ``quantization.quantizer`` module (``Quantizer``, round-to-nearest)."""
    gptq_module()
    return sys.modules["autogptq_ref_quantization.quantizer"]


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int, sym: bool) -> torch.Tensor:
    """Round-to-nearest (N, K) with AutoGPTQ's ``Quantizer``: one min/max grid per row and
    group of `group_size` input columns (-1: the whole row), as its GPTQ grids are built."""
    quantizer = quantizer_module().Quantizer()
    quantizer.configure(bits, perchannel=True, sym=sym, mse=False)
    size = group_size if group_size != -1 else weight.shape[1]
    parts = []
    for start in range(0, weight.shape[1], size):
        part = weight[:, start : start + size]  # (N, size)
        quantizer.find_params(part, weight=True)
        parts.append(quantizer.quantize(part))
    return torch.cat(parts, dim=1)


def dequantize_packed(tensors: dict[str, torch.Tensor], bits: int, group_size: int) -> torch.Tensor:
    """The (N, K) float32 weight AutoGPTQ's torch forward computes from packed tensors
    ``qweight``, ``qzeros``, ``scales``, ``g_idx`` (scales taken as float32, so the products
    are exact): its output for the identity input is W^T. The tensors are loaded with
    ``load_state_dict(strict=True)``, which also checks their shapes against AutoGPTQ's."""
    n_in = tensors["g_idx"].shape[0]
    n_out = tensors["scales"].shape[1]
    layer = quant_linear_class()(bits, group_size, n_in, n_out, bias=False)
    layer.load_state_dict(tensors, strict=True)
    layer.scales = layer.scales.float()
    with torch.no_grad():
        return layer(torch.eye(n_in)).t().contiguous()  # (N, K)
