"""Fused projections (corral.model.fusion): runs of linears that read the same input, as
one matmul, against each weight's independent dequantization (gguf-py for GGUF blocks,
corral.quant.gptq — itself bit-exact with AutoGPTQ — for GPTQ).

A Q4_K_M layer stores Q, K in Q4_K and V in Q6_K: Q and K fuse, V stays apart. GPTQ
act-order weights fuse only when their column orders agree. Through the Triton kernels
(Triton's interpreter on CPU) at batch 1 (matvec) and 7 (dequantize + matmul).
"""

import pytest
import torch
from kernel_cases import assert_close_to, decode_input, gguf_bytes, oracle_weight
from test_gptq_kernels import own_layer

from corral.kernels.packing import pack
from corral.model.fusion import fuse_runs, int8_bits
from corral.quant.gptq import dequantize_gptq
from corral.quant.linear import PackedLinear

K = 256


def gguf_linear(qtype: str, n: int, seed: int, device: str):
    """(PackedLinear, gguf-py's float32 weight) of a random (n, K) weight of `qtype`."""
    raw = gguf_bytes(qtype, n, K, seed)
    linear = PackedLinear.from_gguf_blocks(
        torch.from_numpy(raw), qtype, (n, K), torch.device(device)
    )
    return linear, oracle_weight(raw, qtype, K)


def outputs(runs, x: torch.Tensor) -> list[torch.Tensor]:
    return [out for run in runs for out in run(x)]


def activations(m: int, device: str) -> torch.Tensor:
    return torch.randn(m, K, generator=torch.Generator().manual_seed(m)).half().to(device)


@pytest.mark.parametrize("m", [1, 7])
def test_q4_k_m_attention_fuses_q_and_k_and_keeps_v_apart(m: int, device: str):
    layers = [gguf_linear(t, n, s, device) for s, (t, n) in enumerate(
        [("Q4_K", 64), ("Q4_K", 32), ("Q6_K", 32)]
    )]  # fmt: skip
    runs = fuse_runs([linear for linear, _ in layers])
    assert [run.sizes for run in runs] == [[64, 32], [32]]
    x = activations(m, device)
    for out, (linear, weight) in zip(outputs(runs, x), layers, strict=True):
        assert_close_to(out, decode_input(x, linear.packed) @ weight.T, torch.float16)


def test_gate_and_up_of_one_type_become_one_matmul(device: str):
    layers = [gguf_linear("Q4_0", 96, seed, device) for seed in (5, 6)]
    runs = fuse_runs([linear for linear, _ in layers])
    assert len(runs) == 1 and runs[0].linear.packed.shape == (192, K)
    x = activations(1, device)
    for out, (linear, weight) in zip(outputs(runs, x), layers, strict=True):
        assert_close_to(out, decode_input(x, linear.packed) @ weight.T, torch.float16)


def test_gptq_act_order_fuses_only_with_the_same_column_order(device: str):
    first, other = own_layer(4, 64, n=32, seed=1), own_layer(4, 64, n=48, seed=2)
    same_order = own_layer(4, 64, n=48, seed=3)
    same_order.g_idx[:] = first.g_idx
    layers = [first, same_order, other]
    linears = [PackedLinear.from_qtensor(qt, torch.device(device)) for qt in layers]
    runs = fuse_runs(linears)
    assert [run.sizes for run in runs] == [[32, 48], [48]]
    x = activations(3, device)
    for out, qt in zip(outputs(runs, x), layers, strict=True):
        assert_close_to(out, x.float().cpu() @ dequantize_gptq(qt).T, torch.float16)


def test_dense_weights_fuse_into_one_linear():
    linears = [torch.nn.Linear(K, n, bias=False) for n in (64, 16, 16)]
    runs = fuse_runs(linears)
    assert len(runs) == 1
    x = torch.randn(5, K)
    for out, linear in zip(outputs(runs, x), linears, strict=True):
        torch.testing.assert_close(out, linear(x), rtol=1e-5, atol=1e-5)


def test_int8_bits_of_projections_that_share_an_input(device: str, monkeypatch):
    """The int8 blocks an input's RMSNorm writes: the bits every packed weight reading it
    takes; 0 when one of them multiplies float activations (a dense weight, Q8_0 by
    default, numba's CPU layout)."""

    def triton_linear(qtype: str) -> PackedLinear:  # Triton's layout, on any device
        return PackedLinear(pack(torch.from_numpy(gguf_bytes(qtype, 32, K, 1)), qtype, K))

    q4k, q6k, q8 = (triton_linear(t) for t in ("Q4_K", "Q6_K", "Q8_0"))
    assert int8_bits(fuse_runs([q4k, q4k, q6k])) == 4  # Q4_K_M's Q, K (fused) and V
    assert int8_bits([q4k, None, q8]) == 0
    assert int8_bits([q4k, torch.nn.Linear(K, 32, bias=False)]) == 0
    cpu_layout = gguf_linear("Q4_K", 32, 1, "cpu")[0]
    assert int8_bits([cpu_layout]) == 0
    monkeypatch.setenv("CORRAL_INT8_ACT", "0")
    assert int8_bits([q4k]) == 0
