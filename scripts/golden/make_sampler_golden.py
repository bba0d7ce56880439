"""Golden sampler data from llama.cpp's own sampler chain, for corral's sampling tests.

Makes tests/golden/sampler_llama_cpp.json: for fixed logit vectors over a small vocabulary
(48 tokens, with ties) and several settings, the candidates that survive each stage of
llama.cpp's default chain (common/sampling.cpp: logit_bias -> penalties -> top_k ->
typical -> top_p -> min_p -> temperature; mirostat 1/2: ... -> temperature -> mirostat),
applied one sampler at a time through llama-cpp-python's bindings (llama_sampler_init_*,
llama_sampler_accept, llama_sampler_apply on a llama_token_data_array). No model is needed.

Each stage records the surviving token ids (finite logits, in id order) and their logits.
For mirostat, the stage is the first call (mu = 2 tau): the candidates left after its
truncation, before its draw.

How to run (needs llama-cpp-python 0.3.36; a second):

  pip install llama-cpp-python==0.3.36
  python scripts/golden/make_sampler_golden.py   # from the repo root

The output is deterministic.
"""

from __future__ import annotations

import ctypes
import json
import math
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

OUT = Path(__file__).resolve().parents[2] / "tests" / "golden" / "sampler_llama_cpp.json"
VOCAB = 48


def logit_vectors() -> dict[str, list[float]]:
    """Fixed logits: smooth, with many ties (values on a 0.5 grid), and peaked."""
    rng = np.random.default_rng(20261122)
    smooth = rng.normal(0.0, 2.0, VOCAB).round(3)
    ties = (rng.integers(-8, 9, VOCAB) * 0.5).astype(np.float64)
    peaked = rng.normal(0.0, 1.0, VOCAB).round(3)
    peaked[[5, 17]] = [9.0, 7.5]
    return {"smooth": smooth.tolist(), "ties": ties.tolist(), "peaked": peaked.tolist()}


HISTORY = [3, 5, 5, 7, 11, 11, 11, 2, 40, 5, 17, 17, 30, 1, 0, 46, 3]

# settings: names and defaults as corral's SamplingParams
SETTINGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "top_k_5": {"top_k": 5, "top_p": 1.0, "min_p": 0.0},
    "top_k_over_vocab": {"top_k": 100, "top_p": 1.0, "min_p": 0.0},
    "top_p_0.5": {"top_k": 0, "top_p": 0.5, "min_p": 0.0},
    "top_p_0.9_k_20": {"top_k": 20, "top_p": 0.9, "min_p": 0.0},
    "min_p_0.1": {"top_k": 0, "top_p": 1.0, "min_p": 0.1},
    "min_p_0.3_top_k_10": {"top_k": 10, "top_p": 1.0, "min_p": 0.3},
    "typical_0.5": {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 0.5},
    "typical_0.9_all": {"top_k": 30, "top_p": 0.95, "min_p": 0.05, "typical_p": 0.9},
    "greedy": {"temperature": 0.0},
    "penalties": {
        "repeat_penalty": 1.3,
        "repeat_last_n": 8,
        "frequency_penalty": 0.4,
        "presence_penalty": 0.7,
        "top_k": 0,
        "top_p": 1.0,
        "min_p": 0.0,
    },
    "penalties_whole_history": {
        "repeat_penalty": 1.5,
        "repeat_last_n": -1,
        "min_p": 0.1,
    },
    "logit_bias": {
        "logit_bias": [[5, -100.0], [17, float("-inf")], [0, 3.5], [47, 2.0]],
        "top_k": 10,
    },
    "mirostat_1": {"mirostat": 1, "mirostat_tau": 3.0, "temperature": 0.8},
    "mirostat_2": {"mirostat": 2, "mirostat_tau": 2.0, "temperature": 0.7},
}

DEFAULTS = dict(
    temperature=0.8,
    top_k=40,
    top_p=0.95,
    min_p=0.05,
    typical_p=1.0,
    repeat_penalty=1.0,
    repeat_last_n=64,
    frequency_penalty=0.0,
    presence_penalty=0.0,
    logit_bias=[],
    mirostat=0,
    mirostat_tau=5.0,
    mirostat_eta=0.1,
)


def chain(s: dict[str, Any]) -> list[tuple[str, Any]]:
    """llama.cpp's samplers for setting `s`, in common_sampler_init's order."""
    stages: list[tuple[str, Any]] = []
    if s["logit_bias"]:
        biases = (llama_cpp.llama_logit_bias * len(s["logit_bias"]))()
        for i, (token, bias) in enumerate(s["logit_bias"]):
            biases[i].token, biases[i].bias = token, bias
        stages.append(
            ("logit_bias", llama_cpp.llama_sampler_init_logit_bias(VOCAB, len(biases), biases))
        )
    penalties = llama_cpp.llama_sampler_init_penalties(
        VOCAB,
        # llama.cpp's common_params turns -1 into the context size; the history is all of it
        len(HISTORY) if s["repeat_last_n"] == -1 else s["repeat_last_n"],
        s["repeat_penalty"],
        s["frequency_penalty"],
        s["presence_penalty"],
    )
    for token in HISTORY:
        llama_cpp.llama_sampler_accept(penalties, token)
    stages.append(("penalties", penalties))
    if s["mirostat"] == 0:
        stages += [
            ("top_k", llama_cpp.llama_sampler_init_top_k(s["top_k"])),
            ("typical", llama_cpp.llama_sampler_init_typical(s["typical_p"], 0)),
            ("top_p", llama_cpp.llama_sampler_init_top_p(s["top_p"], 0)),
            ("min_p", llama_cpp.llama_sampler_init_min_p(s["min_p"], 0)),
            ("temperature", llama_cpp.llama_sampler_init_temp_ext(s["temperature"], 0.0, 1.0)),
        ]
    else:
        stages.append(("temperature", llama_cpp.llama_sampler_init_temp(s["temperature"])))
        if s["mirostat"] == 1:
            mirostat = llama_cpp.llama_sampler_init_mirostat(
                VOCAB, 1234, s["mirostat_tau"], s["mirostat_eta"], 100
            )
        else:
            mirostat = llama_cpp.llama_sampler_init_mirostat_v2(
                1234, s["mirostat_tau"], s["mirostat_eta"]
            )
        stages.append(("mirostat", mirostat))
    return stages


def survivors(array: llama_cpp.llama_token_data_array) -> dict[str, list]:
    pairs = sorted(
        (array.data[i].id, array.data[i].logit)
        for i in range(array.size)
        if math.isfinite(array.data[i].logit)
    )
    return {"ids": [p[0] for p in pairs], "logits": [float(p[1]) for p in pairs]}


def run(logits: list[float], setting: dict[str, Any]) -> list[dict[str, Any]]:
    data = (llama_cpp.llama_token_data * VOCAB)()
    for i, value in enumerate(logits):
        data[i].id, data[i].logit, data[i].p = i, value, 0.0
    array = llama_cpp.llama_token_data_array(data, VOCAB, -1, False)
    out = []
    for name, sampler in chain(setting):
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
        out.append({"stage": name, **survivors(array)})
        llama_cpp.llama_sampler_free(sampler)
    return out


def main() -> None:
    vectors = logit_vectors()
    cases = []
    for setting_name, overrides in SETTINGS.items():
        setting = {**DEFAULTS, **overrides}
        for vector_name, logits in vectors.items():
            cases.append(
                {
                    "setting": setting_name,
                    "params": overrides,
                    "logits": vector_name,
                    "stages": run(logits, setting),
                }
            )
    golden = {
        "llama_cpp_python_version": llama_cpp.__version__,
        "command": "python scripts/golden/make_sampler_golden.py",
        "vocab": VOCAB,
        "history": HISTORY,
        "logits": vectors,
        "cases": cases,
    }
    OUT.write_text(json.dumps(golden, indent=1, allow_nan=True) + "\n")
    print(f"wrote {OUT} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
