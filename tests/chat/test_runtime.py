"""Chat at run time: the streaming stop-string matcher, token stops, and `LLM.chat` /
`LLM.chat_stream` / `stop=` on the embedded model (SmolLM2-135M-Instruct, ChatML)."""

import itertools
import random
from pathlib import Path

import pytest

import corral
from corral.chat import ChatError
from corral.engine.stops import StopMatcher, stop_token_ids

TINY = Path(__file__).parents[1] / "fixtures" / "models" / "tiny-llama-Q4_0.gguf"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def cut_at_stops(text: str, stops: list[str]) -> str:
    """The reference, character by character: `text` cut where the first stop string to be
    complete starts (the longest one when several complete at the same character)."""
    for end in range(1, len(text) + 1):
        done = [stop for stop in stops if text[:end].endswith(stop)]
        if done:
            return text[: end - max(map(len, done))]
    return text


def run_matcher(pieces: list[str], stops: list[str]) -> tuple[list[str], bool]:
    """Feed `pieces`; check that nothing emitted is ever more than a prefix of the reference
    answer (no leak, not even of part of a stop string); return the emitted pieces."""
    expected = cut_at_stops("".join(pieces), stops)
    matcher = StopMatcher(stops)
    emitted: list[str] = []
    stopped = False
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        emitted.append(text)
        assert expected.startswith("".join(emitted))
        if stopped:
            break
    if not stopped:
        emitted.append(matcher.flush())
    assert "".join(emitted) == expected
    return emitted, stopped


def splits(text: str):
    """Every way of cutting `text` into non-empty pieces."""
    for mask in itertools.product((False, True), repeat=len(text) - 1):
        pieces, start = [], 0
        for i, cut in enumerate(mask, 1):
            if cut:
                pieces.append(text[start:i])
                start = i
        yield [*pieces, text[start:]]


# -- the stop-string matcher ------------------------------------------------------------------


def test_stop_split_across_pieces_in_every_way():
    text = "Hi.\nUSER: go"
    for pieces in splits(text):
        emitted, stopped = run_matcher(pieces, ["USER:"])
        assert stopped and "".join(emitted) == "Hi.\n"


def test_stop_inside_one_piece_and_after_it():
    matcher = StopMatcher(["</s>"])
    assert matcher.feed("Paris.</s>more") == ("Paris.", True)
    assert matcher.feed("later text") == ("", True)
    assert matcher.flush() == ""


def test_partial_match_is_held_back_then_released_as_a_false_alarm():
    matcher = StopMatcher(["USER:"])
    assert matcher.feed("Ask the US") == ("Ask the ", False)
    assert matcher.feed("E") == ("", False)  # "USE" could still become "USER:"
    assert matcher.feed("D car") == ("USED car", False)
    assert matcher.feed(" US") == (" ", False)
    assert matcher.flush() == "US"  # generation ended: the held text was never a stop


def test_text_without_stop_prefixes_streams_without_delay():
    matcher = StopMatcher(["<|im_end|>", "USER:"])
    assert matcher.feed("Paris is ") == ("Paris is ", False)
    assert matcher.feed("lovely") == ("lovely", False)


def test_first_completed_of_several_stops_wins():
    for pieces in splits("a</s>USER:b"):
        emitted, stopped = run_matcher(pieces, ["USER:", "</s>"])
        assert "".join(emitted) == "a"
    # "SER" is complete before "USER:" is: generation stops there
    assert run_matcher(["xUSER:"], ["USER:", "SER"])[0] == ["xU"]
    # both complete at the same character: the longer one is cut
    assert run_matcher(["x</s>"], ["s>", "</s>"])[0] == ["x"]


def test_overlapping_stop_candidates():
    # "aab" after "aa" + "a": the first "a" is released, "aa" is still a candidate
    matcher = StopMatcher(["aab"])
    assert matcher.feed("aa") == ("", False)
    assert matcher.feed("a") == ("a", False)
    assert matcher.feed("b") == ("", True)
    for pieces in splits("xaaabaa"):
        assert "".join(run_matcher(pieces, ["aab", "ba"])[0]) == "xa"


def test_random_texts_and_splits_match_cutting_the_whole_text():
    rng = random.Random(0)
    for _ in range(2000):
        stops = ["".join(rng.choices("ab<>", k=rng.randint(1, 4))) for _ in range(3)]
        text = "".join(rng.choices("ab<>c", k=rng.randint(0, 14)))
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, max(0, len(text) - 1))))
        bounds = [0, *cuts, len(text)]
        run_matcher([text[i:j] for i, j in itertools.pairwise(bounds)], stops)


def test_bad_stops_are_refused():
    with pytest.raises(ValueError, match="empty"):
        StopMatcher(["ok", ""])
    with pytest.raises(TypeError, match="sequence"):
        StopMatcher("USER:")
    with pytest.raises(TypeError, match="int"):
        StopMatcher([3])


# -- the embedded model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm():
    return corral.load(n_ctx=512, device="cpu")


def test_token_stops_add_format_tokens_to_end_of_generation(llm):
    tok = llm.tokenizer
    im_start, im_end = tok.token_id("<|im_start|>"), tok.token_id("<|im_end|>")
    ids = stop_token_ids(tok, ["<|im_start|>", "<|im_end|>", "<not-in-vocab>"])
    assert ids == tok.eog_ids | {im_start, im_end}
    assert stop_token_ids(tok) == tok.eog_ids


def test_embedded_model_uses_chatml(llm):
    assert llm.chat_format is not None
    assert "<|im_end|>" in llm.chat_format.stop_tokens + llm.chat_format.stop_strings
    prompt = llm.chat_prompt(QUESTION).text
    assert prompt.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chat_answers_paris_and_ends_at_im_end(llm):
    answer = llm.chat(QUESTION, max_tokens=60, temperature=0)
    assert "Paris" in answer
    assert "<|im" not in answer
    # the reply is exactly the text before the model's <|im_end|>: generate past it to see
    im_end = llm.tokenizer.token_id("<|im_end|>")
    ids = list(llm.generate_tokens(llm.chat_prompt_ids(QUESTION), 60, stop_ids=(), temperature=0))
    assert im_end in ids
    assert llm.tokenizer.decode(ids[: ids.index(im_end)], clean_spaces=False) == answer


def test_chat_stream_pieces_join_to_chat(llm):
    kwargs = dict(max_tokens=40, temperature=0.9, seed=3)
    messages = [{"role": "user", "content": "Tell me about rivers."}]
    pieces = list(llm.chat_stream(messages, **kwargs))
    assert len(pieces) > 1
    assert "".join(pieces) == llm.chat(messages, **kwargs)


def test_system_prompt_changes_the_prompt(llm):
    default = llm.chat_prompt(QUESTION).text
    system = [{"role": "system", "content": "You answer like a pirate."}, *QUESTION]
    custom = llm.chat_prompt(system).text
    assert custom != default
    assert custom.startswith("<|im_start|>system\nYou answer like a pirate.<|im_end|>\n")
    assert "You answer like a pirate." not in default


def test_multi_turn_history_goes_into_the_prompt(llm):
    messages = [
        *QUESTION,
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    text = llm.chat_prompt(messages).text
    assert "<|im_start|>assistant\nParis.<|im_end|>\n<|im_start|>user\nAnd of Italy?" in text
    assert "Rome" in llm.chat(messages, max_tokens=40, temperature=0)


def test_special_token_text_in_user_content_stays_plain(llm):
    im_end = llm.tokenizer.token_id("<|im_end|>")
    plain = llm.chat_prompt_ids(QUESTION)
    tricky = llm.chat_prompt_ids([{"role": "user", "content": "say <|im_end|> please"}])
    assert tricky.count(im_end) == plain.count(im_end)


def test_chat_stop_strings_add_to_the_formats(llm):
    kwargs = dict(max_tokens=60, temperature=0)
    full = llm.chat(QUESTION, **kwargs)
    assert llm.chat(QUESTION, stop=["Paris"], **kwargs) == full.split("Paris")[0]


def test_malformed_messages_fail_before_generating(llm):
    with pytest.raises(ChatError):
        llm.chat_stream([{"role": "user"}])


def test_stop_strings_in_generate(llm):
    prompt = "The capital of France is"
    full = llm.generate(prompt, max_tokens=30, temperature=0)
    for stops in (["."], [" of", "\n"], "Paris"):
        stop_list = [stops] if isinstance(stops, str) else stops
        expected = cut_at_stops(full, stop_list)
        assert expected != full
        pieces = list(llm.stream(prompt, max_tokens=30, temperature=0, stop=stops))
        assert "".join(pieces) == expected
        assert llm.generate(prompt, max_tokens=30, temperature=0, stop=stops) == expected


def test_stop_string_that_never_appears_changes_nothing(llm):
    prompt = "Once upon a time"
    kwargs = dict(max_tokens=20, temperature=0)
    assert llm.generate(prompt, stop=["<never>"], **kwargs) == llm.generate(prompt, **kwargs)


def test_model_without_a_known_format_generates_but_chat_says_how_to_choose():
    tiny = corral.load(TINY, device="cpu")
    assert tiny.chat_format is None and "--chat-template" in tiny.chat_format_reason
    assert tiny.generate("the cat", max_tokens=3, temperature=0) is not None
    with pytest.raises(ChatError, match="--chat-template"):
        tiny.chat(QUESTION)


def test_chosen_chat_template_wins_and_a_bad_choice_fails_at_load():
    tiny = corral.load(TINY, device="cpu", chat_template="llama-2-chat")
    assert tiny.chat_format.name == "llama-2-chat"
    assert tiny.chat_prompt(QUESTION).text == f"<s>[INST] {QUESTION[0]['content']} [/INST]"
    with pytest.raises(ChatError, match="no-such-format"):
        corral.load(TINY, device="cpu", chat_template="no-such-format")
