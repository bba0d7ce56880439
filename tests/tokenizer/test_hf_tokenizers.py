"""Tokenizers of HF folders against the libraries that wrote them: transformers' AutoTokenizer,
the tokenizers library running a tokenizer.json, and sentencepiece running a tokenizer.model.

corral runs a tokenizer.json's own pipeline (as the tokenizers library and transformers 4 do).
transformers 5 rebuilds a LlamaTokenizer's pipeline from tokenizer_config.json's "legacy"
flag instead; where the file and that flag disagree the reference is the file's pipeline.
tokenizer.model is encoded as SentencePiece (and llama.cpp) does: each text between control
tokens gets the dummy prefix, where transformers 5 skips it for text already starting with a
space. (After a user-defined piece, corral adds the prefix as llama.cpp does; sentencepiece
does not: Llama's own tokenizer.model has no user-defined pieces.)"""

import json
import re

import pytest
import sentencepiece
from tokenizers import Tokenizer as LibraryTokenizer
from transformers import AutoTokenizer

from corral.errors import TokenizerError
from corral.tokenizer.hf import load_hf_tokenizer, read_tokenizer_settings
from tests.fixtures.tiny_hf import (
    byte_level_tokenizer,
    save_spm_folder,
    sentencepiece_model,
    spm_tokenizer_json_folder,
    training_lines,
)

TEXTS = [
    "Hello world",
    "the GNU General Public License, version 3 (29 June 2007)",
    "héllo ünïcode 日本語 🎉 ∑x²",
    "a\nb\tc  \n\n  d   ",
    "Hi </s> there",
    "x<sep>y <sep> z",
    "don't you're I'll 12345678",
    "trailing space ",
    "",
]
SPECIAL_TEXTS = [
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "use <tool> now<tool>x",
    "text <|endoftext|>more",
]


@pytest.fixture(scope="module")
def byte_level_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("byte-level")
    byte_level_tokenizer().save_pretrained(folder)
    return folder


def test_byte_level_tokenizer_json_equals_transformers(byte_level_folder):
    reference = AutoTokenizer.from_pretrained(byte_level_folder)
    ours = load_hf_tokenizer(byte_level_folder, 320)
    assert (ours.bos_id, ours.eos_id) == (reference.bos_token_id, reference.eos_token_id)
    assert ours.eos_id in ours.eog_ids
    for text in TEXTS + SPECIAL_TEXTS:
        ids = reference.encode(text)
        assert ours.encode(text, parse_special=True) == ids, text
        plain = reference.encode(text, split_special_tokens=True)
        assert ours.encode(text, parse_special=False) == plain, text
        assert ours.decode(ids, skip_special=True) == reference.decode(
            ids, skip_special_tokens=True
        )
        assert ours.decode(ids) == reference.decode(ids)
        assert ours.encode_raw(text.replace("<", "")) == reference.encode(text.replace("<", ""))


def test_byte_level_chat_template_parts_equal_apply_chat_template(byte_level_folder):
    reference = AutoTokenizer.from_pretrained(byte_level_folder)
    ours = load_hf_tokenizer(byte_level_folder, 320)
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Yes."}]
    text = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = reference.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    pieces = re.split(r"(<\|im_start\|>|<\|im_end\|>)", text)  # specials at odd indices
    parts = [(piece, i % 2 == 1) for i, piece in enumerate(pieces)]
    assert ours.encode_parts(parts) == expected["input_ids"]


@pytest.mark.parametrize("legacy", [False, True], ids=["first", "always"])
def test_sentencepiece_style_tokenizer_json_equals_its_pipeline(tmp_path, legacy):
    folder = spm_tokenizer_json_folder(tmp_path / "spm-json", legacy=legacy)
    library = LibraryTokenizer.from_file(str(folder / "tokenizer.json"))
    ours = load_hf_tokenizer(folder, 620)
    assert type(ours).__name__ == "HFJsonTokenizer"
    for text in TEXTS:
        assert ours.encode(text, parse_special=True) == library.encode(text).ids, text
    if not legacy:  # the file says Metaspace "first", as transformers 5 rebuilds it too
        reference = AutoTokenizer.from_pretrained(folder)
        for text in TEXTS:
            ids = reference.encode(text)
            assert ours.encode(text, parse_special=True) == ids, text
            expected = reference.decode(ids, skip_special_tokens=True)
            assert ours.decode(ids, skip_special=True) == expected


def test_llama2_hub_style_normalizer_equals_its_pipeline(tmp_path):
    """Llama-2's tokenizer.json: Prepend("▁") + Replace(" ", "▁") normalizer, no
    pre-tokenizer, so every text between special tokens gets the prefix."""
    folder = spm_tokenizer_json_folder(tmp_path / "spm-json")
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ],
    }
    spec["pre_tokenizer"] = None
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    library = LibraryTokenizer.from_str(json.dumps(spec))
    ours = load_hf_tokenizer(folder, 620)
    for text in TEXTS:
        assert ours.encode(text, parse_special=True) == library.encode(text).ids, text


def sentencepiece_reference(processor, text: str, specials: dict[str, int]) -> list[int]:
    """BOS, then each text between control tokens encoded by sentencepiece (dummy prefix
    on each, as llama.cpp and the Llama reference code do)."""
    ids = [1]
    rest = text
    while rest:
        found = min(((rest.find(t), t) for t in specials if t in rest), default=None)
        if found is None:
            ids += processor.encode(rest)
            break
        where, token = found
        ids += processor.encode(rest[:where]) if where else []
        ids.append(specials[token])
        rest = rest[where + len(token) :]
    return ids


def test_tokenizer_model_equals_sentencepiece_and_transformers(tmp_path):
    folder = save_spm_folder(tmp_path / "spm")
    processor = sentencepiece.SentencePieceProcessor(model_proto=sentencepiece_model())
    reference = AutoTokenizer.from_pretrained(folder)
    ours = load_hf_tokenizer(folder, 640)
    assert type(ours).__name__ == "Tokenizer"
    assert (ours.bos_id, ours.eos_id, ours.unk_id) == (1, 2, 0)
    lines = [line for line in training_lines()[:80] if line.strip()]
    for text in [t for t in TEXTS if "<sep>" not in t] + lines:
        expected = sentencepiece_reference(processor, text, {"</s>": 2, "<s>": 1})
        assert ours.encode(text, parse_special=True) == expected, text
        assert ours.decode(expected, skip_special=True) == processor.decode(expected)
        if not text[:1].isspace() and "</s>" not in text:
            assert ours.encode(text) == reference.encode(text), text


def test_tokenizer_model_with_added_tokens(tmp_path):
    folder = save_spm_folder(tmp_path / "spm", additional_special_tokens=["<|im_start|>"])
    (folder / "added_tokens.json").write_text(json.dumps({"<|im_start|>": 600, "<x>": 601}))
    processor = sentencepiece.SentencePieceProcessor(model_proto=sentencepiece_model())
    ours = load_hf_tokenizer(folder, 640)
    assert ours.vocab_size == 640 and ours.token_id("<|im_start|>") == 600
    text = "<|im_start|>user said <x> ok"
    assert ours.encode(text, parse_special=True) == (
        [1, 600] + processor.encode("user said ") + [601] + processor.encode(" ok")
    )
    as_text = ours.encode(text)  # control token text stays text; user-defined <x> still matches
    assert as_text == [1] + processor.encode("<|im_start|>user said ") + [601] + processor.encode(
        " ok"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(model_type="unigram"), "model type 1 is not supported"),
        (dict(normalization_rule_name="nmt_nfkc"), "normalizes text"),
        (dict(remove_extra_whitespaces=True), "normalizes text"),
    ],
)
def test_sentencepiece_models_corral_cannot_reproduce_are_refused(tmp_path, options, message):
    import io

    out = io.BytesIO()
    settings = dict(
        vocab_size=400,
        model_type="bpe",
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    settings.update(options)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(training_lines()), model_writer=out, **settings
    )
    folder = save_spm_folder(tmp_path / "spm")
    (folder / "tokenizer.model").write_bytes(out.getvalue())
    with pytest.raises(TokenizerError, match=message) as error:
        load_hf_tokenizer(folder, 640)
    assert "tokenizer.model" in str(error.value)


@pytest.mark.parametrize("cut", [3, 100, 5000, -7])
def test_truncated_tokenizer_model_is_refused(tmp_path, cut):
    folder = save_spm_folder(tmp_path / "spm")
    data = sentencepiece_model()
    (folder / "tokenizer.model").write_bytes(data[:cut])
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        load_hf_tokenizer(folder, 640)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x0a\xff\xff\xff\xff\x0f", "claims 4294967295 bytes"),
        (b"\x0b\x00", "wire type 3"),
        (b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", "longer than 10 bytes"),
        (b"\x0a\x02\x0a\x00", "piece 0 has no text|type"),
        (b"\x0a\x04\x0a\x02\xc3\x28", "piece 0 is not UTF-8"),
        (b"", "no pieces"),
    ],
)
def test_hostile_protobuf_is_refused(tmp_path, data, message):
    folder = save_spm_folder(tmp_path / "spm")
    (folder / "tokenizer.model").write_bytes(data)
    with pytest.raises(TokenizerError, match=message):
        load_hf_tokenizer(folder, 640)


def test_inconsistent_tokenizer_settings_are_refused(byte_level_folder, tmp_path):
    with pytest.raises(TokenizerError, match="300 tokens but the model's vocabulary only 200"):
        load_hf_tokenizer(byte_level_folder, 200)
    folder = save_spm_folder(tmp_path / "spm", eos_token="<|eot|>")
    with pytest.raises(TokenizerError, match="eos_token '<|eot|>' is not in the vocabulary"):
        load_hf_tokenizer(folder, 640)
    folder = save_spm_folder(tmp_path / "spm2")
    (folder / "added_tokens.json").write_text(json.dumps({"<y>": 5}))
    with pytest.raises(TokenizerError, match="added token '<y>' has id 5"):
        load_hf_tokenizer(folder, 640)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["model"].update(type="WordPiece"), "model 'WordPiece' is not supported"),
        (lambda s: s.update(decoder=None), r"decoder \[\] is not supported"),
        (lambda s: s["added_tokens"].append({"id": -4, "content": "x"}), "bad token id -4"),
        (lambda s: s["added_tokens"].append({"id": 5, "content": 7}), "must be a token string"),
        (lambda s: s["model"]["vocab"].update(bad="7"), "ids must be integers"),
        (lambda s: s.update(model=[]), "'model' must be an object"),
    ],
)
def test_malformed_tokenizer_json_is_refused(byte_level_folder, tmp_path, change, message):
    folder = tmp_path / "tok"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((byte_level_folder / name).read_bytes())
    spec = json.loads((folder / "tokenizer.json").read_text())
    change(spec)
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match=message) as error:
        load_hf_tokenizer(folder, 320)
    assert "tokenizer.json" in str(error.value)


@pytest.mark.parametrize("where", ["chat_template.jinja", "string", "named list"])
def test_chat_template_is_read_where_transformers_reads_it(byte_level_folder, tmp_path, where):
    folder = tmp_path / "tok"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((byte_level_folder / name).read_bytes())
    template = "{{ bos_token }}{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    config = json.loads((folder / "tokenizer_config.json").read_text())
    if where == "chat_template.jinja":
        (folder / "chat_template.jinja").write_text(template)
    elif where == "string":
        config["chat_template"] = template
    else:
        config["chat_template"] = [
            {"name": "tool_use", "template": "nope"},
            {"name": "default", "template": template},
        ]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    expected = AutoTokenizer.from_pretrained(folder).chat_template
    if isinstance(expected, dict):  # named templates: apply_chat_template takes "default"
        expected = expected["default"]
    assert expected == template
    assert read_tokenizer_settings(folder).chat_template == template
