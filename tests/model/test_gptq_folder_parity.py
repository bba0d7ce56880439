"""GPTQ folders (every decoder linear packed by AutoGPTQ's QuantLinear.pack) loaded by corral,
against transformers' LlamaForCausalLM holding AutoGPTQ's own dequantization of the same
layers: logits in float32 within 1e-4. The quantization config is read from
quantize_config.json or from config.json's quantization_config; without either the folder
is refused."""

import pytest
import torch

import corral
from corral.checkpoints import load_model, open_checkpoint
from corral.errors import ModelFormatError
from corral.tools.info import describe
from tests.fixtures.tiny_gptq import save_gptq_folder
from tests.fixtures.tiny_hf import tiny_llama

TOLERANCE = 1e-4
CPU = torch.device("cpu")
SHAPE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
VARIANTS = {
    "4bit-g32-act-order": dict(bits=4, group_size=32, act_order=True),
    "3bit-g64-asym": dict(bits=3, group_size=64, act_order=False, sym=False),
    "8bit-per-row-config-json": dict(
        bits=8, group_size=-1, act_order=True, config_in="config.json"
    ),
    "2bit-g128-tied": dict(bits=2, group_size=128, act_order=False, tied=True),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gptq_folder_logits_match_transformers_on_autogptq_weights(tmp_path, variant):
    settings = dict(VARIANTS[variant])
    hf = tiny_llama(11, tie_word_embeddings=settings.pop("tied", False), **SHAPE)
    reference_state = save_gptq_folder(tmp_path / "gptq", hf, **settings)
    hf.load_state_dict(reference_state)
    model = load_model(tmp_path / "gptq", CPU, torch.float32, n_ctx=96).model
    ids = torch.randint(0, 320, (1, 80), generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        expected = hf(ids).logits
    assert expected.abs().max() > 1.0, "logits too small for a meaningful comparison"
    assert (model(ids, 0) - expected).abs().max().item() < TOLERANCE


def test_gptq_folder_through_the_api_and_info(tmp_path):
    folder = tmp_path / "gptq"
    save_gptq_folder(folder, tiny_llama(13, **SHAPE), bits=4, group_size=128, act_order=True)
    llm = corral.load(folder, device="cpu", dtype=torch.float32)
    assert llm.chat_format is not None
    assert isinstance(llm.generate("Everyone is permitted", 5, temperature=0.0), str)
    rows = dict(describe(folder, None, CPU))
    assert rows["quantization"] == "GPTQ 4-bit, group size 128, act-order, symmetric (gptq format)"
    assert rows["tensor types"].startswith("GPTQ 4-bit x14")


def test_gptq_tensors_without_a_quantize_config_are_refused(tmp_path):
    folder = tmp_path / "gptq"
    save_gptq_folder(folder, tiny_llama(14, **SHAPE), bits=4, group_size=128, act_order=False,
                     config_in="")  # fmt: skip
    with pytest.raises(ModelFormatError, match="qweight' is a GPTQ tensor, but the folder has no"):
        open_checkpoint(folder)
