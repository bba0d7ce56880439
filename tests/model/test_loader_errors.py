"""Model files whose metadata or tensors are wrong are refused with errors naming the problem."""

import gguf
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from corral.errors import ModelFormatError, UnsupportedError
from corral.formats.gguf import GGUFFile
from corral.loader import load_gguf_model
from tests.fixtures.tiny_gguf import write_llama_gguf

CONFIG = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def hf_model(**overrides) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**CONFIG, **overrides})).eval()


def load(path):
    with GGUFFile(path) as file:
        return load_gguf_model(file, torch.device("cpu"), torch.float32, n_ctx=64)


def rewrite(src, dst, *, drop_keys=(), set_keys=None, drop_tensors=(), retype=None):
    """Copy an all-F32 GGUF file with gguf-py, dropping or overriding keys and tensors."""
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, arch=None)
    set_keys = set_keys or {}
    for field in reader.fields.values():
        key = field.name
        if key.startswith("GGUF.") or key in drop_keys or key in set_keys:
            continue
        value = field.contents()
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, value_type, sub_type=sub_type)
    for key, (value, value_type) in set_keys.items():
        writer.add_key_value(key, value, value_type)
    for tensor in reader.tensors:
        if tensor.name in drop_tensors:
            continue
        data = np.array(tensor.data)
        if retype and tensor.name in retype:
            data = data.view(retype[tensor.name])  # same bytes, another element type
        writer.add_tensor(tensor.name, data)  # the valid file is all F32: shapes carry over
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("valid") / "tiny.gguf"
    model = hf_model()
    write_llama_gguf(path, model.config, model.state_dict())
    return path


def test_valid_file_loads(valid_file):
    assert load(valid_file).config.n_layer == 2


def test_missing_tensor_is_named(valid_file, tmp_path):
    bad = tmp_path / "bad.gguf"
    rewrite(valid_file, bad, drop_tensors={"blk.1.ffn_up.weight"})
    with pytest.raises(ModelFormatError, match=r"blk\.1\.ffn_up\.weight.*missing"):
        load(bad)


def test_missing_metadata_key_is_named(valid_file, tmp_path):
    bad = tmp_path / "bad.gguf"
    rewrite(valid_file, bad, drop_keys={"llama.block_count"})
    with pytest.raises(ModelFormatError, match=r"llama\.block_count"):
        load(bad)


def test_hyperparameters_contradicting_tensor_shapes(valid_file, tmp_path):
    bad = tmp_path / "bad.gguf"
    rewrite(
        valid_file,
        bad,
        set_keys={"llama.feed_forward_length": (256, gguf.GGUFValueType.UINT32)},
    )
    with pytest.raises(ModelFormatError, match=r"ffn_gate\.weight.*shape \[128, 64\].*\[256, 64\]"):
        load(bad)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("llama.attention.head_count", 5, "not divisible"),
        ("llama.attention.head_count_kv", 3, "not a multiple"),
        ("llama.block_count", 10**9, "block_count"),
        ("llama.context_length", 0, "context_length"),
    ],
)
def test_absurd_or_inconsistent_hyperparameters(valid_file, tmp_path, key, value, message):
    bad = tmp_path / "bad.gguf"
    rewrite(valid_file, bad, set_keys={key: (value, gguf.GGUFValueType.UINT32)})
    with pytest.raises(ModelFormatError, match=message):
        load(bad)


def test_wrong_metadata_type_is_named(valid_file, tmp_path):
    bad = tmp_path / "bad.gguf"
    rewrite(valid_file, bad, set_keys={"llama.block_count": ("two", gguf.GGUFValueType.STRING)})
    with pytest.raises(ModelFormatError, match=r"llama\.block_count.*int"):
        load(bad)


def test_unsupported_architecture(valid_file, tmp_path):
    bad = tmp_path / "bad.gguf"
    rewrite(
        valid_file, bad, set_keys={"general.architecture": ("mamba", gguf.GGUFValueType.STRING)}
    )
    with pytest.raises(UnsupportedError, match="mamba"):
        load(bad)


def test_unsupported_tensor_type_names_the_tensor(valid_file, tmp_path):
    bad = tmp_path / "bad.gguf"
    # the norm's 64 float32 values hold as many bytes as 64 int32 values: same shape, a type
    # that GGUF allows but no Llama weight uses
    rewrite(valid_file, bad, retype={"output_norm.weight": np.int32})
    with pytest.raises(UnsupportedError, match=r"output_norm\.weight.*I32"):
        load(bad)
