"""What a Triton kernel compiles to on a GPU, read on a machine without one.

Triton compiles for any target without the device: this script runs corral's launchers
on CPU tensors with the launch intercepted, compiles each intercepted kernel for
`--arch` (sm_90 by default) with the specialization Triton would give those arguments
(16-byte alignment of pointers, divisibility by 16 of integers that have it), and prints
a census of its PTX: instructions, global loads and stores by width, shared-memory bytes
and operations, barriers. Comparing two versions of a kernel this way says whether a
change adds shuffles through shared memory or splits vector stores before any GPU time
is spent on it (timings still need the GPU: benchmarks/kernel_bandwidth.py).

    PYTHONPATH=. python benchmarks/ptx_census.py [--types Q4_K,Q8_0] [--kernels dequant,matvec]
"""

import argparse
import functools
import os
import re
from collections import Counter
from collections.abc import Callable
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

from corral.kernels.packing import BLOCKS, pack
from corral.kernels.triton.dequant import dequantize
from corral.kernels.triton.matvec import matvec

POINTER_TYPES = {
    torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16",
    torch.int64: "*i64", torch.int32: "*i32", torch.int16: "*i16", torch.int8: "*i8",
    torch.uint8: "*u8",
}  # fmt: skip
PREDICATE = r"^\s*(?:@!?%p\d+\s+)?"
COUNTED = re.compile(
    PREDICATE
    + r"((?:ld|st)\.(?:global|shared)[.\w:]*|bar\.sync|shfl\.sync[.\w]*|cvt[.\w]*|fma[.\w]*)"
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
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            signature[param.name] = "i64" if abs(value) >= 2**31 else "i32"
            if value % 16 == 0 and not param.do_not_specialize:
                attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(kernel, signature, constexprs=constants, attrs=attrs)
    kept = {k: v for k, v in options.items() if k in ("num_warps", "num_stages")}
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=kept)


def census(compiled) -> dict[str, int]:
    """Counts in the PTX of a compiled kernel."""
    ptx = compiled.asm["ptx"].splitlines()
    counts = Counter(m.group(1) for line in ptx if (m := COUNTED.match(line)))
    counts["instructions"] = sum(1 for line in ptx if INSTRUCTION.match(line))
    counts["shared bytes"] = compiled.metadata.shared
    return dict(counts)


def packed_weight(qtype: str, n: int, k: int):
    """A packed (n, k) weight of random GGUF blocks (values do not matter here)."""
    block, size = BLOCKS[qtype]
    raw = torch.randint(0, 256, (n * k // block, size), dtype=torch.uint8)
    return pack(raw.view(n, -1), qtype, k)


LAUNCHERS = {
    "dequant": lambda pw: dequantize(pw, torch.float16),
    "matvec": lambda pw: matvec(torch.zeros(1, pw.shape[1], dtype=torch.float16), pw),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", default="Q4_0,Q8_0,Q4_K,Q6_K")
    parser.add_argument("--kernels", default=",".join(LAUNCHERS))
    parser.add_argument("--shape", default="4096x4096", help="N x K of the weight")
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80, 90")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter compiles nothing")
    n, k = (int(v) for v in args.shape.split("x"))
    for qtype in args.types.split(","):
        pw = packed_weight(qtype, n, k)
        for name in args.kernels.split(","):
            launch = functools.partial(LAUNCHERS[name], pw)
            for kernel, call_args, kwargs in intercepted_launches(launch):
                counts = census(compile_launch(kernel, call_args, kwargs, args.arch))
                listed = ", ".join(f"{key} {value}" for key, value in sorted(counts.items()))
                print(f"{qtype} {name} {kernel.__name__} sm_{args.arch}: {listed}")


if __name__ == "__main__":
    main()
