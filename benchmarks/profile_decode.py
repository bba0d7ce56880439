"""Where a one-token decode step (or a prefill) spends its GPU time.

Loads a model as `corral bench` does, then
- times `--steps` one-token decode steps replayed from CUDA graphs (what tg128 measures),
- runs the same steps eagerly under torch.profiler and prints the GPU kernels ranked by
  their total time per step, with the sum of all kernel time per step.

The gap between the graph step's wall time and the kernel time per step is time the GPU
spends idle between kernels; the ranking says which kernels to make faster.

`--prefill N` profiles one prefill of N tokens from position 0 instead (what ppN
measures): its wall time replayed from a CUDA graph and eagerly, against the summed
kernel time of the eager run, says how much of it the GPU waits for the host.

    python benchmarks/profile_decode.py -m llama-2-7B-Q4_K_M.gguf --position 64 --steps 32
    python benchmarks/profile_decode.py -m llama-2-7B-Q4_K_M.gguf --prefill 512
"""

import argparse
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from corral.interfaces.api import LLM


def decode_steps(model: torch.nn.Module, first: int, steps: int) -> None:
    """`steps` one-token greedy steps from cache position `first`, token ids kept on the GPU."""
    token = torch.ones((1, 1), dtype=torch.long, device="cuda")  # (1, 1)
    for position in range(first, first + steps):
        logits = model(token, position)  # (1, 1, V)
        token = logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)


def graph_step_ms(model: torch.nn.Module, first: int, steps: int) -> float:
    """Milliseconds per decode step with CUDA graphs (after a warm-up pass)."""
    decode_steps(model, first, steps)
    torch.cuda.synchronize()
    start = time.perf_counter()
    decode_steps(model, first, steps)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3 / steps


def kernel_times(model: torch.nn.Module, first: int, steps: int) -> dict[str, tuple[float, int]]:
    """Per kernel name: (GPU microseconds per step, launches per step), eager decode."""
    graphs, model.graphs = model.graphs, None
    try:
        decode_steps(model, first, steps)  # warm-up: Triton compiles, cuBLAS handles
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            decode_steps(model, first, steps)
            torch.cuda.synchronize()
    finally:
        model.graphs = graphs
    return per_kernel(prof, steps)


def prefill_ms(model: torch.nn.Module, ids: torch.Tensor) -> float:
    """Milliseconds of one last-token-only prefill of `ids` (1, T) from position 0, after
    a warm-up call (which records the CUDA graph, when the model has prefill graphs)."""
    model(ids, 0, last_only=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    model(ids, 0, last_only=True)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def prefill_times(model: torch.nn.Module, n_tokens: int) -> tuple[float, float, dict]:
    """(graph-replayed wall ms, eager wall ms, eager per-kernel times) of one prefill of
    n_tokens from position 0."""
    ids = torch.randint(3, model.config.n_vocab, (1, n_tokens), device="cuda")  # (1, T)
    graph_ms = prefill_ms(model, ids)
    graphs, model.prefill_graphs = model.prefill_graphs, None
    try:
        eager_ms = prefill_ms(model, ids)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(ids, 0, last_only=True)
            torch.cuda.synchronize()
    finally:
        model.prefill_graphs = graphs
    return graph_ms, eager_ms, per_kernel(prof, 1)


def per_kernel(prof: profile, steps: int) -> dict[str, tuple[float, int]]:
    """Per GPU kernel name in a profile: (microseconds per step, launches per step)."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = totals[event.name]
            entry[0] += event.device_time
            entry[1] += 1
    return {name: (us / steps, count // steps) for name, (us, count) in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", type=Path, required=True)
    parser.add_argument("--position", type=int, default=64, help="cache position of step 1")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--prefill", type=int, default=0, help="profile a prefill of N tokens")
    parser.add_argument("--top", type=int, default=25, help="kernels to list")
    args = parser.parse_args()

    n_ctx = max(args.position + args.steps + 1, args.prefill)
    llm = LLM(args.model, n_ctx=n_ctx, device="cuda")
    model = llm.model
    model.setup_cache(1, n_ctx)
    if args.prefill:
        wall_ms, eager_ms, times = prefill_times(model, args.prefill)
        what = f"prefill of {args.prefill} tokens from a graph: {wall_ms:.3f} ms"
        what += f" (eager {eager_ms:.3f} ms)"
    else:
        wall_ms = graph_step_ms(model, args.position, args.steps)
        times = kernel_times(model, args.position, args.steps)
        what = f"graph-replayed step: {wall_ms:.3f} ms"
    total_us = sum(us for us, _ in times.values())
    print(
        f"{what}; kernel time per step (eager): "
        f"{total_us / 1e3:.3f} ms in {sum(n for _, n in times.values())} kernels"
    )
    print("| kernel | us/step | launches/step | share |\n|---|---|---|---|")
    ranked = sorted(times.items(), key=lambda item: -item[1][0])
    for name, (us, count) in ranked[: args.top]:
        print(f"| {name[:90]} | {us:.1f} | {count} | {us / total_us:.1%} |")


if __name__ == "__main__":
    main()
