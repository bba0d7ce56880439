"""SamplingParams validation and the keyword spellings the API accepts."""

import math

import pytest

from corral.interfaces.cli import build_parser, parse_logit_bias, sampling_kwargs
from corral.sampling import SamplingParams, SamplingParamsError, params_from_kwargs

NAN = math.nan


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", -0.1),
        ("temperature", NAN),
        ("temperature", math.inf),
        ("top_k", -1),
        ("top_k", 2.5),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_p", NAN),
        ("min_p", -0.1),
        ("min_p", 1.1),
        ("typical_p", 0.0),
        ("typical_p", NAN),
        ("repeat_penalty", 0.0),
        ("repeat_last_n", -2),
        ("repetition_penalty", -1.0),
        ("presence_penalty", NAN),
        ("frequency_penalty", math.inf),
        ("seed", 1.5),
        ("ignore_eos", "yes"),
        ("top_logprobs", 21),
        ("top_logprobs", -1),
        ("mirostat", 3),
        ("mirostat_tau", -1.0),
        ("mirostat_eta", 0.0),
        ("order", "vllm"),
        ("logit_bias", {1: NAN}),
        ("logit_bias", {"abc": 1.0}),
        ("logit_bias", {-3: 1.0}),
        ("logit_bias", 5),
    ],
)
def test_invalid_parameters_are_refused_by_name(field, value):
    with pytest.raises(SamplingParamsError, match=field):
        SamplingParams(**{field: value})
    with pytest.raises(ValueError):  # an OpenAI-style 400, not a crash
        SamplingParams(**{field: value})


def test_defaults_are_llama_cpp_s():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.typical_p) == (0.8, 40, 0.95, 0.05, 1.0)
    assert (p.repeat_penalty, p.repeat_last_n, p.mirostat) == (1.0, 64, 0)
    assert (p.mirostat_tau, p.mirostat_eta, p.order) == (5.0, 0.1, "llama.cpp")


def test_logit_bias_string_keys_and_pairs():
    assert SamplingParams(logit_bias={"12": 1, 3: -math.inf}).logit_bias == (
        (3, -math.inf),
        (12, 1.0),
    )
    assert SamplingParams(logit_bias=[(5, 2.0)]).logit_bias == ((5, 2.0),)
    assert hash(SamplingParams(logit_bias={"1": 1.0}))  # stays a frozen, hashable value


def test_hf_and_openai_spellings():
    params = params_from_kwargs(
        do_sample=True, top_k=0, top_p=0.95, repetition_penalty=1.15, max_new_tokens=7
    )
    assert (params.top_k, params.repetition_penalty, params.temperature) == (0, 1.15, 0.8)
    assert params.max_tokens == 7
    greedy = params_from_kwargs(do_sample=False, temperature=0.7)
    assert greedy.temperature == 0.0
    llama = params_from_kwargs(temp=0.7, repeat_penalty=1.1, mirostat_mode=2, typical=0.9)
    assert (llama.temperature, llama.mirostat, llama.typical_p) == (0.7, 2, 0.9)
    assert params_from_kwargs(n_predict=5).max_tokens == 5
    openai = params_from_kwargs(
        frequency_penalty=0.5, presence_penalty=None, logit_bias={"50256": -100}, top_logprobs=2
    )
    assert openai.logit_bias == ((50256, -100.0),) and openai.presence_penalty == 0.0


def test_generation_controls_are_validated():
    params = SamplingParams(stop=["USER:", 2, "USER:"], n=3, max_tokens=9)
    assert params.stop == ("USER:", 2) and params.stop_strings == ("USER:",)
    assert params.stop_ids == frozenset({2}) and (params.n, params.max_tokens) == (3, 9)
    assert SamplingParams(stop="\n\n").stop == ("\n\n",)
    for name, value in [
        ("max_tokens", 0),
        ("n", 0),
        ("n", 129),
        ("stop", [""]),
        ("stop", ["x"] * 17),
        ("stop", ["x" * 513]),
        ("stop", [-1]),
        ("stop", [1.5]),
    ]:
        with pytest.raises(SamplingParamsError, match=name):
            SamplingParams(**{name: value})


def test_unknown_or_repeated_keywords_are_refused():
    with pytest.raises(SamplingParamsError, match="tempreature"):
        params_from_kwargs(tempreature=0.5)
    with pytest.raises(SamplingParamsError, match="temperature"):
        params_from_kwargs(temp=0.5, temperature=0.5)


def test_cli_flags_map_to_params():
    args = build_parser().parse_args(
        [
            "run", "-p", "x", "--temp", "0.7", "--top-k", "0", "--min-p", "0.1",
            "--typical", "0.9", "--repeat-penalty", "1.1", "--repeat-last-n", "-1",
            "--presence-penalty", "0.2", "--frequency-penalty", "0.3", "--mirostat", "2",
            "--mirostat-lr", "0.2", "--mirostat-ent", "4", "-l", "15043+1",
            "--logit-bias", "2-inf", "--seed", "3", "--ignore-eos",
        ]
    )  # fmt: skip
    params = SamplingParams(**sampling_kwargs(args))
    assert params.logit_bias == ((2, -math.inf), (15043, 1.0))
    assert (params.typical_p, params.repeat_last_n, params.mirostat_eta) == (0.9, -1, 0.2)
    assert (params.mirostat_tau, params.ignore_eos, params.seed) == (4.0, True, 3)
    defaults = SamplingParams(**sampling_kwargs(build_parser().parse_args(["run", "-p", "x"])))
    assert defaults == SamplingParams()


@pytest.mark.parametrize("text", ["15043", "a+1", "1+", "1*2", "1+nan"])
def test_bad_logit_bias_flag_is_refused(text):
    with pytest.raises(SamplingParamsError, match="--logit-bias"):
        parse_logit_bias(text)
