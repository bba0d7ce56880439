"""Every Triton kernel of the GPU path compiles with Triton's real compiler for Hopper
(sm_90), launched the way corral's launchers launch it, on a machine without a GPU:
benchmarks/ptx_census.py in a subprocess, outside the interpreter that the other kernel
tests run in. The interpreter runs a kernel's logic but accepts programs the compiler
refuses (layouts, reshapes, types), which would otherwise first show on a GPU machine."""

import os
import subprocess
import sys
from pathlib import Path

from corral.kernels.packing import BLOCKS
from corral.kernels.triton.matvec_int8 import supports_int8

ROOT = Path(__file__).resolve().parents[2]
LAYER_KERNELS = {
    "_rms_norm_kernel",
    "_silu_mul_kernel",
    "_store_kernel",
    "_split_kernel",
    "_combine_kernel",
    "_prefill_kernel",
}
PER_TYPE = {
    ("dequant", "_dequant_kernel"),
    ("matvec", "_matvec_kernel"),
    ("matvec-split", "_matvec_kernel"),
    ("matvec-split", "_sum_splits_kernel"),
    ("matvec-swiglu", "_matvec_kernel"),
}


def census_lines(*options: str) -> list[str]:
    """The census that benchmarks/ptx_census.py prints with `options`, for sm_90."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "benchmarks/ptx_census.py", *options, "--arch", "90"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout.splitlines()


def test_every_kernel_compiles_for_sm_90():
    lines = census_lines("--types", ",".join(BLOCKS), "--layer")
    compiled = {tuple(line.split(" sm_90:")[0].split()) for line in lines}
    assert {("layer", name) for name in LAYER_KERNELS} <= compiled
    for qtype in BLOCKS:  # every GGUF block type (GPTQ layouts share these kernels)
        assert {(qtype, launcher, kernel) for launcher, kernel in PER_TYPE} <= compiled, qtype
        int8 = {(qtype, "matvec-int8", k) for k in ("_quantize_kernel", "_matvec_int8_kernel")}
        assert (int8 <= compiled) == supports_int8(qtype), qtype
        assert (qtype, "matvec-int8-swiglu", "_matvec_int8_kernel") in compiled, qtype
    for line in (line for line in lines if "_matvec_int8_kernel" in line):
        assert "dp4a.u32.s32" in line, line  # the real instruction, not the interpreter's stand-in
    for line in (line for line in lines if "matvec-int8-swiglu _matvec_int8_kernel" in line):
        # the blocks' hand-over (int8_act.quantize_when_complete): one release-acquire add
        assert "atom.global.gpu.acq_rel.add.u32 1" in line, line
    for line in lines:  # every kernel stores its result, in at least one instruction
        assert "st.global" in line and "instructions" in line, line
    for line in (line for line in lines if "_dequant_kernel" in line):
        # the dense path's decode pass writes 16-byte vectors (corral/kernels/triton/dequant.py)
        stores = [part for part in line.split(", ") if part.startswith("st.global")]
        assert stores == ["st.global.v4.b32 8"], line


def test_int8_matvec_compiles_for_the_gptq_layouts():
    """GPTQ's scale kinds (one (scale, zero) per word groups, two per word group), 3-bit's
    high bits, and act-order's gathering quantizer."""
    types = ("GPTQ2g32", "GPTQ3g128a", "GPTQ4g16", "GPTQ8g32")
    lines = census_lines("--types", ",".join(types), "--kernels", "matvec-int8")
    compiled = {tuple(line.split(" sm_90:")[0].split()) for line in lines}
    for qtype in types:
        int8 = {(qtype, "matvec-int8", k) for k in ("_quantize_kernel", "_matvec_int8_kernel")}
        assert int8 <= compiled, qtype
    for line in (line for line in lines if "_matvec_int8_kernel" in line):
        assert "dp4a.u32.s32" in line, line
