"""SwiGLU's gate and up as one weight with interleaved rows (`packing.interleave_rows`,
`SwiGLULinear`): `swiglu_linear` against silu(x @ G.T) * (x @ U.T) from each weight's
independent dequantization (gguf-py for GGUF blocks, corral.quant.gptq for GPTQ).

Decode batches take the matvec's epilogue (a program's rows are whole gate/up pairs: BN
of 8 for Q2_K, 4 at batch 1, 2 at batches 3 and 4; for the types the int8 matvec takes,
its epilogue, and x is compared after the same int8 rounding: `kernel_cases.decode_input`);
a split K (few rows) and batches past MATVEC_MAX_M multiply first and apply
`silu_mul_pairs` to the pairs, as does a matvec whose programs hold odd row counts. The
tests check which path ran by counting calls of `silu_mul_pairs`.
"""

import pytest
import torch
import torch.nn.functional as F
from kernel_cases import assert_close_to, decode_input, gguf_bytes, oracle_weight
from test_gptq_kernels import own_layer

import corral.kernels.triton.linear as linear_module
import corral.kernels.triton.matvec as matvec_module
from corral.config import ModelConfig
from corral.kernels.packing import interleave_rows, pack
from corral.kernels.triton.linear import swiglu_linear
from corral.kernels.triton.matvec import MatvecConfig, matvec
from corral.model.fusion import SwiGLULinear
from corral.model.layers import FeedForward
from corral.quant.gptq import dequantize_gptq
from corral.quant.linear import PackedLinear

K = 256


def gguf_pair(qtype: str, n: int, device: str):
    """(gate, up) PackedWeights of random (n, K) weights of `qtype` in the Triton layout,
    and gguf-py's float32 weights of both."""
    raws = [gguf_bytes(qtype, n, K, seed) for seed in (11, 12)]
    packed = [pack(torch.from_numpy(raw).to(device), qtype, K) for raw in raws]
    return packed, [oracle_weight(raw, qtype, K) for raw in raws]


def activations(m: int, device: str) -> torch.Tensor:
    """(m, K) float16, small enough that gate * up stays below float16's 65504."""
    return (torch.randn(m, K, generator=torch.Generator().manual_seed(m)) / 16).half().to(device)


def expected_swiglu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    x32 = x.float().cpu()
    return F.silu(x32 @ gate.T) * (x32 @ up.T)


@pytest.fixture
def pairs_calls(monkeypatch) -> list[int]:
    """Counts the calls of `silu_mul_pairs` (the paths other than the epilogue)."""
    calls: list[int] = []
    for module in (linear_module, matvec_module):
        original = module.silu_mul_pairs

        def counted(pairs, original=original):
            calls.append(1)
            return original(pairs)

        monkeypatch.setattr(module, "silu_mul_pairs", counted)
    return calls


@pytest.mark.parametrize(
    ("qtype", "n", "m", "in_epilogue"),
    [
        ("Q4_K", 256, 1, True),
        ("Q2_K", 256, 1, True),  # BN = 8
        ("Q6_K", 160, 3, True),  # BN = 2, 3 rows padded to 4
        ("Q8_0", 96, 4, True),
        ("Q4_0", 64, 7, False),  # past MATVEC_MAX_M: dequantize + matmul, then silu_mul_pairs
    ],
)
def test_swiglu_linear_matches_silu_of_gate_times_up(
    qtype: str, n: int, m: int, in_epilogue: bool, device: str, pairs_calls
):
    (gate, up), (gate_w, up_w) = gguf_pair(qtype, n, device)
    x = activations(m, device)
    out = swiglu_linear(x, interleave_rows(gate, up))
    assert_close_to(out, expected_swiglu(decode_input(x, gate), gate_w, up_w), torch.float16)
    assert len(pairs_calls) == (0 if in_epilogue else 1)


@pytest.mark.parametrize(
    "config",
    [MatvecConfig(block_n=4, groups=4, num_warps=1, splits=2), MatvecConfig(block_n=1)],
    ids=["split-k", "odd-block"],
)
def test_matvec_without_whole_pairs_multiplies_first(config, device: str, pairs_calls):
    (gate, up), (gate_w, up_w) = gguf_pair("Q5_0", 24, device)
    x = activations(2, device)
    out = matvec(x, interleave_rows(gate, up), config, swiglu=True)
    assert_close_to(out, expected_swiglu(x, gate_w, up_w), torch.float16)
    assert len(pairs_calls) == 1


@pytest.mark.parametrize("m", [1, 5])
def test_gptq_act_order_gate_and_up_with_one_column_order(m: int, device: str, pairs_calls):
    gate_qt, up_qt = own_layer(4, 64, n=64, seed=3), own_layer(4, 64, n=64, seed=4)
    up_qt.g_idx[:] = gate_qt.g_idx
    gate, up = (PackedLinear.from_qtensor(qt, torch.device(device)) for qt in (gate_qt, up_qt))
    assert SwiGLULinear.fusable(gate, up)
    x = activations(2 * m, device).view(2, m, K)
    fused = SwiGLULinear(gate, up).packed
    out = swiglu_linear(x, fused)  # (2, m, 64)
    expected = expected_swiglu(decode_input(x, fused), *map(dequantize_gptq, (gate_qt, up_qt)))
    assert_close_to(out, expected, torch.float16)
    assert len(pairs_calls) == (0 if 2 * m <= 4 else 1)


def test_interleave_rows_refuses_weights_of_different_shapes(device: str):
    (gate, _), _ = gguf_pair("Q4_0", 64, device)
    (other, _), _ = gguf_pair("Q4_0", 32, device)
    with pytest.raises(ValueError, match="cannot interleave"):
        interleave_rows(gate, other)


def test_feed_forward_interleaves_packed_gate_and_up():
    """FeedForward.fuse_projections on GPU-layout weights (here on the CPU, through torch)
    gives the MLP of the separate projections."""
    n_ff = 64
    config = ModelConfig(32, K, 1, n_ff, 4, 4, 64, 64, 10000.0, 1.0, 1e-5, 128)
    (gate, up), (gate_w, up_w) = gguf_pair("Q4_K", n_ff, "cpu")
    ffn = FeedForward(config)
    ffn.w_gate, ffn.w_up = PackedLinear(gate), PackedLinear(up)
    torch.nn.init.normal_(ffn.w_down.weight, generator=torch.Generator().manual_seed(6))
    ffn.fuse_projections()
    assert isinstance(ffn.swiglu, SwiGLULinear) and ffn.gate_up is None
    x = torch.randn(3, K, generator=torch.Generator().manual_seed(5))
    expected = expected_swiglu(x, gate_w, up_w) @ ffn.w_down.weight.detach().T  # (3, K)
    torch.testing.assert_close(ffn(x), expected, rtol=1e-4, atol=1e-4)


def test_feed_forward_keeps_cpu_layout_gate_and_up_apart():
    """The CPU kernels' layout has no interleaved form: gate and up stay one split matmul."""
    n_ff = 64
    config = ModelConfig(32, K, 1, n_ff, 4, 4, 64, 64, 10000.0, 1.0, 1e-5, 128)
    raws = [gguf_bytes("Q4_K", n_ff, K, seed) for seed in (11, 12)]
    ffn = FeedForward(config)
    ffn.w_gate, ffn.w_up = (
        PackedLinear.from_gguf_blocks(torch.from_numpy(raw), "Q4_K", (n_ff, K), torch.device("cpu"))
        for raw in raws
    )
    ffn.fuse_projections()
    assert ffn.swiglu is None and len(ffn.gate_up) == 1
    x = torch.randn(2, K, generator=torch.Generator().manual_seed(7))
    hidden = expected_swiglu(x, *(oracle_weight(raw, "Q4_K", K) for raw in raws))
    expected = hidden @ ffn.w_down.weight.detach().T  # (2, K)
    torch.testing.assert_close(ffn(x), expected, rtol=1e-3, atol=1e-3)
