"""LLM keeps what its KV cache holds: a prompt that starts like the previous call's prompt
and reply (a chat's next turn) is read from where they end, with the same result."""

import torch

import corral

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def count_new_tokens(llm):
    """Wrap the model's forward to record how many tokens each call processes."""
    seen = []
    forward = llm.model.forward

    def counting(tokens, start, **kwargs):
        seen.append(tokens.shape[1])
        return forward(tokens, start, **kwargs)

    llm.model.forward = counting
    return seen


def test_next_chat_turn_reads_only_the_new_tokens():
    llm = corral.load(n_ctx=512, device="cpu")
    fresh = corral.load(n_ctx=512, device="cpu")
    first = llm.chat(QUESTION, 12, temperature=0)
    follow_up = [
        *QUESTION,
        {"role": "assistant", "content": first},
        {"role": "user", "content": "And of Germany?"},
    ]
    prompt = llm.chat_prompt_ids(follow_up)
    seen = count_new_tokens(llm)
    second = llm.chat(follow_up, 12, temperature=0)
    reused = len(llm.chat_prompt_ids(QUESTION))  # at least the first turn's prompt
    assert seen[0] <= len(prompt) - reused  # the prefill skipped the cached prefix
    assert second == fresh.chat(follow_up, 12, temperature=0)


def test_a_different_prompt_starts_over():
    llm = corral.load(n_ctx=512, device="cpu")
    llm.generate("The capital of France is", 4, temperature=0)
    seen = count_new_tokens(llm)
    text = llm.generate("Water boils at", 4, temperature=0)
    prompt, before = llm.tokenize("Water boils at"), llm.tokenize("The capital of France is")
    shared = 1 if prompt[0] == before[0] == llm.tokenizer.bos_id else 0
    assert seen[0] == len(prompt) - shared  # at most a shared BOS is reused
    assert text == corral.load(n_ctx=512, device="cpu").generate("Water boils at", 4, temperature=0)


def test_writing_the_cache_directly_forgets_what_it_held():
    llm = corral.load(n_ctx=512, device="cpu")
    prompt = llm.tokenize("The capital of France is")
    first = llm.generate("The capital of France is", 4, temperature=0)
    llm.model(torch.tensor([list(reversed(prompt))]), 0)  # overwrites the cached entries
    seen = count_new_tokens(llm)
    assert llm.generate("The capital of France is", 4, temperature=0) == first
    assert seen[0] == len(prompt)  # read again from the start
