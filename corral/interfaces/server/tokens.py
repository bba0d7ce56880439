"""POST /tokenize and POST /detokenize, in llama.cpp server's shapes."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from corral.interfaces.server.errors import APIError
from corral.interfaces.server.protocol import DetokenizeRequest, TokenizeRequest, parse_body
from corral.interfaces.server.state import ServerState
from corral.tokenizer import Tokenizer

router = APIRouter()


@router.post("/tokenize")
async def tokenize(request: Request) -> dict[str, Any]:
    """{"content", "add_special" (false), "parse_special" (true), "with_pieces" (false)} ->
    {"tokens": [ids]} or {"tokens": [{"id", "piece"}]}, piece a string or, when the token's
    bytes are not valid UTF-8 alone, a list of byte values."""
    body = parse_body(TokenizeRequest, await request.body())
    state: ServerState = request.app.state.server
    llm, _ = state.require()
    tokenizer = llm.tokenizer
    ids = await run_in_threadpool(
        tokenizer.encode,
        body.content,
        add_special=body.add_special,
        parse_special=body.parse_special,
    )
    if not body.with_pieces:
        return {"tokens": ids}
    return {"tokens": [{"id": token, "piece": piece(tokenizer, token)} for token in ids]}


@router.post("/detokenize")
async def detokenize(request: Request) -> dict[str, Any]:
    """{"tokens": [ids]} -> {"content": text}; ids outside the vocabulary are refused."""
    body = parse_body(DetokenizeRequest, await request.body())
    state: ServerState = request.app.state.server
    llm, _ = state.require()
    n_vocab = llm.tokenizer.vocab_size
    for i, token in enumerate(body.tokens):
        if token >= n_vocab:
            raise APIError(
                400,
                f"tokens[{i}]: token id {token} is outside the vocabulary [0, {n_vocab})",
                param="tokens",
            )
    text = await run_in_threadpool(llm.tokenizer.decode, body.tokens)
    return {"content": text}


def piece(tokenizer: Tokenizer, token: int) -> str | list[int]:
    """A token's piece: its text, or its bytes when they are not valid UTF-8."""
    data = tokenizer.token_bytes(token, special=True)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return list(data)
