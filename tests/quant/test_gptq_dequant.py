"""GPTQ unpacking and dequantization against AutoGPTQ's own code: layers packed by AutoGPTQ's
``QuantLinear.pack`` and dequantized by its torch forward, for every bits x group size x
act-order x sym combination (3-bit values straddling int32 words included); GPTQModel's v2
zero points; and inconsistent tensors refused with the layer named."""

import pytest
import torch

from corral.errors import ModelFormatError, UnsupportedError
from corral.formats.gptq import GPTQConfig, parse_gptq_config, read_gptq_linear
from corral.quant.gptq import dequantize_gptq
from tests.fixtures.tiny_gptq import group_index, pack_layer

N_OUT, N_IN = 64, 256
PREFIX = "model.layers.3.mlp.up_proj"


def random_layer(bits: int, group_size: int, act_order: bool, sym: bool, seed: int):
    """Random codes over the whole range, float16 scales, zeros storable in the v1 format."""
    generator = torch.Generator().manual_seed(seed)
    maxq = 2**bits - 1
    g_idx = group_index(N_IN, group_size, act_order, seed)
    n_groups = int(g_idx.max()) + 1
    codes = torch.randint(0, maxq + 1, (N_OUT, N_IN), generator=generator).float()
    scales = (torch.rand(N_OUT, n_groups, generator=generator) * 0.05 + 1e-3).half().float()
    if sym:
        zeros = torch.full((N_OUT, n_groups), float((maxq + 1) // 2))
    else:
        zeros = torch.randint(1, maxq + 1, (N_OUT, n_groups), generator=generator).float()
    return pack_layer(codes, scales, zeros, g_idx, bits, group_size), codes, scales, zeros, g_idx


def getter(tensors: dict[str, torch.Tensor]):
    return lambda name: tensors.get(name.removeprefix(PREFIX + "."))


def corral_dequantize(tensors, bits, group_size, act_order, fmt="gptq", sym=True):
    config = GPTQConfig(bits, group_size, act_order, sym, fmt)
    weight = read_gptq_linear(PREFIX, getter(tensors), config, (N_OUT, N_IN), "model.safetensors")
    return dequantize_gptq(weight)


@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("act_order", [False, True], ids=["plain", "act-order"])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_dequantization_equals_autogptq_bit_for_bit(bits, group_size, act_order, sym):
    seed = bits * 1000 + group_size * 10 + act_order * 2 + sym
    packed, codes, scales, zeros, g_idx = random_layer(bits, group_size, act_order, sym, seed)
    actual = corral_dequantize(packed.tensors, bits, group_size, act_order)
    assert torch.equal(actual, packed.reference)
    # and AutoGPTQ's reference is the weight the codes describe
    expected = scales[:, g_idx.long()] * (codes - zeros[:, g_idx.long()])
    assert torch.equal(packed.reference, expected)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_a_zero_point_of_zero_decodes_as_autogptq_decodes_it(bits):
    """v1 stores zero - 1 unsigned: a zero of 0 becomes all ones (and spills into the next
    fields when packed); AutoGPTQ's dequantizer reads whatever the words hold, and so do we."""
    packed, *_ = random_layer(bits, 32, False, False, seed=bits)
    zeros = torch.zeros(N_OUT, N_IN // 32)
    codes = torch.randint(0, 2**bits, (N_OUT, N_IN)).float()
    scales = torch.full((N_OUT, N_IN // 32), 0.5)
    packed = pack_layer(codes, scales, zeros, group_index(N_IN, 32, False, 0), bits, 32)
    assert torch.equal(corral_dequantize(packed.tensors, bits, 32, False), packed.reference)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptq_v2_zero_points_give_the_same_weights(bits):
    """GPTQModel's v2 stores the zero point itself: AutoGPTQ's pack of zeros + 1 writes
    exactly those fields, and must dequantize like the v1 layer of the true zeros."""
    v1, codes, scales, zeros, g_idx = random_layer(bits, 64, True, False, seed=7 + bits)
    zeros = zeros.clamp(max=2**bits - 2)  # zero + 1 must still fit in the field
    v1 = pack_layer(codes, scales, zeros, g_idx, bits, 64)
    v2 = pack_layer(codes, scales, zeros + 1, g_idx, bits, 64)
    actual = corral_dequantize(v2.tensors, bits, 64, True, fmt="gptq_v2")
    assert torch.equal(actual, v1.reference)


@pytest.fixture(scope="module")
def tensors():
    packed, *_ = random_layer(4, 128, True, True, seed=3)
    return packed.tensors


@pytest.mark.parametrize(
    ("change", "config", "message"),
    [
        ({}, (3, 128, True), r"qweight has shape \[32, 64\], but 3-bit weights"),
        ({}, (4, 64, True), r"qzeros has shape \[2, 8\], but 4-bit weights .* group size 64"),
        ({"scales": torch.zeros(2, 32, dtype=torch.float16)}, None, r"scales has shape"),
        ({"qweight": torch.zeros(32, 64)}, None, "qweight is torch.float32, expected int32"),
        ({"g_idx": torch.full((N_IN,), 2, dtype=torch.int32)}, None, r"g_idx values span \[2"),
        ({"g_idx": torch.full((N_IN,), -1, dtype=torch.int32)}, None, "outside the 2 groups"),
        ({"g_idx": None}, None, "desc_act is set but '.*g_idx' is missing"),
        ({"qzeros": None}, None, "tensor 'model.layers.3.mlp.up_proj.qzeros' is missing"),
    ],
)
def test_inconsistent_tensors_are_refused_naming_the_layer(tensors, change, config, message):
    broken = {k: v for k, v in {**tensors, **change}.items() if v is not None}
    bits, group_size, act_order = config or (4, 128, True)
    with pytest.raises(ModelFormatError, match=message) as error:
        corral_dequantize(broken, bits, group_size, act_order)
    assert f"model.safetensors: layer '{PREFIX}'" in str(error.value)


def test_non_zero_bias_and_odd_widths_are_refused(tensors):
    with pytest.raises(UnsupportedError, match="non-zero bias"):
        corral_dequantize({**tensors, "bias": torch.ones(N_OUT, dtype=torch.float16)}, 4, 128, True)
    zero_bias = {**tensors, "bias": torch.zeros(N_OUT, dtype=torch.float16)}
    assert corral_dequantize(zero_bias, 4, 128, True).shape == (N_OUT, N_IN)
    config = GPTQConfig(4, 128, True, True, "gptq")
    with pytest.raises(ModelFormatError, match="divisible by 32"):
        read_gptq_linear(PREFIX, getter(tensors), config, (N_OUT, N_IN - 8), "m.safetensors")


@pytest.mark.parametrize(
    ("raw", "error", "message"),
    [
        ({"bits": 5, "group_size": 128}, ModelFormatError, "'bits' must be one of"),
        ({"bits": 4, "group_size": 0}, ModelFormatError, "'group_size' must be positive or -1"),
        ({"bits": 4, "desc_act": "yes"}, ModelFormatError, "'desc_act' should be bool"),
        ({"bits": 4, "quant_method": "awq"}, UnsupportedError, "quant_method 'awq'"),
        ({"bits": 4, "checkpoint_format": "marlin"}, UnsupportedError, "'marlin'"),
        ({"bits": 4, "pack_dtype": "int16"}, UnsupportedError, "pack_dtype"),
    ],
)
def test_bad_quantize_configs_are_refused(raw, error, message):
    with pytest.raises(error, match=message):
        parse_gptq_config(raw, "quantize_config.json")


def test_quantize_config_spellings():
    config = parse_gptq_config({"bits": 3, "group_size": -1, "format": "gptq_v2"}, "q")
    assert config == GPTQConfig(3, -1, False, True, "gptq_v2")
