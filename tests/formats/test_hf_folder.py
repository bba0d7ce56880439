"""HF folders that must be refused with the file, key or tensor named — pickle checkpoints
(never unpickled), shard indexes pointing outside the folder or to missing shards, tensors
that contradict config.json, other architectures and RoPE types — and config.json spellings
of transformers 4 and 5 that must be read alike. Remote code (auto_map) is never run."""

import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from corral.checkpoints import open_checkpoint
from corral.errors import ModelFormatError, UnsupportedError
from corral.formats.hf_config import config_from_hf, generation_defaults
from tests.fixtures.tiny_hf import save_llama_folder, tiny_llama

BASE = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 320,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 4096,
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A valid sharded folder written by transformers (copied by each test that breaks it)."""
    folder = tmp_path_factory.mktemp("hf") / "model"
    return save_llama_folder(folder, tiny_llama(0), max_shard_size="40KB")


@pytest.fixture
def folder(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "model")


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_transformers_4_and_5_rope_spellings_read_alike():
    v4 = config_from_hf(
        {**BASE, "rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}}, "c"
    )
    v5 = config_from_hf(
        {**BASE, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}},
        "c",
    )
    assert v4 == v5
    assert (v4.rope_freq_base, v4.rope_scale, v4.head_dim, v4.n_head_kv) == (5e5, 2.0, 16, 2)
    plain = config_from_hf({**BASE, "rope_scaling": None, "head_dim": None}, "c")
    assert (plain.rope_freq_base, plain.rope_scale, plain.context_length) == (1e4, 1.0, 4096)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, UnsupportedError, "llama3"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, UnsupportedError, "dynamic"),
        ({"rope_parameters": {"rope_type": "yarn"}}, UnsupportedError, "yarn"),
        ({"model_type": "mistral"}, UnsupportedError, "model_type 'mistral'"),
        ({"architectures": ["GPT2LMHeadModel"]}, UnsupportedError, "GPT2LMHeadModel"),
        ({"attention_bias": True}, UnsupportedError, "attention_bias"),
        ({"hidden_act": "gelu"}, UnsupportedError, "hidden_act 'gelu'"),
        ({"hidden_size": None}, ModelFormatError, "'hidden_size' is missing"),
        ({"num_key_value_heads": 3}, ModelFormatError, "not a multiple"),
        ({"num_hidden_layers": "2"}, ModelFormatError, "'num_hidden_layers' should be int"),
        ({"vocab_size": 1 << 40}, ModelFormatError, "'vocab_size'"),
        ({"rms_norm_eps": float("nan")}, ModelFormatError, "finite"),
    ],
)
def test_configs_corral_cannot_run_exactly_are_refused_by_key(change, error, message):
    with pytest.raises(error, match=message):
        config_from_hf({**BASE, **change}, "config.json")


def test_generation_config_defaults_are_exposed_and_checked(folder):
    (folder / "generation_config.json").write_text(
        json.dumps({"temperature": 0.6, "top_p": 0.9, "do_sample": True, "eos_token_id": [3, 7]})
    )
    with open_checkpoint(folder) as checkpoint:
        assert checkpoint.generation_defaults == {
            "temperature": 0.6,
            "top_p": 0.9,
            "do_sample": True,
            "eos_token_id": [3, 7],
        }
        assert {3, 7} <= checkpoint.tokenizer().eog_ids
    with pytest.raises(ModelFormatError, match="'top_k' should be int"):
        generation_defaults({"top_k": "40"}, "generation_config.json")


class _Exploit:
    """A pickle payload that creates a file when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_checkpoints_are_refused_without_being_unpickled(folder, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(marker), protocol=2)
    for shard in folder.glob("model*.safetensors*"):
        shard.unlink()
    (folder / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(ModelFormatError, match=r"pickle files \(pytorch_model.bin\).*Convert"):
        open_checkpoint(folder)
    with pytest.raises(ModelFormatError, match="pickle checkpoint refused.*save_pretrained"):
        open_checkpoint(folder / "pytorch_model.bin")
    zipped = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, zipped)
    with pytest.raises(ModelFormatError, match="pickle checkpoint refused"):
        open_checkpoint(zipped)
    assert not marker.exists()


def test_remote_code_is_never_run(folder, tmp_path):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').close()\n"
    (folder / "modeling_evil.py").write_text(code)
    (folder / "tokenization_evil.py").write_text(code)
    edit_json(
        folder / "config.json",
        lambda c: c.update(auto_map={"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}),
    )
    edit_json(
        folder / "tokenizer_config.json",
        lambda c: c.update(auto_map={"AutoTokenizer": ["tokenization_evil.Evil", None]}),
    )
    with open_checkpoint(folder) as checkpoint:
        checkpoint.tokenizer()
        dict(checkpoint.weights(torch.device("cpu"), torch.float32))
    assert not marker.exists()


@pytest.mark.parametrize(
    "target", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/x.safetensors", ".."]
)
def test_index_entries_outside_the_folder_are_refused(folder, target):
    save_file({"x": torch.zeros(1)}, folder.parent / "outside.safetensors")
    index = folder / "model.safetensors.index.json"
    edit_json(index, lambda i: i["weight_map"].update({"model.norm.weight": target}))
    with pytest.raises(ModelFormatError, match="not a file name inside the model folder"):
        open_checkpoint(folder)


def test_missing_shard_and_misplaced_tensors_are_refused(folder):
    shards = sorted(folder.glob("model-*.safetensors"))
    shards[-1].unlink()
    with pytest.raises(ModelFormatError, match=f"shard '{shards[-1].name}' is missing"):
        open_checkpoint(folder)
    save_file({"unrelated": torch.zeros(1)}, shards[-1])
    with pytest.raises(ModelFormatError, match=f"is not in shard {shards[-1].name}"):
        open_checkpoint(folder)


def test_a_tensor_in_two_shards_is_refused(folder):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    name = "model.norm.weight"
    home = index["weight_map"][name]
    other = next(s for s in sorted(set(index["weight_map"].values())) if s != home)
    tensors = load_file(folder / other)
    tensors[name] = torch.ones(64)
    save_file(tensors, folder / other)
    with pytest.raises(ModelFormatError, match=f"tensor '{name}' is also in"):
        open_checkpoint(folder)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "model.layers.1.mlp.up_proj.weight",
            None,
            "required tensor '.*up_proj.weight' is missing",
        ),
        ("model.layers.0.self_attn.k_proj.weight", torch.zeros(16, 64), r"shape \[16, 64\]"),
        ("model.embed_tokens.weight", torch.zeros(320, 64, dtype=torch.int32), "is I32"),
    ],
)
def test_tensors_contradicting_the_config_are_refused(tmp_path, name, value, message):
    model = tiny_llama(1)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if value is None:
        del state[name]
    else:
        state[name] = value
    folder = save_llama_folder(tmp_path / "m", model)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ModelFormatError, match=message):
        open_checkpoint(folder)


def test_lone_safetensors_files_and_folders_without_config_are_refused(folder, tmp_path):
    lone = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(1)}, lone)
    with pytest.raises(ModelFormatError, match="pass the folder"):
        open_checkpoint(lone)
    (folder / "config.json").unlink()
    with pytest.raises(ModelFormatError, match="without config.json"):
        open_checkpoint(folder)
