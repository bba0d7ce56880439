"""The parameter count `corral info` shows and memory estimates use: equal to what the
files hold (gguf-py's reading of a GGUF file; transformers' count of an HF folder), for
tied and untied LM heads."""

from pathlib import Path

import gguf
import numpy as np
import pytest

from corral.checkpoints import open_checkpoint
from tests.fixtures.tiny_hf import save_llama_folder, tiny_llama

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"


@pytest.mark.parametrize("name", ["tiny-llama-Q4_K_M.gguf", "tiny-llama-ropescale-F16.gguf"])
def test_gguf_parameter_count_equals_its_tensors(name):
    path = MODELS / name
    stored = sum(int(np.prod(t.shape)) for t in gguf.GGUFReader(path).tensors)
    with open_checkpoint(path) as checkpoint:
        assert checkpoint.config.n_params() == stored


@pytest.mark.parametrize("tied", [False, True])
def test_hf_parameter_count_equals_transformers(tmp_path, tied):
    hf = tiny_llama(seed=0, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    folder = save_llama_folder(tmp_path / "hf", hf)
    with open_checkpoint(folder) as checkpoint:
        assert checkpoint.config.tied_output is tied
        assert checkpoint.config.n_params() == hf.num_parameters()
