"""The int8-activation matvec (`matvec_int8`) against gguf-py: y = x' @ W.T in float64,
with W gguf-py's dequantization of the same GGUF bytes and x' the activations after the
int8 rounding (the quantizing kernel's torch twin, bit-exact with it:
test_int8_activations.py). The kernel's sums are exact integers until the float32
scaling, so the bound is float32's (float16 outputs: their rounding).

Shapes are irregular: 37 rows (no multiple of a row tile), K of 3 super-blocks (the last
K-step half empty with 2-group steps, whole steps with 3- or 6-group ones), batch 1, 3
and 4, the default tiles and small ones, and SwiGLU pairs in the epilogue.

GPTQ layouts (2, 3, 4, 8 bits; groups of one word group, several, and half of one, with
act-order) are checked against corral.quant.gptq.dequantize_gptq, itself bit-exact with
AutoGPTQ (tests/quant), the activations gathered into the weight's column order by the
quantizing kernel.
"""

import pytest
import torch
import torch.nn.functional as F
from kernel_cases import gguf_bytes, int8_rounded, oracle_weight
from test_gptq_kernels import own_layer, packed

from corral.kernels.act_quant import dequantize_activations, quantize_activations_reference
from corral.kernels.packing import interleave_rows, pack
from corral.kernels.triton import int8_act
from corral.kernels.triton.decode import KERNEL_TYPES
from corral.kernels.triton.int8_act import quantize_activations
from corral.kernels.triton.matvec_int8 import (
    FIVES_COPIES,
    FIVES_SLOTS,
    FIVES_TARGETS,
    Int8Tiles,
    int8_enabled,
    matvec_int8,
    supports_int8,
)
from corral.quant.gptq import dequantize_gptq

N, K = 37, 768
INT8_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def weight(qtype: str, n: int, device: str, seed: int = 0):
    """(packed weight on `device`, gguf-py's float32 (n, K) weight on CPU)."""
    raw = gguf_bytes(qtype, n, K, seed=seed)
    return pack(torch.from_numpy(raw), qtype, K).to(device), oracle_weight(raw, qtype, K)


def quantized(m: int, qtype: str, device: str, scale: float = 1.0):
    """(int8 activations of random float16 (m, K) x * scale on `device`, their float64
    values on CPU)."""
    x = (torch.randn(m, K, generator=torch.Generator().manual_seed(m)) * scale).half()
    bits = KERNEL_TYPES[qtype].bits
    values = dequantize_activations(quantize_activations_reference(x, bits)).double()
    return quantize_activations(x.to(device), bits), values


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Within float32 summation error, plus the output dtype's rounding."""
    scale = expected.abs().max().item()
    slack = 2e-6 if actual.dtype == torch.float32 else torch.finfo(actual.dtype).eps
    error = (actual.double().cpu() - expected).abs().max().item()
    assert error <= slack * scale, f"max error {error:.3g} vs max |ref| {scale:.3g}"


@pytest.mark.parametrize("qtype", INT8_TYPES)
@pytest.mark.parametrize(("m", "tiles"), [(1, None), (3, Int8Tiles(8, 2, 1)), (4, None)])
def test_matvec_int8_matches_gguf_py(qtype: str, m: int, tiles: Int8Tiles | None, device: str):
    pw, w = weight(qtype, N, device)
    xq, values = quantized(m, qtype, device)
    y = matvec_int8(xq, pw, torch.float32, tiles)
    assert y.shape == (m, N)
    assert_matches(y, values @ w.double().T)


@pytest.mark.parametrize(("qtype", "groups"), [("Q4_K", 8), ("Q8_0", 16), ("Q6_K", 8), ("Q3_K", 4)])
def test_whole_steps_take_the_unmasked_path(qtype: str, groups: int, device: str):
    """K = 24 groups of 4-bit weights (48 of Q8_0, 12 of Q3_K): three whole steps, no
    masks."""
    pw, w = weight(qtype, N, device, seed=2)
    xq, values = quantized(1, qtype, device)
    y = matvec_int8(xq, pw, torch.float32, Int8Tiles(groups=groups))
    assert_matches(y, values @ w.double().T)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q8_0", "Q6_K", "Q2_K"])
def test_swiglu_epilogue(qtype: str, device: str):
    (gate, gate_w), (up, up_w) = (weight(qtype, 24, device, seed) for seed in (5, 6))
    xq, values = quantized(2, qtype, device, scale=1 / 16)  # silu's exp stays finite
    y = matvec_int8(xq, interleave_rows(gate, up), torch.float16, swiglu=True)  # (2, 24)
    gate_y, up_y = (values @ w.double().T for w in (gate_w, up_w))
    # gate and up are rounded to float16 before the product, as they are stored unfused
    expected = F.silu(gate_y.half().double()) * up_y.half().double()
    assert_matches(y, expected)


@pytest.mark.parametrize(
    ("m", "bits", "tiles"), [(1, 4, None), (3, 2, Int8Tiles(8, 2, 1)), (2, 8, None)]
)
def test_swiglu_epilogue_writes_the_int8_blocks_of_its_output(m, bits, tiles, device, monkeypatch):
    """The last program to store a block of outputs quantizes it (for the down
    projection): bit-exact with quantizing the stored output (the torch twin), attached
    to it so the next product launches no quantizing kernel, and the block counters are
    left at zero for the next launch."""
    (gate, _), (up, _) = (weight("Q4_K", 64, device, seed) for seed in (5, 6))
    xq, _ = quantized(m, "Q4_K", device, scale=1 / 16)
    pairs = interleave_rows(gate, up)
    y = matvec_int8(xq, pairs, torch.float16, tiles, swiglu=True, out_int8_bits=bits)
    monkeypatch.setattr(int8_act, "quantize_activations", None)  # would fail if called
    blocks = int8_act.int8_activations(y, bits)
    want = quantize_activations_reference(y.cpu(), bits)
    assert torch.equal(blocks.codes.cpu(), want.codes) and torch.equal(blocks.d.cpu(), want.d)
    assert torch.equal(blocks.s.cpu(), want.s)
    assert not int8_act.block_counters(torch.device(device), 1).any()


def test_swiglu_epilogue_leaves_blocks_that_programs_split_to_the_next_product(device: str):
    """48 outputs are not whole blocks of 64 (2-bit weights): no blocks are attached."""
    (gate, _), (up, _) = (weight("Q4_K", 48, device, seed) for seed in (5, 6))
    xq, _ = quantized(1, "Q4_K", device, scale=1 / 16)
    y = matvec_int8(xq, interleave_rows(gate, up), torch.float16, swiglu=True, out_int8_bits=2)
    assert int8_act._attached(y) == {}
    with pytest.raises(ValueError, match="only from SwiGLU's epilogue"):
        matvec_int8(xq, gate, out_int8_bits=4)


def test_int8_rounding_costs_what_rounding_to_d_over_2_predicts(device: str):
    """The price of int8 activations against the exact float product: each x moves by up
    to d / 2 of its block (uniformly, so a variance of d^2 / 12), so output i moves with a
    standard deviation of sqrt(sum_k w_ik^2 d_k^2 / 12); no output strays past 5 of
    them (on random data ~1% of the largest output; llama.cpp's matvecs pay the same)."""
    pw, w = weight("Q4_K", N, device, seed=7)
    x = torch.randn(1, K, generator=torch.Generator().manual_seed(9))
    xq = quantize_activations(x.to(device), 4)
    y = matvec_int8(xq, pw, torch.float32).cpu().double()
    exact = x.double() @ w.double().T  # (1, N)
    d = xq.d.cpu().double().repeat_interleave(32, dim=1)  # (1, K): each x's block scale
    sigma = ((w.double() ** 2 * d**2 / 12).sum(dim=1)).sqrt()  # (N,)
    assert ((y - exact).abs() <= 5 * sigma).all()


@pytest.mark.parametrize(
    ("bits", "group_size", "m"),
    [(2, 32, 1), (3, 32, 3), (3, 64, 1), (3, 128, 4), (4, 16, 2), (4, 128, 1), (8, 32, 3)],
)
def test_gptq_layouts_match_their_dequantization(bits, group_size, m, device: str):
    """Act-order layers of 37 rows: 2- and 3-bit groups of 32 and 4-bit groups of 16 are
    two sub-blocks per word group, the rest one (scale, zero) per one or more."""
    qt = own_layer(bits, group_size, n=37, seed=bits + group_size)
    pw = packed(qt, device)
    perm = pw.tensors["perm"]
    x = torch.randn(m, qt.shape[1], generator=torch.Generator().manual_seed(m)).half()
    kt_bits = KERNEL_TYPES[pw.qtype].bits
    xq = quantize_activations(x.to(device), kt_bits, perm)
    values = int8_rounded(x, kt_bits, perm).double()  # (m, K), x's column order
    assert_matches(matvec_int8(xq, pw, torch.float32), values @ dequantize_gptq(qt).double().T)


def test_the_fives_multiply_places_every_high_bit_byte():
    """`_high_bit_of_fives`' constants: for every high-bit byte h of a 5-bit weight word and
    both byte words t, the multiply puts slot 2 b + t of h at bit 4 of byte b, nothing
    else (the matvec's Q5 products above test it in the kernel)."""
    slots, copies, targets = FIVES_SLOTS.value, FIVES_COPIES.value, FIVES_TARGETS.value
    for t in (0, 1):
        for h in range(256):
            placed = ((h & (slots << t)) * (copies >> t)) & targets
            assert placed == sum(((h >> (2 * b + t)) & 1) << (8 * b + 4) for b in range(4))


def test_types_and_switch(monkeypatch):
    monkeypatch.delenv("CORRAL_INT8_ACT", raising=False)
    assert all(supports_int8(t) for t in INT8_TYPES) and supports_int8("GPTQ3g32")
    assert not supports_int8("F16")
    on = ("Q4_K", "Q4_0", "Q6_K", "GPTQ4g128", "GPTQ4g16")
    off = ("Q8_0", "Q2_K", "Q3_K", "GPTQ3g128", "GPTQ8g32")
    assert all(map(int8_enabled, on)) and not any(map(int8_enabled, off))
    monkeypatch.setenv("CORRAL_INT8_ACT", "all")
    assert all(map(int8_enabled, on + off)) and not int8_enabled("F16")
    monkeypatch.setenv("CORRAL_INT8_ACT", "0")
    assert not any(map(int8_enabled, on + off))


def test_mismatches_are_refused(device: str):
    pw, _ = weight("Q4_K", N, device)
    xq, _ = quantized(1, "Q8_0", device)
    with pytest.raises(ValueError, match="8-bit fields, 768 columns; Q4_K weight needs 4-bit"):
        matvec_int8(xq, pw)
    dense = pack(torch.zeros(N * K * 2, dtype=torch.uint8), "F16", K).to(device)
    with pytest.raises(ValueError, match="no int8-activation matvec for F16"):
        matvec_int8(quantized(1, "Q4_K", device)[0], dense)
    with pytest.raises(ValueError, match="even row count"):
        matvec_int8(quantized(1, "Q4_K", device)[0], pw, swiglu=True)
    with pytest.raises(ValueError, match="column order of shape"):
        quantize_activations(torch.zeros(1, K, device=device), 4, torch.arange(K - 1))
