"""What a Triton kernel compiles to on a GPU, read on a machine without one.

Triton compiles for any target without the device: this script runs corral's launchers
on CPU tensors with the launch intercepted, compiles each intercepted kernel for
`--arch` (sm_90 by default) with the specialization Triton would give those arguments
(16-byte alignment of pointers, divisibility by 16 of integers that have it), and prints
a census of its PTX: instructions, global loads and stores by width, shared-memory bytes
and operations, barriers. Comparing two versions of a kernel this way says whether a
change adds shuffles through shared memory or splits vector stores before any GPU time
is spent on it (timings still need the GPU: benchmarks/kernel_bandwidth.py).

    PYTHONPATH=. python benchmarks/ptx_census.py [--types Q4_K,Q8_0,GPTQ3g32a]
        [--kernels matvec,matvec-int8] [--layer] [--arch 90] [--shape 4096x4096] [--sass]

GPTQ types are named as corral.kernels.gptq names them ("GPTQ4g128"), with a trailing "a"
for act-order (the int8 path's quantizing kernel then gathers x's columns).

`--layer` adds the rest of a decode step and a prefill: RMSNorm (with the residual add),
silu * up, RoPE with the KV-cache store (float16 and q8_0), decode and prefill attention.
tests/kernels/test_gpu_compile.py runs it for every type, so CI (no GPU) compiles every
kernel with Triton's real compiler, not only in its interpreter.
"""

import argparse
import functools
import os
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
import triton
from kernel_bandwidth import random_gptq
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

from corral.kernels.gptq import parse_gptq_qtype
from corral.kernels.packing import BLOCKS, pack
from corral.kernels.triton.attention import decode_attention
from corral.kernels.triton.decode import KERNEL_TYPES
from corral.kernels.triton.dequant import dequantize
from corral.kernels.triton.elementwise import silu_mul, silu_mul_pairs
from corral.kernels.triton.int8_act import quantize_activations
from corral.kernels.triton.kv_store import rope_and_store
from corral.kernels.triton.matvec import MatvecConfig, matvec
from corral.kernels.triton.matvec_int8 import matvec_int8, supports_int8
from corral.kernels.triton.norm import add_rms_norm, rms_norm
from corral.kernels.triton.prefill_attention import prefill_attention

POINTER_TYPES = {
    torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16",
    torch.int64: "*i64", torch.int32: "*i32", torch.int16: "*i16", torch.int8: "*i8",
    torch.uint8: "*u8",
}  # fmt: skip
PREDICATE = r"^\s*(?:@!?%p\d+\s+)?"
COUNTED = re.compile(
    PREDICATE
    + r"((?:ld|st)\.(?:global|shared)[.\w:]*|bar\.sync|shfl\.sync[.\w]*|cvt[.\w]*|fma[.\w]*"
    + r"|dp4a[.\w]*|atom[.\w]*|fence[.\w]*)"
)
INSTRUCTION = re.compile(PREDICATE + r"[a-z][\w.:]*\s.*;")


def intercepted_launches(launch: Callable[[], object]) -> list[tuple[JITFunction, tuple, dict]]:
    """The (kernel, positional args, keyword args) of every Triton launch `launch` makes,
    none of them run."""
    calls = []

    def record(self: JITFunction, *args: object, grid: object, warmup: bool, **kwargs: object):
        calls.append((self, args, kwargs))

    with mock.patch.object(JITFunction, "run", record):
        launch()
    return calls


def compile_launch(kernel: JITFunction, args: tuple, kwargs: dict, arch: int):
    """`kernel` compiled for sm_`arch` as Triton would specialize it for `args`."""
    params = kernel.params
    values = dict(zip((p.name for p in params), args, strict=False))
    options = {}
    for name, value in kwargs.items():
        if name in values or any(p.name == name for p in params):
            values[name] = value
        else:
            options[name] = value  # num_warps, num_stages, launch attributes
    signature, constants, attrs = {}, {}, {}
    for index, param in enumerate(params):
        value = values[param.name]
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constants[param.name] = value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = POINTER_TYPES[value.dtype]
            attrs[(index,)] = [["tt.divisibility", 16]]
        else:  # Triton's own rule: ints of 1 become constants, multiples of 16 aligned
            kind, key = native_specialize_impl(
                BaseBackend, value, False, not param.do_not_specialize, True
            )
            signature[param.name] = kind
            if kind == "constexpr":
                constants[param.name] = key
            elif key == "D":
                attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(kernel, signature, constexprs=constants, attrs=attrs)
    kept = {k: v for k, v in options.items() if k in ("num_warps", "num_stages")}
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=kept)


def census(compiled, sass: bool = False) -> dict[str, int]:
    """Counts in the PTX of a compiled kernel; with `sass`, also its SASS instructions
    (`sass`) and those of the opcodes in SASS_COUNTED."""
    ptx = compiled.asm["ptx"].splitlines()
    counts = Counter(m.group(1) for line in ptx if (m := COUNTED.match(line)))
    counts["instructions"] = sum(1 for line in ptx if INSTRUCTION.match(line))
    counts["shared bytes"] = compiled.metadata.shared
    if sass:
        opcodes = sass_opcodes(compiled.asm["cubin"])
        counts["sass"] = len(opcodes)
        counts.update(f"sass {op}" for op in opcodes if op in SASS_COUNTED)
    return dict(counts)


SASS_COUNTED = {"IDP", "FFMA", "FMUL", "FADD", "LOP3", "SHF", "IMAD", "IADD3", "PRMT", "I2FP"}
SASS_OPCODE = re.compile(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def sass_opcodes(cubin: bytes) -> list[str]:
    """The opcode (without modifiers) of every instruction of `cubin`, by Triton's
    bundled cuobjdump."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        listing = subprocess.run(
            [str(tool), "-sass", file.name], capture_output=True, text=True, check=True
        ).stdout
    return SASS_OPCODE.findall(listing)


def packed_weight(qtype: str, n: int, k: int):
    """A packed (n, k) weight of random GGUF blocks, or of random GPTQ codes for a GPTQ
    qtype ("GPTQ3g32"; a trailing "a" for act-order) (values do not matter here)."""
    gptq = parse_gptq_qtype(qtype.removesuffix("a"))
    if gptq is not None:
        return random_gptq(*gptq, qtype.endswith("a"), n, k, device="cpu")
    block, size = BLOCKS[qtype]
    raw = torch.randint(0, 256, (n * k // block, size), dtype=torch.uint8)
    return pack(raw.view(n, -1), qtype, k)


def _half(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.float16)


def layer_kernels() -> None:
    """Launch every other kernel of a decode step and a prefill once, on a small layer of
    Llama-2-7B's head shapes (8 heads of 128, a float16 cache of 2 rows and 64 positions,
    then a q8_0 one)."""
    x, weight = _half(2, 4096), torch.ones(4096)
    rms_norm(x, weight, 1e-5)
    add_rms_norm(x, x, weight, 1e-5)
    add_rms_norm(x[:1], x[:1], weight, 1e-5, int8_bits=4)  # with int8 blocks for a decode step
    silu_mul(x, x)
    silu_mul_pairs(x)  # gate and up interleaved (dense path of SwiGLULinear)
    q, k = _half(1, 1, 8, 128), _half(1, 1, 8, 128)
    cache = _half(2, 8, 64, 128)
    codes, scales = torch.zeros(2, 8, 64, 128, dtype=torch.int8), _half(2, 8, 64, 4)
    positions = torch.zeros(1, 1, dtype=torch.long)
    for parts in ((cache,), (codes, scales)):
        rope_and_store(q, k, k, torch.zeros(1, 1, 64, 2), parts, parts, None, positions)
    starts = torch.zeros(1, dtype=torch.long)
    for kv, kv_scales in ((cache, None), (codes, scales)):
        decode_attention(
            q[:, 0], kv, kv, None, starts, 64, scale=0.1, k_scales=kv_scales, v_scales=kv_scales
        )
        prefill_attention(
            _half(1, 16, 8, 128),
            kv,
            kv,
            None,
            starts,
            scale=0.1,
            k_scales=kv_scales,
            v_scales=kv_scales,
        )
    decode_attention(q[:, 0], cache, cache, None, starts, 64, scale=0.1, int8_bits=4)


SPLIT_CONFIG = MatvecConfig(groups=32, num_warps=1, splits=2)  # two slices for every type
LAUNCHERS = {
    "dequant": lambda pw: dequantize(pw, torch.float16),
    "matvec": lambda pw: matvec(torch.zeros(1, pw.shape[1], dtype=torch.float16), pw),
    "matvec-split": lambda pw: matvec(_half(3, pw.shape[1]), pw, SPLIT_CONFIG),
    "matvec-swiglu": lambda pw: matvec(_half(1, pw.shape[1]), pw, swiglu=True),
    "matvec-int8": lambda pw: matvec_int8(
        quantize_activations(
            _half(1, pw.shape[1]), KERNEL_TYPES[pw.qtype].bits, pw.tensors.get("perm")
        ),
        pw,
    ),  # types that `supports_int8`: others are skipped
    "matvec-int8-swiglu": lambda pw: matvec_int8(
        quantize_activations(
            _half(1, pw.shape[1]), KERNEL_TYPES[pw.qtype].bits, pw.tensors.get("perm")
        ),
        pw,
        swiglu=True,
        out_int8_bits=4,
    ),  # with the int8 blocks of its output (the down projection's input)
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", default="Q4_0,Q8_0,Q4_K,Q6_K")
    parser.add_argument("--kernels", default=",".join(LAUNCHERS), help="per quant type")
    parser.add_argument("--layer", action="store_true", help="also norm, RoPE, KV store, attention")
    parser.add_argument("--shape", default="4096x4096", help="N x K of the weight")
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80, 90")
    parser.add_argument("--sass", action="store_true", help="also count SASS instructions")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter compiles nothing")
    n, k = (int(v) for v in args.shape.split("x"))
    report = functools.partial(print_census, arch=args.arch, sass=args.sass)
    if args.layer:
        for kernel, call_args, kwargs in intercepted_launches(layer_kernels):
            report("layer", kernel, call_args, kwargs)
    for qtype in args.types.split(","):
        pw = packed_weight(qtype, n, k)
        for name in args.kernels.split(","):
            if name.startswith("matvec-int8") and not supports_int8(pw.qtype):
                continue
            launch = functools.partial(LAUNCHERS[name], pw)
            for kernel, call_args, kwargs in intercepted_launches(launch):
                report(f"{qtype} {name}", kernel, call_args, kwargs)


def print_census(
    what: str, kernel: JITFunction, args: tuple, kwargs: dict, arch: int, sass: bool = False
) -> None:
    """Compile one intercepted launch for sm_`arch` and print its census on one line."""
    counts = census(compile_launch(kernel, args, kwargs, arch), sass)
    listed = ", ".join(f"{key} {value}" for key, value in sorted(counts.items()))
    print(f"{what} {kernel.__name__} sm_{arch}: {listed}", flush=True)


if __name__ == "__main__":
    main()
