"""Logit processors: small pure functions from logits (V,) to logits (V,).

A token is a candidate while its logit is finite; a processor removes candidates by setting
their logits to -inf and never revives one. Ties are broken towards the lower token id
(stable sorts), so results do not depend on a sort implementation. The Sampler composes
these in a documented order (see corral.sampling.sampler and README "Sampling").
"""

import math
from collections.abc import Sequence

import torch

NEG_INF = float("-inf")


def candidates(logits: torch.Tensor) -> torch.Tensor:
    """Bool (V,): the tokens still in the running."""
    return torch.isfinite(logits)


def _probs(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the candidates (removed tokens get 0)."""
    return torch.softmax(logits, dim=-1)


def _sorted_desc(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.sort(logits, descending=True, stable=True)


def _keep_sorted_prefix(logits: torch.Tensor, order: torch.Tensor, n: int) -> torch.Tensor:
    """Keep the first `n` tokens of `order` (ids), remove the rest."""
    keep = torch.zeros_like(logits, dtype=torch.bool)
    keep[order[:n]] = True
    return logits.masked_fill(~keep, NEG_INF)


# -- constraints and biases ---------------------------------------------------------------


def mask(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Remove the tokens `allowed` (bool (V,)) rules out (a grammar's mask)."""
    return logits.masked_fill(~allowed.to(device=logits.device, dtype=torch.bool), NEG_INF)


def logit_bias(logits: torch.Tensor, bias: Sequence[tuple[int, float]]) -> torch.Tensor:
    """Add bias[token] to each listed token's logit (-inf bans it)."""
    if not bias:
        return logits
    ids = torch.tensor([token for token, _ in bias], dtype=torch.long)
    values = torch.tensor([value for _, value in bias], dtype=logits.dtype)
    return logits.index_add(0, ids, values)


# -- repetition penalties -----------------------------------------------------------------


def penalties(
    logits: torch.Tensor,
    tokens: Sequence[int],
    repeat: float = 1.0,
    frequency: float = 0.0,
    presence: float = 0.0,
) -> torch.Tensor:
    """llama.cpp's penalties sampler over `tokens` (the window the caller chose).

    For each distinct token seen c > 0 times: divide a positive logit by `repeat` (multiply
    a logit <= 0 by it), then subtract c * frequency + presence.
    """
    if not tokens or (repeat == 1.0 and frequency == 0.0 and presence == 0.0):
        return logits
    counts = torch.bincount(torch.tensor(list(tokens), dtype=torch.long), minlength=len(logits))
    counts = counts[: len(logits)].to(logits.dtype)
    seen = counts > 0
    out = torch.where(logits <= 0, logits * repeat, logits / repeat)
    out = out - counts * frequency - seen.to(logits.dtype) * presence
    return torch.where(seen, out, logits)


def repetition_penalty(logits: torch.Tensor, tokens: Sequence[int], penalty: float) -> torch.Tensor:
    """HF transformers' RepetitionPenaltyLogitsProcessor: every token in `tokens` (all of
    the context, prompt included, however many times) has a negative logit multiplied and
    a positive one divided by `penalty`, once."""
    if penalty == 1.0 or not tokens:
        return logits
    return penalties(logits, tokens, repeat=penalty)


# -- truncation -----------------------------------------------------------------------------


def top_k(logits: torch.Tensor, k: int, keep_ties: bool = False) -> torch.Tensor:
    """Keep the k largest logits; k <= 0 keeps all.

    llama.cpp keeps exactly k (ties at the boundary go to the lower id here; llama.cpp's
    partial sort leaves that unspecified); HF keeps every token tied with the k-th
    (`keep_ties=True`).
    """
    n = int(candidates(logits).sum())
    if k <= 0 or k >= n:
        return logits
    sorted_logits, order = _sorted_desc(logits)
    if keep_ties:
        return logits.masked_fill(logits < sorted_logits[k - 1], NEG_INF)
    return _keep_sorted_prefix(logits, order, k)


def top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the most likely tokens, in order, until their probability mass reaches p
    (the token that reaches it stays; the first always stays); p >= 1 keeps all."""
    if p >= 1.0:
        return logits
    sorted_logits, order = _sorted_desc(logits)
    probs = _probs(sorted_logits)
    before = probs.cumsum(dim=-1) - probs  # mass strictly before each token
    n = max(1, int((before < p).sum()))
    return _keep_sorted_prefix(logits, order, min(n, int(candidates(logits).sum())))


def min_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep tokens with probability >= p * (top probability), i.e. logit >= max + ln p;
    p <= 0 keeps all."""
    if p <= 0.0:
        return logits
    threshold = logits.max() + math.log(p)
    return logits.masked_fill(logits < threshold, NEG_INF)


def typical(logits: torch.Tensor, p: float, hf: bool = False) -> torch.Tensor:
    """Locally typical sampling: rank tokens by |-log p - entropy| and keep the closest
    until their mass exceeds p; p >= 1 keeps all.

    llama.cpp stops at the first token whose running mass is > p; HF (`hf=True`) at the
    first whose running mass is >= p, and also keeps tokens tied with it in the ranking.
    """
    if p >= 1.0:
        return logits
    kept = torch.nonzero(candidates(logits)).flatten()  # (n,)
    sub = logits[kept]
    logp = torch.log_softmax(sub, dim=-1)
    entropy = -(logp.exp() * logp).sum()
    shifted = (-logp - entropy).abs()
    sorted_shifted, rank = torch.sort(shifted, stable=True)
    cumulative = logp.exp()[rank].cumsum(dim=-1)
    if hf:
        last = min(int((cumulative < p).sum()), len(rank) - 1)
        keep_sub = shifted <= sorted_shifted[last]
        keep_sub[rank[0]] = True
    else:
        over = torch.nonzero(cumulative > p).flatten()
        n = int(over[0]) + 1 if len(over) else len(rank)
        keep_sub = torch.zeros_like(shifted, dtype=torch.bool)
        keep_sub[rank[:n]] = True
    keep = torch.zeros_like(logits, dtype=torch.bool)
    keep[kept[keep_sub]] = True
    return logits.masked_fill(~keep, NEG_INF)


def temperature(logits: torch.Tensor, t: float) -> torch.Tensor:
    """Divide logits by t; t <= 0 keeps only the most likely token (lowest id on ties)."""
    if t <= 0.0:
        return _keep_sorted_prefix(logits, _sorted_desc(logits)[1], 1)
    return logits / t


# -- mirostat --------------------------------------------------------------------------------


def mirostat_v1(logits: torch.Tensor, mu: float, n_vocab: int, m: int = 100) -> torch.Tensor:
    """Mirostat 1 truncation (llama.cpp): estimate the Zipf exponent s from the top m
    tokens, keep the k most likely with k = ((s-1) 2^mu / (1 - N^(1-s)))^(1/s)."""
    sorted_logits, order = _sorted_desc(logits)
    n = int(candidates(logits).sum())
    probs = _probs(sorted_logits)
    count = min(m - 1, n - 1)
    if count <= 0:
        return _keep_sorted_prefix(logits, order, 1)
    i = torch.arange(count, dtype=torch.float64)
    t = torch.log((i + 2) / (i + 1))
    b = torch.log(probs[:count].double() / probs[1 : count + 1].double())
    s_hat = float((t * b).sum() / (t * t).sum())
    epsilon = s_hat - 1
    k = ((epsilon * 2.0**mu) / (1 - n_vocab ** (-epsilon))) ** (1 / s_hat)
    k = max(int(k), 1) if math.isfinite(k) else n
    return _keep_sorted_prefix(logits, order, min(k, n))


def mirostat_v2(logits: torch.Tensor, mu: float) -> torch.Tensor:
    """Mirostat 2 truncation (llama.cpp): keep the most likely tokens while their surprise
    -log2 p stays <= mu (at least one)."""
    sorted_logits, order = _sorted_desc(logits)
    surprise = -torch.log2(_probs(sorted_logits))
    over = torch.nonzero(surprise > mu).flatten()
    n = int(over[0]) if len(over) else int(candidates(logits).sum())
    return _keep_sorted_prefix(logits, order, max(n, 1))


def mirostat_update(mu: float, tau: float, eta: float, prob: float) -> float:
    """New mu after choosing a token of probability `prob` in the truncated distribution."""
    return mu - eta * (-math.log2(prob) - tau)
