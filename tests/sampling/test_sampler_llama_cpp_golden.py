"""corral's llama.cpp-order chain against llama.cpp's own samplers, stage by stage.

tests/golden/sampler_llama_cpp.json is written by scripts/golden/make_sampler_golden.py
with llama-cpp-python; this test needs only the JSON.
"""

import json
from pathlib import Path

import pytest
import torch

from corral.sampling import Sampler, SamplingParams, processors

GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "sampler_llama_cpp.json").read_text())
CASES = GOLDEN["cases"]


def corral_stages(case) -> dict[str, torch.Tensor]:
    params = SamplingParams(**{**case["params"], "seed": 0})
    sampler = Sampler(params, GOLDEN["vocab"])
    logits = torch.tensor(GOLDEN["logits"][case["logits"]], dtype=torch.float32)
    trace: list[tuple[str, torch.Tensor]] = []
    final = sampler.process(logits, GOLDEN["history"], trace)
    stages = dict(trace)
    if params.mirostat == 1:
        stages["mirostat"] = processors.mirostat_v1(final, sampler.mu, GOLDEN["vocab"])
    elif params.mirostat == 2:
        stages["mirostat"] = processors.mirostat_v2(final, sampler.mu)
    return stages


def survivors(logits: torch.Tensor) -> list[int]:
    return torch.nonzero(torch.isfinite(logits)).flatten().tolist()


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{case['setting']}-{case['logits']}" for case in CASES]
)
def test_stage_candidates_equal_llama_cpp(case):
    """Same survivors with the same logits after every stage. Where equal logits straddle a
    cut (top_k's k-th place, top_p's last token ...), llama.cpp keeps whichever its
    std::partial_sort leaves first, which C++ leaves unspecified; corral keeps the lower
    ids. There the survivors may differ only by tokens of that tied logit value."""
    ours = corral_stages(case)
    for stage in case["stages"]:
        name = stage["stage"]
        kept = survivors(ours[name])
        values = ours[name][kept]
        expected = torch.tensor(stage["logits"], dtype=torch.float32)
        if kept == stage["ids"]:
            assert torch.allclose(values, expected, rtol=1e-5, atol=1e-5), f"stage {name}"
            continue
        assert case["logits"] == "ties", f"stage {name}: {kept} != {stage['ids']}"
        assert len(kept) == len(stage["ids"]), f"stage {name}"
        assert torch.allclose(values.sort().values, expected.sort().values), f"stage {name}"
        theirs = dict(zip(stage["ids"], stage["logits"], strict=True))
        ours_by_id = dict(zip(kept, values.tolist(), strict=True))
        swapped = {ours_by_id[i] for i in set(kept) - set(theirs)}
        swapped |= {theirs[i] for i in set(theirs) - set(kept)}
        assert len(swapped) == 1, f"stage {name}: differs beyond one tied value {swapped}"


def test_golden_covers_ties_and_every_stage():
    names = {stage["stage"] for case in CASES for stage in case["stages"]}
    assert names >= {"logit_bias", "penalties", "top_k", "typical", "top_p", "min_p"}
    assert {"temperature", "mirostat"} <= names
    ties = GOLDEN["logits"]["ties"]
    assert len(set(ties)) < len(ties) / 2
