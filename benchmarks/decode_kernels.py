"""Speed of the decode step's small Triton kernels against the torch ops they replace.

- attention: `decode_attention` (flash-decoding over the KV cache, float16 or q8_0) for
  Llama-2-7B (32 heads, 32 KV heads) and 70B (64 heads, 8 KV heads) shapes at batch 1
  and 16 and several context lengths: microseconds per call and effective TB/s (cache
  bytes read per call / time), beside the unfused path it replaced (gather the rows'
  cache up to a 256-rounded end, dequantize a q8_0 cache, SDPA with a mask).
  `--splits 64,128,...` times the kernel at each chunk length too (the split policy).
- norm / rope: `rms_norm`, `add_rms_norm` and `rope_and_store` (RoPE of q and k, k and
  v into a float16 cache) at a decode shape (one token) and a prefill shape (512 tokens)
  beside the torch ops of corral.model.layers and an index_copy_ into the cache.

On CUDA every row is timed as a CUDA graph of repeated calls (no Python launch cost, as
in decode). The cache is made larger than the L2 cache by cycling through copies.
Elsewhere (`--device cpu`, Triton's interpreter: TRITON_INTERPRET=1) the same code runs
on tiny shapes only to check that it works; the times mean nothing there.

    PYTHONPATH=. python3 benchmarks/decode_kernels.py [--contexts 512,4096,16384]
"""

import argparse
import math
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from corral.kernels.kv_q8 import quantize_q8_0
from corral.kernels.triton.attention import decode_attention
from corral.kernels.triton.kv_store import rope_and_store
from corral.kernels.triton.norm import add_rms_norm, rms_norm
from corral.model.layers import apply_rope

L2_BYTES = 50 * 2**20  # H100
SHAPES = {"7B": (32, 32, 128, 4096), "70B": (64, 8, 128, 8192)}  # H, Hkv, D, E


def seconds_per_call(fn: Callable[[], object], device: torch.device, calls: int = 20) -> float:
    """Best-of-3 seconds per call of `fn`: a CUDA graph of `calls` calls on CUDA."""
    fn()
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    best = math.inf
    for _ in range(3):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        stop.record()
        stop.synchronize()
        best = min(best, start.elapsed_time(stop) / 1e3 / calls)
    return best


def cache_copies(shape: tuple, q8: bool, device: torch.device, budget: int) -> list:
    """Copies of a random (R, Hkv, S, D) cache, (values, scales|None) each, enough that
    cycling through them overflows L2 (one copy off CUDA)."""
    values = torch.randn(shape, device=device, dtype=torch.float16)
    one = quantize_q8_0(values) if q8 else (values, None)
    size = sum(t.numel() * t.element_size() for t in one if t is not None)
    count = max(2, math.ceil(3 * L2_BYTES / size)) if device.type == "cuda" else 1
    count = min(count, max(1, budget // size))
    return [one] + [tuple(None if t is None else t.clone() for t in one) for _ in range(count - 1)]


def unfused_attention(q, keys, values, rows, positions, end, q8: bool):
    """The path before the kernel: gather rows up to a 256-rounded end, dequantize q8_0,
    SDPA with a boolean mask (corral.model.layers before the fused kernels)."""
    from corral.kernels.kv_q8 import dequantize_q8_0

    bucket = min(keys[0].shape[2], -(-end // 256) * 256)
    k, v = (c[0][rows, :, :bucket] for c in (keys, values))  # (B, Hkv, bucket, D)
    if q8:
        k = dequantize_q8_0(k, keys[1][rows, :, :bucket], q.dtype)
        v = dequantize_q8_0(v, values[1][rows, :, :bucket], q.dtype)
    key_pos = torch.arange(bucket, device=q.device)
    mask = (key_pos[None, :] <= positions[:, None])[:, None, None]  # (B, 1, 1, bucket)
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=mask, enable_gqa=gqa)


def bench_attention(args, device: torch.device) -> None:
    print("| shape | B | ctx | cache | kernel us | TB/s | unfused us | speed-up |")
    print("|---|--:|--:|---|--:|--:|--:|--:|")
    for name in args.shapes.split(","):
        heads, kv_heads, dim, _ = SHAPES[name]
        for batch in map(int, args.batches.split(",")):
            for ctx in map(int, args.contexts.split(",")):
                for q8 in (False, True):
                    attention_row(name, heads, kv_heads, dim, batch, ctx, q8, args, device)


def attention_row(name, heads, kv_heads, dim, batch, ctx, q8, args, device) -> None:
    shape = (batch, kv_heads, ctx, dim)
    copies = cache_copies(shape, q8, device, args.memory_gib << 30)
    q = torch.randn(batch, heads, dim, device=device, dtype=torch.float16)
    rows = torch.arange(batch, device=device)
    positions = torch.full((batch,), ctx - 1, device=device)
    scale = dim**-0.5
    pairs = list(zip(copies, copies[1:] + copies[:1], strict=True))  # (keys, values)

    def kernel(split=None):
        for keys, values in pairs:
            decode_attention(
                q, keys[0], values[0], rows, positions, ctx, scale=scale,
                k_scales=keys[1], v_scales=values[1], split=split,
            )  # fmt: skip

    def unfused():
        for keys, values in pairs:
            unfused_attention(q, keys, values, rows, positions, ctx, q8)

    per_call = seconds_per_call(kernel, device, calls=2) / len(pairs)
    baseline = seconds_per_call(unfused, device, calls=2) / len(pairs)
    read = 2 * sum(t.numel() * t.element_size() for t in copies[0] if t is not None)
    cache = "q8_0" if q8 else "f16"
    print(
        f"| {name} | {batch} | {ctx} | {cache} | {per_call * 1e6:.1f} | "
        f"{read / per_call / 1e12:.2f} | {baseline * 1e6:.1f} | {baseline / per_call:.1f}x |"
    )
    for split in map(int, filter(None, args.splits.split(","))):
        timed = seconds_per_call(lambda s=split: kernel(s), device, calls=2) / len(pairs)
        print(f"|   split {split} | | | | {timed * 1e6:.1f} | {read / timed / 1e12:.2f} | | |")


def bench_norm_rope(args, device: torch.device) -> None:
    print("\n| op | shape | kernel us | torch us | speed-up |")
    print("|---|---|--:|--:|--:|")
    for name in args.shapes.split(","):
        for tokens in (1, args.prefill):
            for op, fused, reference in norm_rope_cases(SHAPES[name], tokens, device):
                ours, theirs = (seconds_per_call(f, device) for f in (fused, reference))
                print(
                    f"| {op} | {name} T={tokens} | {ours * 1e6:.1f} | {theirs * 1e6:.1f} | "
                    f"{theirs / ours:.1f}x |"
                )


def norm_rope_cases(shape: tuple, tokens: int, device: torch.device) -> list:
    """(op, fused kernel call, torch ops call) at `tokens` tokens of a model `shape`."""
    heads, kv_heads, dim, width = shape
    x = torch.randn(tokens, width, device=device, dtype=torch.float16)
    residual = torch.randn_like(x)
    weight = torch.rand(width, device=device)
    q = torch.randn(1, tokens, heads, dim, device=device, dtype=torch.float16)
    k = torch.randn(1, tokens, kv_heads, dim, device=device, dtype=torch.float16)
    v = torch.randn_like(k)
    angles = torch.rand(1, tokens, dim // 2, device=device) * 6
    table = torch.stack((angles.cos(), angles.sin()), dim=-1)  # (1, T, D/2, 2)
    caches = [torch.zeros(1, kv_heads, tokens, dim, device=device, dtype=torch.float16)] * 2
    positions = torch.arange(tokens, device=device)  # (T,)

    def torch_rope_and_store() -> torch.Tensor:
        rotated_k = apply_rope(k, table)[0].transpose(0, 1)  # (Hkv, T, D)
        caches[0][0].index_copy_(1, positions, rotated_k)
        caches[1][0].index_copy_(1, positions, v[0].transpose(0, 1))
        return apply_rope(q, table)

    return [
        ("rms_norm", lambda: rms_norm(x, weight, 1e-5), lambda: torch_norm(x, weight)),
        (
            "add_rms_norm",
            lambda: add_rms_norm(x, residual, weight, 1e-5),
            lambda: torch_norm(x + residual, weight),
        ),
        (
            "rope q+k, store k+v",
            lambda: rope_and_store(q, k, v, table, caches[:1], caches[1:], None, positions[None]),
            torch_rope_and_store,
        ),
    ]


def torch_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """corral.model.layers.RMSNorm's torch ops."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)
    return (normed * weight.float()).to(x.dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shapes", default="7B,70B", help="of " + ",".join(SHAPES))
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--contexts", default="512,4096,16384")
    ap.add_argument("--splits", default="", help="chunk lengths to time besides the policy's")
    ap.add_argument("--prefill", type=int, default=512, help="tokens of the prefill shape")
    ap.add_argument("--memory-gib", type=int, default=16, help="cap on cache copies")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":  # numpy >= 2.4 needs the tests' patch
        from tests.triton_interpreter import fix_interpreter

        fix_interpreter()
    device = torch.device(args.device)
    with torch.inference_mode():
        bench_attention(args, device)
        bench_norm_rope(args, device)


if __name__ == "__main__":
    main()
