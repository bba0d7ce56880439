"""corral's GPTQ algorithm and AutoGPTQ packing against AutoGPTQ 0.7.1's own code.

References (loaded by file path from the auto-gptq sdist, see tests/autogptq_reference.py):
``QuantLinear.pack`` of ``qlinear_cuda.py`` for the bytes of qweight/qzeros/scales/g_idx,
its pure-torch forward for dequantization, ``quantization/gptq.py``'s ``GPTQ`` for the
algorithm, and ``quantization/quantizer.py``'s ``Quantizer`` for round-to-nearest.
"""

import pytest
import torch
from torch import nn

from corral.quant.gptq_algorithm import (
    GPTQResult,
    GPTQSpec,
    HessianAccumulator,
    dequantize_result,
    gptq_quantize,
)
from corral.quant.gptq_pack import pack_gptq
from tests.autogptq_reference import gptq_module, quant_linear_class, rtn_quantize

BITS = (2, 3, 4, 8)
GROUP_SIZES = (32, 64, 128, -1)


def random_result(bits: int, group_size: int, act_order: bool, k: int, n: int, seed: int):
    """Random codes, zero points in [1, 2^bits), fp16-exact scales and a g_idx."""
    gen = torch.Generator().manual_seed(seed)
    maxq = (1 << bits) - 1
    size = group_size if group_size != -1 else k
    n_groups = -(-k // size)
    g_idx = torch.arange(k, dtype=torch.int32) // size  # (K,)
    if act_order:
        g_idx = g_idx[torch.randperm(k, generator=gen)]
    scales = (torch.rand(n_groups, n, generator=gen) * 0.05 + 1e-3).half().float()  # (G, N)
    return GPTQResult(
        codes=torch.randint(0, maxq + 1, (n, k), generator=gen, dtype=torch.uint8),
        scales=scales,
        zeros=torch.randint(1, maxq + 1, (n_groups, n), generator=gen, dtype=torch.int32),
        g_idx=g_idx,
    )


def autogptq_pack(result: GPTQResult, bits: int, group_size: int):
    """Pack with AutoGPTQ: it takes a linear holding the dequantized weight and recomputes
    the codes (exactly, since scales are fp16 values and codes * scale fits float32)."""
    n, k = result.codes.shape
    g = result.g_idx.long()
    weight = result.scales[g].t() * (result.codes.float() - result.zeros.float()[g].t())  # (N, K)
    linear = nn.Linear(k, n, bias=False)
    linear.weight.data = weight
    layer = quant_linear_class()(bits, group_size, k, n, bias=False)
    layer.pack(linear, result.scales.t().clone(), result.zeros.t().float().clone(), result.g_idx)
    return layer


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("act_order", [False, True], ids=["static", "act-order"])
def test_pack_is_byte_identical_to_autogptq(bits, group_size, act_order):
    result = random_result(bits, group_size, act_order, k=256, n=64, seed=bits * 10 + group_size)
    ours = pack_gptq(result, bits)
    reference = autogptq_pack(result, bits, group_size)
    for name in ("qweight", "qzeros", "g_idx"):
        expected = getattr(reference, name)
        assert ours[name].dtype == expected.dtype == torch.int32, name
        assert torch.equal(ours[name], expected), name
    assert ours["scales"].dtype == torch.float16
    assert torch.equal(ours["scales"], reference.scales.half())


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", [32, -1])
def test_autogptq_dequantizes_our_packing(bits, group_size):
    """AutoGPTQ's torch forward on our tensors reproduces scale * (code - zero)."""
    k, n = 128, 96
    result = random_result(bits, group_size, act_order=True, k=k, n=n, seed=bits)
    layer = quant_linear_class()(bits, group_size, k, n, bias=False)
    for name, tensor in pack_gptq(result, bits).items():
        setattr(layer, name, tensor)
    with torch.no_grad():
        weight = layer(torch.eye(k, dtype=torch.float16))  # (K, N) = W^T
    assert torch.equal(weight.t(), dequantize_result(result).half())


def test_pack_refuses_what_the_format_cannot_hold():
    good = random_result(4, 32, act_order=False, k=64, n=32, seed=0)
    zeros = good.zeros.clone()
    zeros[0, 0] = 0
    with pytest.raises(ValueError, match="zero points"):
        pack_gptq(GPTQResult(good.codes, good.scales, zeros, good.g_idx), 4)
    g_idx = good.g_idx.clone()
    g_idx[3] = 2
    with pytest.raises(ValueError, match="g_idx"):
        pack_gptq(GPTQResult(good.codes, good.scales, good.zeros, g_idx), 4)
    with pytest.raises(ValueError, match="exceed"):
        pack_gptq(good, 2)
    odd = GPTQResult(good.codes[:20], good.scales[:, :20], good.zeros[:, :20], good.g_idx)
    with pytest.raises(ValueError, match="divisible by 32"):
        pack_gptq(odd, 4)


def calibration_batches(k: int, seed: int, n_batches: int = 4) -> list[torch.Tensor]:
    """Correlated activations with uneven feature scales and one dead feature, as (B, T, K)."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(k, k, generator=gen) / k**0.5  # (K, K)
    feature_scale = torch.exp(torch.randn(k, generator=gen))  # (K,)
    batches = []
    for _ in range(n_batches):
        z = torch.randn(2, 64, k, generator=gen)  # (B, T, K)
        x = (z + 0.5 * z @ mixing) * feature_scale
        x[..., 5] = 0.0
        batches.append(x)
    return batches


def random_weight(n: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=gen) * 0.05  # (N, K)


def reference_gptq(weight, batches, spec: GPTQSpec, monkeypatch):
    """AutoGPTQ's GPTQ on the same layer and batches: (codes (N, K), scale, zero, g_idx, H)."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)  # CPU-only torch
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = weight.clone()
    gptq = gptq_module().GPTQ(linear)
    gptq.quantizer.configure(spec.bits, perchannel=True, sym=spec.sym, mse=False)
    for x in batches:
        gptq.add_batch(x, linear(x))
    hessian = gptq.H.clone()
    scale, zero, g_idx = gptq.fasterquant(
        percdamp=spec.damp, group_size=spec.group_size, actorder=spec.act_order
    )
    g = g_idx.long()
    codes = torch.round(linear.weight.data / scale[:, g] + zero[:, g])  # (N, K)
    return codes, scale.t(), zero.t(), g_idx, hessian


def accumulate(batches, k: int) -> torch.Tensor:
    accumulator = HessianAccumulator(k)
    for x in batches:
        accumulator.add(x)
    return accumulator.hessian


@pytest.mark.parametrize(
    "bits,group_size,sym,act_order",
    [
        (4, 128, True, False),
        (4, 32, True, True),
        (3, -1, False, True),
        (2, 64, False, False),
        (8, 32, False, True),
        (3, 128, True, True),
    ],
)
def test_same_codes_as_autogptq_gptq(bits, group_size, sym, act_order, monkeypatch):
    k, n = 256, 64
    weight = random_weight(n, k, seed=bits)
    batches = calibration_batches(k, seed=group_size + bits)
    spec = GPTQSpec(bits=bits, group_size=group_size, sym=sym, act_order=act_order, damp=0.01)
    codes, scales, zeros, g_idx, hessian = reference_gptq(weight, batches, spec, monkeypatch)
    ours_hessian = accumulate(batches, k)
    torch.testing.assert_close(ours_hessian, hessian, rtol=1e-6, atol=1e-6)
    result = gptq_quantize(weight, hessian, spec)
    assert torch.equal(result.g_idx, g_idx)
    torch.testing.assert_close(result.scales, scales, rtol=1e-6, atol=0)
    assert torch.equal(result.zeros.float(), zeros)
    # the same float32 operations in the same order: every code agrees
    mismatch = (result.codes.float() != codes).float().mean().item()
    assert mismatch == 0.0, f"{mismatch:.2%} of codes differ from AutoGPTQ's"


def output_error(weight: torch.Tensor, quantized: torch.Tensor, batches) -> float:
    x = torch.cat([b.reshape(-1, b.shape[-1]) for b in batches])  # (tokens, K)
    return torch.linalg.norm(x @ (weight - quantized).t()).item()


@pytest.mark.parametrize(
    "bits,group_size,sym", [(2, 32, False), (3, 64, True), (4, 128, True), (4, -1, False)]
)
@pytest.mark.parametrize("act_order", [False, True], ids=["static", "act-order"])
def test_gptq_output_error_below_round_to_nearest(bits, group_size, sym, act_order):
    k, n = 256, 96
    weight = random_weight(n, k, seed=7)
    batches = calibration_batches(k, seed=8)
    spec = GPTQSpec(bits=bits, group_size=group_size, sym=sym, act_order=act_order, min_zero=1)
    result = gptq_quantize(weight, accumulate(batches, k), spec)
    gptq_error = output_error(weight, dequantize_result(result, torch.float32), batches)
    rtn = rtn_quantize(weight, spec.bits, spec.group_size, spec.sym)
    rtn_error = output_error(weight, rtn, batches)
    assert gptq_error < 0.95 * rtn_error, (gptq_error, rtn_error)


def test_asymmetric_zero_points_fit_the_gptq_format():
    """min_zero=1 keeps every zero point storable as zero - 1, even for one-signed groups."""
    weight = random_weight(32, 64, seed=3).abs()  # all >= 0: a plain min/max grid has zero 0
    weight[:, :32] -= 0.001
    spec = GPTQSpec(bits=2, group_size=32, sym=False, min_zero=1)
    result = gptq_quantize(weight, torch.eye(64), spec)
    assert int(result.zeros.min()) >= 1
    error = (dequantize_result(result, torch.float32) - weight).abs().max()
    assert error <= result.scales.max() / 2 + 1e-6
    pack_gptq(result, 2)


def test_bad_hessian_is_refused():
    weight = random_weight(32, 64, seed=1)
    with pytest.raises(ValueError, match="Hessian shape"):
        gptq_quantize(weight, torch.eye(32), GPTQSpec(bits=4))
    hessian = torch.eye(64)
    hessian[3, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        gptq_quantize(weight, hessian, GPTQSpec(bits=4))
    with pytest.raises(ValueError, match="bits"):
        GPTQSpec(bits=5)
