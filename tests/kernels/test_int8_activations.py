"""Activations quantized to int8 blocks (`int8_act.quantize_activations`) against their
torch twin (`act_quant.quantize_activations_reference`), bit for bit, and both against
the definition of llama.cpp's q8_1 blocks computed here in float64: d = max |x| / 127,
every code within 127, every value within d / 2 of d * code, s = d * sum of the codes.

Shapes: a block count that is not a multiple of a program's blocks, several rows, a
block of zeros, float16 / bfloat16 / float32 inputs, the block sizes of 2-, 4- and 8-bit
weights (64, 32, 16 weights). RMSNorm writes the same blocks of its output in its own
kernel, and `int8_activations` reuses attached blocks until the tensor changes.
"""

import pytest
import torch

from corral.kernels import packing
from corral.kernels.act_quant import (
    code_weight_index,
    dequantize_activations,
    group_weights,
    quantize_activations_reference,
)
from corral.kernels.triton import int8_act
from corral.kernels.triton.int8_act import (
    BLOCKS_PER_PROGRAM,
    int8_activations,
    quantize_activations,
)
from corral.kernels.triton.norm import add_rms_norm, rms_norm


def activations(m: int, k: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """(m, k) with rows of different magnitudes and the first block all zeros."""
    g = torch.Generator().manual_seed(k + m)
    x = torch.randn(m, k, generator=g) * torch.logspace(-2, 2, m)[:, None]
    x[0, :64] = 0.0
    return x.to(dtype).to(device)


@pytest.mark.parametrize(
    ("bits", "m", "dtype"),
    [(4, 1, torch.float16), (4, 3, torch.bfloat16), (8, 2, torch.float32), (2, 1, torch.float16)],
)
def test_kernel_matches_its_torch_twin_bit_for_bit(bits, m, dtype, device: str):
    k = group_weights(bits) * (BLOCKS_PER_PROGRAM + 5)  # two programs, the second part full
    x = activations(m, k, dtype, device)
    got = quantize_activations(x, bits)
    want = quantize_activations_reference(x.cpu(), bits)
    assert got.bits == bits and got.shape == (m, k)
    assert torch.equal(got.codes.cpu(), want.codes)
    assert torch.equal(got.d.cpu(), want.d)
    assert torch.equal(got.s.cpu(), want.s)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_blocks_follow_the_q8_1_definition(bits: int):
    group = group_weights(bits)
    x = activations(2, group * 6, torch.float32, "cpu").double()
    blocks = quantize_activations_reference(x.float(), bits)
    values = dequantize_activations(blocks).double()  # (M, K)
    d = blocks.d.double()  # (M, blocks)
    x_blocks = x.view(2, -1, group)  # (M, blocks, group)
    expected_d = x_blocks.abs().amax(dim=2) / 127
    torch.testing.assert_close(d, expected_d, rtol=2e-7, atol=0)
    ratios = torch.where(d[..., None] > 0, values.view(2, -1, group) / d[..., None], 0.0)
    codes = ratios.round()  # (M, blocks, group): whole numbers up to float32's rounding
    assert (ratios - codes).abs().max() < 1e-4 and codes.abs().max() <= 127
    error = (values.view(2, -1, group) - x_blocks).abs()
    assert (error <= d[..., None] * (0.5 + 1e-6)).all()
    assert (values[0, :64] == 0).all() and (blocks.d[0, : 64 // group] == 0).all()
    torch.testing.assert_close(blocks.s.double(), d * codes.sum(dim=2), rtol=1e-6, atol=0)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_code_layout_pairs_bytes_with_the_weight_fields(bits: int):
    """Byte word t of a packed weight word w ((W >> bits t) & the low bits of each byte,
    as the int8 matvec extracts it) holds in byte b the weight 16 t + 4 b + w of its
    group, which is byte b of code word (t, w): read back from words that `packing`
    built from each weight's index, `bits` bits of it at a time."""
    group = 128 // bits
    index = torch.arange(group)
    found = torch.zeros(8 // bits, 4, 4, dtype=torch.long)  # (t, w, b)
    for shift in range(0, 6, bits):  # the index's bits, `bits` at a time
        digits = ((index >> shift) & ((1 << bits) - 1)).to(torch.uint8)[None]  # (1, group)
        words = packing.words_torch(digits, bits, group, torch.int32)[0, 0].long() & 0xFFFFFFFF
        for t in range(8 // bits):
            for b in range(4):
                found[t, :, b] |= ((words >> (bits * t + 8 * b)) & ((1 << bits) - 1)) << shift
    t, w, b = torch.meshgrid(*map(torch.arange, (8 // bits, 4, 4)), indexing="ij")
    assert torch.equal(found, 16 * t + 4 * b + w)
    assert torch.equal(code_weight_index(bits), found)


@pytest.mark.parametrize("bits", [2, 4])
def test_gathering_kernel_quantizes_the_columns_in_weight_order(bits: int, device: str):
    """A GPTQ act-order weight's column order: the kernel's blocks of x[:, perm] equal its
    twin's on the gathered copy, and x's attached blocks (natural order) are not used."""
    k = group_weights(bits) * 3
    x = activations(2, k, torch.float16, device)
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(bits)).to(torch.int32)
    got = quantize_activations(x, bits, perm.to(device))
    want = quantize_activations_reference(x.cpu()[:, perm.long()], bits)
    assert torch.equal(got.codes.cpu(), want.codes) and torch.equal(got.d.cpu(), want.d)
    assert torch.equal(got.s.cpu(), want.s)
    natural = int8_activations(x, bits)
    gathered = int8_activations(x, bits, perm.to(device))
    assert gathered is not natural and torch.equal(gathered.codes.cpu(), want.codes)


def test_bad_shapes_are_refused(device: str):
    with pytest.raises(ValueError, match="not whole blocks of 32"):
        quantize_activations(torch.zeros(1, 48, device=device), 4)
    with pytest.raises(ValueError, match="2-, 4- or 8-bit"):
        quantize_activations(torch.zeros(1, 64, device=device), 6)
    with pytest.raises(ValueError, match="contiguous"):
        quantize_activations(torch.zeros(64, 2, device=device).T, 4)


@pytest.mark.parametrize(("bits", "width"), [(4, 576), (8, 256), (2, 128)])
def test_norms_write_the_int8_blocks_of_their_output(bits: int, width: int, device: str):
    """RMSNorm (and the residual add before it) with int8_bits attaches the blocks of its
    stored output, bit-exact with quantizing that output; 576 columns fill 18 of a
    1024-wide block, the rest masked."""
    x = activations(3, width, torch.float16, device)
    weight = torch.rand(width, generator=torch.Generator().manual_seed(1)).to(device) + 0.5
    plain = rms_norm(x, weight, 1e-5, int8_bits=bits)
    _, after_add = add_rms_norm(x, x.flip(0), weight, 1e-5, int8_bits=bits)
    for y in (plain, after_add):
        blocks = int8_activations(y, bits)  # attached by the norm: no quantizing launch
        want = quantize_activations_reference(y.cpu(), bits)
        assert torch.equal(blocks.codes.cpu(), want.codes)
        assert torch.equal(blocks.d.cpu(), want.d) and torch.equal(blocks.s.cpu(), want.s)


def test_int8_blocks_are_reused_while_the_tensor_is_unchanged(device: str, monkeypatch):
    calls = []
    original = int8_act.quantize_activations
    monkeypatch.setattr(
        int8_act, "quantize_activations", lambda x, bits: calls.append(bits) or original(x, bits)
    )
    x = activations(2, 128, torch.float16, device)
    first = int8_activations(x, 4)
    assert int8_activations(x, 4) is first and calls == [4]  # Q/K, then V: one launch
    assert int8_activations(x, 8).bits == 8 and calls == [4, 8]  # other weights' blocks
    assert int8_activations(x, 4) is first and calls == [4, 8]  # a file mixing Q3_K, Q4_K
    x.mul_(2)  # in place: the attached blocks are stale
    again = int8_activations(x, 8)
    assert calls == [4, 8, 8]
    assert torch.equal(again.d.cpu(), quantize_activations_reference(x.cpu(), 8).d)
    weight = torch.ones(128, device=device)
    looped = rms_norm(x, weight, 1e-5, block=64, int8_bits=4)  # two-pass rows: no blocks
    int8_activations(looped, 4)
    assert calls == [4, 8, 8, 4]


def test_inference_tensors_reuse_only_their_producers_blocks(device: str, monkeypatch):
    """Under torch.inference_mode (how corral runs models) tensors track no versions: the
    blocks a norm attached are used, blocks quantized for a product are not kept."""
    calls = []
    original = int8_act.quantize_activations
    monkeypatch.setattr(
        int8_act, "quantize_activations", lambda x, bits: calls.append(bits) or original(x, bits)
    )
    with torch.inference_mode():
        x = activations(1, 128, torch.float16, device)
        normed = rms_norm(x, torch.ones(128, device=device), 1e-5, int8_bits=4)
        assert int8_activations(normed, 4) is int8_activations(normed, 4) and calls == []
        int8_activations(x, 4)
        int8_activations(x, 4)
        assert calls == [4, 4]
