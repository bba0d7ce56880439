"""The CUDA path (GGUF matrices kept packed for the fused Triton kernels, CUDA graphs for
decode, partial offload) against llama.cpp's golden outputs and the CPU path. Needs a GPU:
CI has none, so these run where one is present (the device machine; see
docs/performance.md)."""

import copy

import numpy as np
import pytest
import torch

import corral
from corral.engine.requests import EngineRequest, TokenEvent
from corral.engine.scheduler import Engine
from corral.quant.linear import PackedLinear
from corral.sampling import SamplingParams
from tests.fixtures.tiny_gguf import write_llama_gguf
from tests.fixtures.tiny_hf import tiny_llama
from tests.model.test_kv_cache_q8 import SETTINGS, hf_logits
from tests.model.test_llama_cpp_golden import (
    SMOLLM2_NEAR_TIE,
    TINY_LLAMA_CPP_TOLERANCE,
    TINY_TYPES,
    golden,
    margins,
    smollm2_path,
    tiny_path,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
BF16_TOLERANCE = 0.5  # a CPU/GPU split model computes in bfloat16
FP16_TOLERANCE = 0.05  # float16 compute against transformers' float32, logits of size ~4


def greedy(llm, prompt, n):
    return list(llm.generate_tokens(prompt, n, temperature=0.0, stop_ids=()))


@pytest.mark.parametrize("kind", TINY_TYPES)
def test_tiny_models_on_gpu_match_llama_cpp(kind):
    path = tiny_path(kind)
    gold = golden(f"tiny-llama-{kind}.npz", path)
    llm = corral.load(path, device="cuda", n_ctx=256)
    packed = [m for m in llm.model.modules() if isinstance(m, PackedLinear)]
    assert packed or kind.endswith("F16")  # quantized matrices stay quantized on the GPU
    ids = torch.tensor(gold["input_ids"][None], dtype=torch.long, device="cuda")
    logits = llm.model(ids, 0)[0].cpu().numpy()
    assert np.abs(logits - gold["logits"]).max() < TINY_LLAMA_CPP_TOLERANCE
    assert (logits.argmax(-1) == gold["logits"].argmax(-1)).all()
    for i in range(3):  # decode through the CUDA graphs
        expected = gold[f"greedy_{i}"].tolist()
        assert greedy(llm, gold[f"prompt_{i}"].tolist(), len(expected)) == expected


@pytest.mark.parametrize("kind", ["Q4_K_M", "Q8_0"])
def test_prefill_graphs_match_llama_cpp(kind):
    """Prompt chunks through the prefill CUDA graphs (corral.model.prefill_graphs): from
    position 0 and after a cached prefix, padded to their bucket or not, then decode over
    the pad tokens' cache entries."""
    path = tiny_path(kind)
    gold = golden(f"tiny-llama-{kind}.npz", path)
    llm = corral.load(path, device="cuda", n_ctx=256)
    graphs = llm.model.prefill_graphs
    ids = torch.tensor(gold["input_ids"][None], dtype=torch.long, device="cuda")  # (1, 64)
    for a, b in [(0, 37), (0, 2), (2, 7), (7, 20), (20, 40), (40, 60)]:
        last = llm.model(ids[:, a:b], a, last_only=True)[0, 0].cpu().numpy()  # (V,)
        assert np.abs(last - gold["logits"][b - 1]).max() < TINY_LLAMA_CPP_TOLERANCE
    assert len(graphs) == 5  # buckets 64 and 2 from 0; 8, 16 and 32 after a prefix
    for position in range(60, 64):  # decode over the entries the last chunk's pads wrote
        logits = llm.model(ids[:, position : position + 1], position)[0, 0].cpu().numpy()
        assert np.abs(logits - gold["logits"][position]).max() < TINY_LLAMA_CPP_TOLERANCE


def test_partial_offload_matches_llama_cpp():
    path = tiny_path("Q4_K_M")
    gold = golden("tiny-llama-Q4_K_M.npz", path)
    llm = corral.load(path, device="cuda", n_ctx=256, gpu_layers=1)
    assert [layer.device.type for layer in llm.model.layers] == ["cpu", "cuda"]
    assert llm.model.tok_embeddings.weight.device.type == "cpu"
    ids = torch.tensor(gold["input_ids"][None], dtype=torch.long)
    logits = llm.model(ids, 0)[0].cpu().numpy()
    assert np.abs(logits - gold["logits"]).max() < BF16_TOLERANCE
    assert (logits.argmax(-1) == gold["logits"].argmax(-1)).all()
    expected = gold["greedy_0"].tolist()
    assert greedy(llm, gold["prompt_0"].tolist(), len(expected)) == expected


def test_engine_batches_on_gpu_match_llama_cpp():
    path = tiny_path("Q4_0")
    gold = golden("tiny-llama-Q4_0.npz", path)
    llm = corral.load(path, device="cuda", n_ctx=3 * 128)
    engine = Engine(llm.model, n_slots=3)  # 3 sequences: a graph of 4, the last one twice
    engine.start()
    try:
        handles = []
        for i in range(3):  # three sequences decoding together, each at its own position
            params = SamplingParams(temperature=0.0, max_tokens=len(gold[f"greedy_{i}"]))
            prompt = tuple(gold[f"prompt_{i}"].tolist())
            handles.append(engine.submit(EngineRequest(prompt, params)))
        for i, handle in enumerate(handles):
            tokens = [e.token_id for e in handle if isinstance(e, TokenEvent)]
            assert tokens == gold[f"greedy_{i}"].tolist()
    finally:
        engine.shutdown(timeout=5)


def test_embedded_model_on_gpu_follows_llama_cpp_and_the_cpu_path():
    path = smollm2_path()
    gold = golden("smollm2-q4_1.npz", path)
    gpu = corral.load(path, device="cuda", n_ctx=512)
    cpu = corral.load(path, device="cpu", n_ctx=512)
    confident_agree = []
    for name in gold["prompt_names"]:
        prompt = gold[f"{name}_ids"].tolist()
        ids = torch.tensor([prompt], device="cuda")
        logits = gpu.model(ids, 0)[0].cpu().numpy()
        confident = margins(gold[f"{name}_top_logits"]) > SMOLLM2_NEAR_TIE
        confident_agree.extend((logits.argmax(-1) == gold[f"{name}_argmax"])[confident])
        expected = gold[f"{name}_greedy"].tolist()
        tie = np.flatnonzero(margins(gold[f"{name}_greedy_top_logits"]) < SMOLLM2_NEAR_TIE)
        horizon = int(tie[0]) if len(tie) else len(expected)
        ours = greedy(gpu, prompt, len(expected))
        assert ours[:horizon] == expected[:horizon], name
        reference = greedy(cpu, prompt, len(expected))
        # equal to the CPU path until the CPU path's own first near-tie
        full = cpu.model(torch.tensor([prompt + reference[:-1]]), 0)[0, len(prompt) - 1 :]
        top2 = full.topk(2, dim=-1).values
        near = torch.nonzero(top2[:, 0] - top2[:, 1] < SMOLLM2_NEAR_TIE).flatten()
        until = int(near[0]) if len(near) else len(reference)
        assert ours[:until] == reference[:until], name
    assert all(confident_agree) and len(confident_agree) > 100


def test_q8_0_cache_on_gpu_matches_transformers(tmp_path):
    """The fused decode path on the GPU (Triton cache write and flash-decoding over q8_0
    codes, inside CUDA graphs) against transformers with Q8_0-rounded keys and values.

    In float16 a key's rounding differs from float32's, which moves some of its Q8_0 codes
    by one step; each flip moves the logits as much as q8_0 rounding itself. The bound is
    therefore transformers' own float16-against-float32 spread on the same cache."""
    hf = tiny_llama(seed=25, **SETTINGS)
    path = tmp_path / "model.gguf"
    write_llama_gguf(path, hf.config, hf.state_dict())
    llm = corral.load(path, device="cuda", n_ctx=64, cache_type_k="q8_0", cache_type_v="q8_0")
    assert llm.model.layers[0].attn.fused and llm.model.graphs is not None
    ids = torch.randint(3, 320, (1, 24), generator=torch.Generator().manual_seed(26))
    expected = hf_logits(hf, ids, ("q8_0", "q8_0"))[0]  # (T, V)
    spread = (hf_logits(copy.deepcopy(hf).half(), ids, ("q8_0", "q8_0"))[0] - expected).abs()
    on_gpu = ids.cuda()
    rows = [llm.model(on_gpu[:, :16], 0)[0]]  # (16, V)
    for position in range(16, 24):
        rows.append(llm.model(on_gpu[:, position : position + 1], position)[0])  # (1, V)
    error = (torch.cat(rows).float().cpu() - expected).abs()
    assert error.max().item() < 2 * spread.max().item()
    assert error.mean().item() < 2 * spread.mean().item()
