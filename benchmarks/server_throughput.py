"""Aggregate generation speed of a running `corral serve` at 1, 4 and 16 concurrent streams.

Each client streams one /v1/completions request of exactly `--tokens` tokens (ignore_eos)
from its own prompt; a level's aggregate tokens/s is all generated tokens over the wall
time from the first request to the last token. Also shows the median time to first token.

    corral serve --parallel 16 -c 8192 &           # in another terminal
    python benchmarks/server_throughput.py [--url http://127.0.0.1:8000] [--api-key KEY]
        [--levels 1 4 16] [--tokens 64] [--json]
"""

import argparse
import asyncio
import json
import statistics
import time

import httpx

PROMPTS = [
    "The history of the bicycle",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at a temperature of",
    "My favourite book is",
    "The best way to learn a language is",
    "In the year 2050, cities will",
]


async def one_stream(client: httpx.AsyncClient, index: int, tokens: int) -> tuple[int, float]:
    """Stream one completion; returns (tokens received, seconds to the first one)."""
    body = {
        "prompt": f"{PROMPTS[index % len(PROMPTS)]} ({index})",
        "max_tokens": tokens,
        "ignore_eos": True,
        "temperature": 0.8,
        "seed": index,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = None
    received = 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk["choices"] and chunk["choices"][0]["text"]:
                first = first or time.perf_counter() - start
            if chunk.get("usage"):
                received = chunk["usage"]["completion_tokens"]
    return received, first or 0.0


async def level(url: str, api_key: str | None, streams: int, tokens: int) -> dict:
    """Run `streams` clients at once; their aggregate tokens/s and median first-token time."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=None, limits=limits) as c:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_stream(c, i, tokens) for i in range(streams)))
        seconds = time.perf_counter() - start
    total = sum(received for received, _ in results)
    return {
        "streams": streams,
        "tokens": total,
        "seconds": round(seconds, 2),
        "aggregate_tok_s": round(total / seconds, 1),
        "per_stream_tok_s": round(total / seconds / streams, 1),
        "median_ttft_s": round(statistics.median(first for _, first in results), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--json", action="store_true", help="one JSON object per level")
    args = parser.parse_args()
    models = httpx.get(
        f"{args.url}/v1/models",
        headers={"Authorization": f"Bearer {args.api_key}"} if args.api_key else {},
    ).json()
    meta = models["data"][0].get("meta", {})
    asyncio.run(level(args.url, args.api_key, 1, 4))  # warm-up
    rows = [asyncio.run(level(args.url, args.api_key, n, args.tokens)) for n in args.levels]
    if args.json:
        for row in rows:
            print(json.dumps({"model": models["data"][0]["id"], **meta, **row}))
        return
    print(
        f"model {models['data'][0]['id']}, {meta.get('n_slots')} slots of "
        f"{meta.get('slot_context')} tokens, {meta.get('device')} ({meta.get('dtype')}), "
        f"{args.tokens} tokens per stream"
    )
    print("| streams | aggregate tok/s | per-stream tok/s | median TTFT (s) | wall (s) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['streams']} | {row['aggregate_tok_s']} | {row['per_stream_tok_s']} | "
            f"{row['median_ttft_s']} | {row['seconds']} |"
        )


if __name__ == "__main__":
    main()
