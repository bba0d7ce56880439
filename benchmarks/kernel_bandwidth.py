"""Speed of corral's fused quantized-linear Triton kernels on one GPU, against torch fp16.

For each GGUF type and weight shape (N out x K in; default 14336x4096 and 4096x14336, the
Llama-3-8B / Mistral-7B FFN shapes), with random valid blocks:
- matvec, batch 1: microseconds per call and effective TB/s = bytes of the weight read
  per call / time, for the packed weight (what the kernel reads) and for the GGUF file
  (what llama.cpp reads); torch fp16 `x @ W.T` on the dequantized weight beside it.
  Timed as a CUDA graph of calls that cycle through enough copies of the weight to
  exceed L2, so every call reads from DRAM, without Python launch overhead (as in decode).
- M = --m rows (default 512): TFLOP/s of the fused tensor-core kernel, of the dense path
  (one-pass dequantize + torch matmul, what `quantized_linear` runs for large M), of
  torch fp16 matmul on a ready dense weight, and the dequantize pass alone (us, TB/s of
  packed bytes read + fp16 written) (triton.testing.do_bench).
--sweep TYPES times matvec tile configurations, --dequant-sweep TYPES those of the
dequantize pass, --int8 TYPES the int8-activation matvec (`matvec_int8`, tilings of
INT8_SWEEP) beside the float one; --batches times matvec, fused matmul
and the dense path for Q4_K at each M (the dispatcher's thresholds). Kernels are
compiled by --jobs processes in parallel first. --gptq 4g128a,3g128 adds GPTQ rows (bits,
group size, "a" for act-order): the float matvec at batch 1, the int8 one (and the
quantizing kernel, which gathers x's columns for act-order), and `quantized_linear`
(whichever `int8_enabled` picks, with its gather or quantizing launch), TB/s of the
packed bytes.

    PYTHONPATH=. python3 benchmarks/kernel_bandwidth.py [--types Q4_0,Q4_K] [--sweep Q4_K]
"""

import argparse
import math
import multiprocessing
import time

import torch

from corral.kernels.act_quant import dequantize_activations
from corral.kernels.gptq import pack_gptq
from corral.kernels.packing import BLOCKS, pack
from corral.kernels.reference import dequantize_packed, linear_reference
from corral.kernels.triton.decode import KERNEL_TYPES
from corral.kernels.triton.dequant import dequantize
from corral.kernels.triton.int8_act import quantize_activations
from corral.kernels.triton.linear import dense_linear, quantized_linear
from corral.kernels.triton.matmul import matmul
from corral.kernels.triton.matvec import MatvecConfig, default_config, matvec
from corral.kernels.triton.matvec_int8 import Int8Tiles, matvec_int8

TYPES = ("Q4_0", "Q8_0", "Q4_K", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q5_K", "Q6_K")
# Byte offsets of the fp16 fields in a block (ggml-common.h).
F16_FIELDS = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
}  # fmt: skip
SWEEP = [  # block_n, groups, num_warps, split_waves, splits
    MatvecConfig(4, 64, 2),
    MatvecConfig(8, 64, 2),
    MatvecConfig(2, 64, 2),
    MatvecConfig(4, 32, 1),
    MatvecConfig(2, 32, 1),
    MatvecConfig(4, 128, 4),
    MatvecConfig(8, 128, 4),
    MatvecConfig(4, 64, 2, split_waves=2.0),
    MatvecConfig(4, 64, 2, splits=2),
    MatvecConfig(4, 32, 1, splits=2),
    MatvecConfig(2, 64, 2, splits=2),
    MatvecConfig(4, 64, 2, splits=4),
]
DEQUANT_SWEEP = [  # block_n, k_step, num_warps
    (32, 256, 4),
    (64, 256, 4),
    (16, 512, 4),
    (32, 512, 8),
    (64, 256, 8),
    (128, 128, 4),
    (32, 128, 4),
]
INT8_SWEEP = [  # block_n, groups, num_warps of matvec_int8 (Int8Tiles)
    (4, 64, 2),
    (8, 64, 2),
    (2, 64, 2),
    (4, 32, 1),
    (8, 32, 1),
    (4, 128, 4),
    (8, 128, 4),
    (16, 64, 2),
    (2, 128, 4),
]
L2_BYTES = 50 * 2**20


def random_gguf(qtype: str, n: int, k: int, device: str, seed: int = 0) -> torch.Tensor:
    """GGUF bytes (n, row_bytes) of random blocks with finite scales in [-0.01, 0.01]."""
    block, size = BLOCKS[qtype]
    g = torch.Generator(device=device).manual_seed(seed)
    blocks = torch.randint(
        0, 256, (n * k // block, size), dtype=torch.uint8, device=device, generator=g
    )
    for offset in F16_FIELDS[qtype]:
        scales = (torch.rand(blocks.shape[0], device=device, generator=g) - 0.5) / 50
        blocks[:, offset : offset + 2] = scales.half().view(torch.uint8).view(-1, 2)
    return blocks.view(n, -1)


def graph_time(calls: list, reps: int = 3) -> float:
    """Seconds per call of `calls` (closures) captured in one CUDA graph, best of reps."""
    for fn in calls:  # compile and warm up outside the capture
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in calls:
            fn()
    best = math.inf
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        stop.record()
        stop.synchronize()
        best = min(best, start.elapsed_time(stop) / 1e3 / len(calls))
    return best


def rotating(make, nbytes: int) -> list:
    """Enough copies (from `make()`) that cycling through them overflows L2 three times."""
    return [make() for _ in range(max(2, math.ceil(3 * L2_BYTES / nbytes)))]


def matvec_seconds(pws: list, x: torch.Tensor, cfg: MatvecConfig | None) -> float:
    calls = [lambda pw=pw: matvec(x, pw, cfg) for pw in pws] * max(1, 40 // len(pws))
    return graph_time(calls)


def bench_type(qtype: str, n: int, k: int, m_big: int) -> dict:
    raw = random_gguf(qtype, n, k, "cuda")
    gguf_bytes = raw.numel()
    pws = rotating(lambda: pack(raw, qtype, k), gguf_bytes)
    pw = pws[0]
    x = torch.randn(1, k, device="cuda", dtype=torch.float16)
    ref = linear_reference(x.float(), pw)
    err = ((matvec(x, pw).float() - ref).abs().max() / ref.abs().max()).item()
    t = matvec_seconds(pws, x, None)
    w16 = dequantize_packed(pw).half()  # (N, K)
    w16s = [w16] + [w16.clone() for _ in range(max(1, math.ceil(3 * L2_BYTES / w16.nbytes)) - 1)]
    t16 = graph_time([lambda w=w: torch.nn.functional.linear(x, w) for w in w16s] * 10)
    xb = torch.randn(m_big, k, device="cuda", dtype=torch.float16)
    ref_big = linear_reference(xb.float(), pw)
    err_mm = ((matmul(xb, pw).float() - ref_big).abs().max() / ref_big.abs().max()).item()
    err_dense = ((dense_linear(xb, pw).float() - ref_big).abs().max() / ref_big.abs().max()).item()
    flop = 2 * m_big * n * k
    from triton.testing import do_bench

    t_mm = do_bench(lambda: matmul(xb, pw)) / 1e3
    t_dense = do_bench(lambda: dense_linear(xb, pw)) / 1e3
    t_dq = do_bench(lambda: dequantize(pw, torch.float16)) / 1e3
    t_mm16 = do_bench(lambda: torch.nn.functional.linear(xb, w16)) / 1e3
    return {
        "type": qtype, "shape": f"{n}x{k}",
        "packed_MB": pw.nbytes() / 1e6, "gguf_MB": gguf_bytes / 1e6,
        "us": t * 1e6, "TBps_packed": pw.nbytes() / t / 1e12, "TBps_gguf": gguf_bytes / t / 1e12,
        "fp16_us": t16 * 1e6, "fp16_TBps": w16.nbytes / t16 / 1e12, "err": err,
        "mm_TFLOPs": flop / t_mm / 1e12, "dense_TFLOPs": flop / t_dense / 1e12,
        "fp16_mm_TFLOPs": flop / t_mm16 / 1e12, "mm_err": max(err_mm, err_dense),
        "dq_us": t_dq * 1e6, "dq_TBps": (pw.nbytes() + w16.nbytes) / t_dq / 1e12,
    }  # fmt: skip


def random_gptq(bits: int, group: int, act_order: bool, n: int, k: int, device: str = "cuda"):
    """A packed GPTQ weight (n, k) with random codes, scales in [0.001, 0.011), any zeros."""
    g = torch.Generator(device=device).manual_seed(bits)
    qweight = torch.randint(-(2**31), 2**31 - 1, (k * bits // 32, n), dtype=torch.int32,
                            device=device, generator=g)  # fmt: skip
    scales = (torch.rand(k // group, n, device=device, generator=g) / 100 + 0.001).half()
    zeros = torch.randint(0, 2**bits, (k // group, n), device=device, generator=g)
    g_idx = torch.arange(k, device=device, dtype=torch.int32) // group
    if act_order:
        g_idx = g_idx[torch.randperm(k, device=device, generator=g)]
    return pack_gptq(qweight, scales, zeros.to(torch.int16), g_idx, bits, group)


def bench_gptq(spec: str, n: int, k: int) -> None:
    """One GPTQ row (see the module docstring); `spec` like "4g128a"."""
    bits, rest = spec.split("g")
    bits, group, act = int(bits), int(rest.rstrip("a")), rest.endswith("a")
    pws = rotating(lambda: random_gptq(bits, group, act, n, k), k * n * bits // 8)
    x = torch.randn(1, k, device="cuda", dtype=torch.float16)
    ref = linear_reference(x.float(), pws[0])
    err = ((quantized_linear(x, pws[0]).float() - ref).abs().max() / ref.abs().max()).item()
    t_mv = matvec_seconds(pws, x, None)
    reps = max(1, 40 // len(pws))
    t_ql = graph_time([lambda pw=pw: quantized_linear(x, pw) for pw in pws] * reps)
    perm = pws[0].tensors.get("perm")  # all copies share one column order
    xq = quantize_activations(x, KERNEL_TYPES[pws[0].qtype].bits, perm)
    t_int8 = graph_time([lambda pw=pw: matvec_int8(xq, pw) for pw in pws] * reps)
    t_quant = graph_time([lambda: quantize_activations(x, xq.bits, perm)] * 40)
    nbytes = pws[0].nbytes()
    print(
        f"| GPTQ {spec} | {n}x{k} | {nbytes / 1e6:.1f} | matvec {t_mv * 1e6:.1f} us, "
        f"{nbytes / t_mv / 1e12:.2f} TB/s | int8 matvec {t_int8 * 1e6:.1f} us, "
        f"{nbytes / t_int8 / 1e12:.2f} TB/s, quantize x {t_quant * 1e6:.1f} us | "
        f"quantized_linear {t_ql * 1e6:.1f} us, {nbytes / t_ql / 1e12:.2f} TB/s | "
        f"err {err:.1e} |",
        flush=True,
    )


def sweep(qtype: str, n: int, k: int) -> None:
    raw = random_gguf(qtype, n, k, "cuda")
    pws = rotating(lambda: pack(raw, qtype, k), raw.numel())
    x = torch.randn(1, k, device="cuda", dtype=torch.float16)
    rows = []
    for cfg in SWEEP:
        try:
            t = matvec_seconds(pws, x, cfg)
        except Exception as err:  # e.g. out of registers: report and go on
            print(f"  {cfg} failed: {err!r}")
            continue
        rows.append((pws[0].nbytes() / t / 1e12, cfg))
    rows.sort(key=lambda r: -r[0])
    print(f"sweep {qtype} {n}x{k} default {default_config(qtype, 1, k)}")
    for tbps, cfg in rows:
        print(f"  {tbps:5.2f} TB/s  {cfg}")


def int8_sweep(qtype: str, n: int, k: int) -> None:
    """The float matvec against the int8-activation matvec (each INT8_SWEEP tiling) and
    the activations' quantizing kernel, batch 1."""
    raw = random_gguf(qtype, n, k, "cuda")
    pws = rotating(lambda: pack(raw, qtype, k), raw.numel())
    nbytes = pws[0].nbytes()
    x = torch.randn(1, k, device="cuda", dtype=torch.float16)
    xq = quantize_activations(x, KERNEL_TYPES[qtype].bits)
    ref = linear_reference(dequantize_activations(xq), pws[0])
    err = ((matvec_int8(xq, pws[0]).float() - ref).abs().max() / ref.abs().max()).item()
    reps = max(1, 40 // len(pws))
    t_float = matvec_seconds(pws, x, None)
    t_quant = graph_time([lambda: quantize_activations(x, xq.bits)] * 40)
    print(
        f"int8 {qtype} {n}x{k}: float matvec {t_float * 1e6:.1f} us {nbytes / t_float / 1e12:.2f}"
        f" TB/s; quantize x {t_quant * 1e6:.1f} us; int8 rel err {err:.1e}",
        flush=True,
    )
    for bn, groups, warps in INT8_SWEEP:
        tiles = Int8Tiles(bn, groups, warps)
        calls = [lambda pw=pw, t=tiles: matvec_int8(xq, pw, tiles=t) for pw in pws] * reps
        try:
            t = graph_time(calls)
        except Exception as fail:  # e.g. out of registers: report and go on
            print(f"  int8 {bn} x {groups}, {warps} warps failed: {fail!r}"[:300])
            continue
        tiles = f"int8 {bn} x {groups}, {warps} warps"
        print(f"  {t * 1e6:6.1f} us {nbytes / t / 1e12:5.2f} TB/s  {tiles}")


def dequant_sweep(qtype: str, n: int, k: int) -> None:
    raw = random_gguf(qtype, n, k, "cuda")
    pw = pack(raw, qtype, k)
    moved = pw.nbytes() + 2 * n * k  # packed bytes read, fp16 written
    from triton.testing import do_bench

    print(f"dequant sweep {qtype} {n}x{k}")
    for cfg in DEQUANT_SWEEP:
        tiles = f"{cfg[0]} x {cfg[1]}, {cfg[2]} warps"
        try:
            t = do_bench(lambda cfg=cfg: dequantize(pw, torch.float16, *cfg)) / 1e3
        except Exception as err:  # report and go on
            print(f"  {tiles} failed: {err!r}")
            continue
        print(f"  {t * 1e6:6.1f} us {moved / t / 1e12:5.2f} TB/s  {tiles}")


def crossover(qtype: str, n: int, k: int, batches: list[int]) -> None:
    raw = random_gguf(qtype, n, k, "cuda")
    pws = rotating(lambda: pack(raw, qtype, k), raw.numel())
    reps = max(1, 40 // len(pws))
    for m in batches:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        t_mv = matvec_seconds(pws, x, None) if m <= 8 else math.nan
        t_mm = graph_time([lambda pw=pw, x=x: matmul(x, pw) for pw in pws] * reps)
        t_dn = graph_time([lambda pw=pw, x=x: dense_linear(x, pw) for pw in pws] * reps)
        times = f"matvec {t_mv * 1e6:7.1f}  matmul {t_mm * 1e6:7.1f}  dense {t_dn * 1e6:7.1f} us"
        print(f"crossover {qtype} {n}x{k} M={m:3d}: {times}", flush=True)


def _safe_compile(job: tuple) -> str:
    try:
        _compile_worker(job)
    except Exception as err:
        return repr(err)[:300]
    return ""


def _compile_worker(job: tuple) -> str:
    """Run one kernel configuration once on small tensors of the real shape class."""
    kind, qtype, n, k, m, cfg = job
    raw = random_gguf(qtype, n, k, "cuda")
    pw = pack(raw, qtype, k)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    if kind == "mv":
        matvec(x, pw, cfg)
    elif kind == "mm":
        matmul(x, pw, cfg)
    elif kind == "dq":
        dequantize(pw, torch.float16, *cfg)
    else:
        dense_linear(x, pw)
    torch.cuda.synchronize()
    return qtype


def precompile(jobs: list, procs: int) -> None:
    """Fill Triton's on-disk cache from `procs` processes (compiling is single-threaded)."""
    start = time.time()
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        for job, result in zip(jobs, pool.imap(_safe_compile, jobs, chunksize=1), strict=True):
            if result:
                print(f"compile {job[:5]} failed: {result}")
    print(f"compiled {len(jobs)} kernel configurations in {time.time() - start:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--shapes", default="14336x4096,4096x14336")
    ap.add_argument("--m", type=int, default=512, help="rows of the matmul benchmark")
    ap.add_argument("--sweep", default="", help="types whose matvec tiles to sweep")
    ap.add_argument("--dequant-sweep", default="", help="types whose dequantize tiles to sweep")
    ap.add_argument("--batches", default="", help="e.g. 1,2,4,8,16: matvec/matmul crossover")
    ap.add_argument("--jobs", type=int, default=12, help="compile processes (0: none)")
    ap.add_argument("--gptq", default="", help="e.g. 4g128a,3g128: GPTQ matvec rows")
    ap.add_argument("--int8", default="", help="types: float vs int8-activation matvec")
    ap.add_argument("--compile-only", action="store_true", help="fill the kernel cache, exit")
    args = ap.parse_args()
    types = [t for t in args.types.split(",") if t]
    shapes = [tuple(map(int, s.split("x"))) for s in args.shapes.split(",")]
    swept = [t for t in args.sweep.split(",") if t]
    dq_swept = [t for t in args.dequant_sweep.split(",") if t]
    batches = [int(b) for b in args.batches.split(",") if b]
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    jobs = [("mv", t, n, k, 1, None) for t in types for n, k in shapes]
    jobs += [("mm", t, n, k, args.m, None) for t in types for n, k in shapes[:1]]
    jobs += [("dense", t, n, k, args.m, None) for t in types for n, k in shapes[:1]]
    jobs += [("mv", t, n, k, 1, c) for t in swept for n, k in shapes for c in SWEEP]
    jobs += [("dq", t, *shapes[0], 1, c) for t in dq_swept for c in DEQUANT_SWEEP]
    jobs += [("mv", "Q4_K", n, k, m, None) for m in batches if m <= 8 for n, k in shapes[:2]]
    jobs += [("mm", "Q4_K", *shapes[0], m, None) for m in batches]
    if args.jobs > 0:
        precompile(jobs, args.jobs)
    if args.compile_only:
        return
    print(
        "| type | N x K | packed MB | GGUF MB | matvec us | TB/s packed | TB/s GGUF | "
        "fp16 us | fp16 TB/s | max rel err | fused mm TFLOP/s | dense TFLOP/s | "
        "fp16 TFLOP/s | mm rel err | dequant us | dequant TB/s |"
    )
    print("|" + "---|" * 16)
    for t in types:
        for n, k in shapes:
            try:
                r = bench_type(t, n, k, args.m)
            except Exception as err:  # one failing type must not hide the others
                print(f"| {t} | {n}x{k} | failed: {err!r} |", flush=True)
                continue
            cells = (
                f"{r['type']} | {r['shape']} | {r['packed_MB']:.1f} | {r['gguf_MB']:.1f}",
                f"{r['us']:.1f} | {r['TBps_packed']:.2f} | {r['TBps_gguf']:.2f}",
                f"{r['fp16_us']:.1f} | {r['fp16_TBps']:.2f} | {r['err']:.1e}",
                f"{r['mm_TFLOPs']:.0f} | {r['dense_TFLOPs']:.0f} | {r['fp16_mm_TFLOPs']:.0f}",
                f"{r['mm_err']:.1e} | {r['dq_us']:.1f} | {r['dq_TBps']:.2f}",
            )
            print("| " + " | ".join(cells) + " |", flush=True)
    for spec in [s for s in args.gptq.split(",") if s]:
        for n, k in shapes:
            bench_gptq(spec, n, k)
    for t in swept:
        for n, k in shapes:
            sweep(t, n, k)
    for t in dq_swept:
        dequant_sweep(t, *shapes[0])
    for t in [t for t in args.int8.split(",") if t]:
        for n, k in shapes:
            int8_sweep(t, n, k)
    for n, k in shapes[:2] if batches else []:
        try:
            crossover("Q4_K", n, k, batches)
        except Exception as err:  # report and go on
            print(f"crossover {n}x{k} failed: {err!r}")


if __name__ == "__main__":
    main()
