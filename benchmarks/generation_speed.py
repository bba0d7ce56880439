"""Prompt processing (pp) and generation (tg) speed of corral, and of llama.cpp on the same file.

llama-bench style: pp = tokens/s over one batch of `--pp` random prompt tokens; tg = tokens/s
over `--tg` single-token decode steps after it. llama.cpp is measured through
llama-cpp-python when it is installed (`pip install llama-cpp-python==0.3.36`, a ~7 minute
build). Prints one JSON object per engine.

    python benchmarks/generation_speed.py [-m model.gguf] [--pp 512] [--tg 128] [--threads 2]
"""

import argparse
import json
import random
import time
from pathlib import Path

import torch

from corral.default_model import default_model_path
from corral.formats.gguf import GGUFFile
from corral.loader import load_gguf_model
from corral.tools.bench import cpu_name


def corral_speed(path: Path, n_pp: int, n_tg: int, device: str) -> dict:
    """pp and tg tokens/s of corral's model, fed random token ids."""
    with GGUFFile(path) as gguf:
        model = load_gguf_model(gguf, torch.device(device), torch.float32, n_pp + n_tg + 1).model
    prompt = torch.randint(100, model.config.n_vocab, (1, n_pp), device=device)  # (1, pp)
    model(prompt[:, :8], 0, last_only=True)  # warm-up
    start = time.perf_counter()
    model(prompt, 0, last_only=True)
    pp_seconds = time.perf_counter() - start
    token = prompt[:, :1]  # (1, 1)
    start = time.perf_counter()
    for step in range(n_tg):
        model(token, n_pp + step)
    tg_seconds = time.perf_counter() - start
    return {"engine": "corral", "pp": n_pp / pp_seconds, "tg": n_tg / tg_seconds}


def llama_cpp_speed(path: Path, n_pp: int, n_tg: int, threads: int) -> dict | None:
    """The same measurement through llama.cpp, or None when llama-cpp-python is absent."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(
        model_path=str(path), n_ctx=n_pp + n_tg + 8, n_batch=n_pp, n_threads=threads, verbose=False
    )
    prompt = [random.randrange(100, llm.n_vocab()) for _ in range(n_pp)]
    llm.eval(prompt[:8])
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    pp_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(n_tg):
        llm.eval([prompt[0]])
    tg_seconds = time.perf_counter() - start
    return {"engine": "llama.cpp", "pp": n_pp / pp_seconds, "tg": n_tg / tg_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", type=Path, default=None)
    parser.add_argument("--pp", type=int, default=512)
    parser.add_argument("--tg", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    path = args.model or default_model_path()
    torch.set_num_threads(args.threads)
    common = {"model": path.name, "threads": args.threads, "machine": cpu_name()}
    results = [corral_speed(path, args.pp, args.tg, args.device)]
    results.append(llama_cpp_speed(path, args.pp, args.tg, args.threads))
    for result in filter(None, results):
        rounded = {key: round(value, 1) for key, value in result.items() if key in ("pp", "tg")}
        print(json.dumps({**common, **result, **rounded}))


if __name__ == "__main__":
    main()
