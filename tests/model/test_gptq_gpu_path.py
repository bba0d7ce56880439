"""GPTQ folders on CUDA: the decoder linears stay packed (PackedLinear over the fused Triton
kernels, no dequantized copy), and the logits follow transformers' LlamaForCausalLM holding
AutoGPTQ's own dequantization of the same layers within float16 tolerance, for a prefill
(dequantize + cuBLAS path) and a one-token decode step (matvec path). A 2-bit, group-16
folder, a layout the kernels refuse, is dequantized at load instead and still matches.
Needs a GPU: CI has none, so these run where one is present (the device machine)."""

import pytest
import torch
from torch import nn

from corral.checkpoints import load_model
from corral.quant.linear import PackedLinear
from tests.fixtures.tiny_gptq import save_gptq_folder
from tests.fixtures.tiny_hf import tiny_llama

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
FP16_TOLERANCE = 0.06  # |logit| error; float16 activations through two layers (CPU: 0.024)
SHAPE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
VARIANTS = {
    "4bit-g32-act-order": (dict(bits=4, group_size=32, act_order=True), True),
    "3bit-g64-asym": (dict(bits=3, group_size=64, act_order=False, sym=False), True),
    "8bit-per-row-act-order": (dict(bits=8, group_size=-1, act_order=True), True),
    "2bit-g128-act-order": (dict(bits=2, group_size=128, act_order=True), True),
    "2bit-g32": (dict(bits=2, group_size=32, act_order=False), True),
    "3bit-g32-act-order": (dict(bits=3, group_size=32, act_order=True), True),
    "2bit-g16-dequantized": (dict(bits=2, group_size=16, act_order=False), False),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gptq_folder_on_gpu_follows_transformers(tmp_path, variant):
    settings, kept_packed = VARIANTS[variant]
    hf = tiny_llama(21, **SHAPE)
    reference_state = save_gptq_folder(tmp_path / "gptq", hf, **settings)
    hf.load_state_dict(reference_state)
    model = load_model(tmp_path / "gptq", torch.device("cuda"), torch.float16, n_ctx=96).model
    linears = [m for m in model.layers.modules() if isinstance(m, (PackedLinear, nn.Linear))]
    assert {isinstance(m, PackedLinear) for m in linears} == {kept_packed}  # all, or none
    ids = torch.randint(0, 320, (1, 80), generator=torch.Generator().manual_seed(22))
    with torch.no_grad():
        expected = hf(ids).logits[0]  # (80, vocab)
        prefill = model(ids[:, :79].cuda(), 0)[0].float().cpu()  # (79, vocab)
        step = model(ids[:, 79:].cuda(), 79)[0].float().cpu()  # (1, vocab)
    assert expected.abs().max() > 1.0, "logits too small for a meaningful comparison"
    assert (prefill - expected[:79]).abs().max().item() < FP16_TOLERANCE
    assert (step - expected[79:]).abs().max().item() < FP16_TOLERANCE
