"""The GPU path's wiring, run on the CPU: llama.cpp-quantized tiny models whose matrices
are packed in the Triton kernels' layout (not the CPU kernels'), every linear through
`quantized_linear` (SwiGLU's gate and up through `swiglu_linear`, its product in the
matvec's epilogue; 4-bit types on the int8 activations that the norms write) and the
other fused kernels (norms, RoPE with the KV-cache store, decode and prefill attention)
in Triton's interpreter, against llama.cpp's logits.

A prompt chunk takes the dense path (dequantize + matmul), the tokens after it one at a
time the matvec (the int8 one for Q4_K_M's Q4_K and Q6_K and, when asked for, Q2_K's Q2_K
and Q3_K; the float one for Q8_0), with tiles of 64 rows: the interpreter runs one
program at a time, ~40 ms each whatever its size (the kernel tests cover the default
tiles).
tests/model/test_gpu_path.py runs these models on a GPU, with CUDA graphs; this test runs
in CI, which has none. Without the interpreter (a GPU machine runs the suite without it)
CPU tensors take the torch reference path instead.
"""

import numpy as np
import pytest
import torch

import corral.kernels.triton.matvec as matvec_module
import corral.kernels.triton.matvec_int8 as matvec_int8_module
from corral.kernels.packing import pack
from corral.kernels.triton import int8_act
from corral.kernels.triton.linear import quantized_linear, swiglu_linear
from corral.model.fusion import SwiGLULinear
from corral.quant.linear import PackedLinear
from tests.model.test_llama_cpp_golden import (
    TINY_LLAMA_CPP_TOLERANCE,
    golden,
    load_model,
    tiny_path,
)

PROMPT = 60  # tokens of the first chunk; the rest of the 64 go one by one


@pytest.fixture
def triton_layout(monkeypatch):
    """Load GGUF matrices in the Triton layout on the CPU and multiply through the Triton
    launchers (which run the kernels in the interpreter there)."""

    def from_gguf_blocks(cls, raw, qtype, shape, device):
        return cls(pack(raw.to(device).view(shape[0], -1), qtype, shape[1]))

    monkeypatch.setattr(PackedLinear, "from_gguf_blocks", classmethod(from_gguf_blocks))
    monkeypatch.setattr(PackedLinear, "forward", lambda self, x: quantized_linear(x, self.packed))
    monkeypatch.setattr(
        SwiGLULinear, "forward", lambda self, x: swiglu_linear(x, self.packed, self.out_int8_bits)
    )
    default = matvec_module.default_config

    def wide_tiles(qtype: str, m: int, k: int = 4096) -> matvec_module.MatvecConfig:
        config = default(qtype, m, k)
        return matvec_module.MatvecConfig(64, config.groups, config.num_warps, split_waves=0)

    monkeypatch.setattr(matvec_module, "default_config", wide_tiles)
    monkeypatch.setattr(matvec_int8_module, "DEFAULT_TILES", matvec_int8_module.Int8Tiles(64))


@pytest.mark.parametrize(
    ("kind", "int8_setting", "down", "bits"),
    [("Q4_K_M", "1", "0", 4), ("Q8_0", "1", "0", 0), ("Q2_K", "all", "1", 2)],
)
def test_tiny_model_through_the_gpu_kernels_matches_llama_cpp(
    kind: str, int8_setting: str, down: str, bits: int, triton_layout, monkeypatch
):
    """Q4_K_M's Q4_K and Q6_K projections read int8 blocks that the norms write; Q8_0
    keeps float activations (matvec_int8.int8_enabled); Q2_K's Q2_K and Q3_K take the
    int8 matvec when asked for (CORRAL_INT8_ACT=all), with 2-bit blocks (64 weights),
    and the down projection's blocks from SwiGLU's epilogue (CORRAL_INT8_DOWN=1)."""
    monkeypatch.setenv("CORRAL_INT8_ACT", int8_setting)
    monkeypatch.setenv("CORRAL_INT8_DOWN", down)
    path = tiny_path(kind)
    gold = golden(f"tiny-llama-{kind}.npz", path)
    model = load_model(path)
    model.use_fused_kernels(devices=("cpu",))
    assert all(isinstance(layer.ffn.swiglu, SwiGLULinear) for layer in model.layers)
    assert all(layer.attn.fused for layer in model.layers)
    norms = [norm for layer in model.layers for norm in (layer.attn_norm, layer.ffn_norm)]
    assert {norm.int8_bits for norm in norms} == {bits}
    assert {layer.attn.out_int8_bits for layer in model.layers} == {bits}  # wo's input
    down_bits = {layer.ffn.swiglu.out_int8_bits for layer in model.layers}
    assert down_bits == {bits if down == "1" else 0}
    ids = torch.tensor(gold["input_ids"][None], dtype=torch.long)  # (1, 64)
    rows = [model(ids[:, :PROMPT], 0)[0]]  # (PROMPT, V)
    quantized = []  # the decode steps' quantizing launches: the products no kernel fed
    original = int8_act.quantize_activations
    monkeypatch.setattr(
        int8_act, "quantize_activations", lambda x, *a: quantized.append(1) or original(x, *a)
    )
    for position in range(PROMPT, ids.shape[1]):
        rows.append(model(ids[:, position : position + 1], position)[0])  # (1, V)
    logits = torch.cat(rows).numpy()  # (64, V)
    steps, n_layers = ids.shape[1] - PROMPT, len(model.layers)
    assert len(quantized) == steps * (n_layers if bits and down == "0" else 0)  # down's x
    assert np.abs(logits - gold["logits"]).max() < TINY_LLAMA_CPP_TOLERANCE
    assert (logits.argmax(-1) == gold["logits"].argmax(-1)).all()
