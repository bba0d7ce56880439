"""Programmatic dependent launch (PDL) for the decode-step kernels on Hopper GPUs.

A decode step is a chain of ~15 small kernels per layer, each depending on the one
before. Launched plainly, a kernel starts only after its predecessor has drained: the
launch latency and the ramp-up of its first memory requests add ~1-3 us per kernel,
which at ~470 kernels a step is a large part of the step. With PDL (sm_90+) a kernel is
launched as soon as every program of its predecessor has called `release_dependents`;
its programs then do the work that needs nothing from the predecessor (a matvec
requests its first weight tile) and block in `wait_for_inputs` until the predecessor has
finished and its writes are visible.

Rules every PDL kernel here keeps (`launch_options(device)` turns PDL on per launch):
- it calls `wait_for_inputs` before it reads anything an earlier kernel wrote and before
  it writes anything (its output may reuse memory an earlier kernel still reads), and
  it always calls it: the wait of the next kernel covers only this one, so this one may
  finish only after its own predecessor has;
- it calls `release_dependents` first thing: the dependent then waits in its own
  `wait_for_inputs`.
Kernels launched plainly (torch's) keep stream order as always. In Triton's interpreter
(CPU tests) the flag is off and both calls vanish at compile time.

Only launches over a decode step's few rows use PDL (`rows` <= MAX_PDL_ROWS): with PDL on
the norm, RoPE and elementwise kernels of prefill too, the one pp512 run of a 7B Q4_K_M
file on an H100 gave ~8,100 tokens/s against ~9,700-11,000 without (pp512 is noisy there;
the likely cause: the prefill's matrix products are cuBLAS's, and a dependent kernel
launched early holds SM slots while it waits).
"""

import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

MAX_PDL_ROWS = 16
_CAPABLE: dict[int, bool] = {}


def pdl_enabled(device: torch.device) -> bool:
    """Whether kernels on `device` launch with PDL: a CUDA device of compute capability 9.0
    or newer, not Triton's interpreter, and CORRAL_PDL not set to 0."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    if os.environ.get("CORRAL_PDL", "1") == "0":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CAPABLE:
        _CAPABLE[index] = torch.cuda.get_device_capability(index) >= (9, 0)
    return _CAPABLE[index]


def launch_options(device: torch.device, rows: int = 1) -> dict[str, bool]:
    """Keyword arguments for a PDL kernel's launch on `device` over `rows` activation rows
    (tokens): the kernel's PDL constexpr and, when on, Triton's launch_pdl option."""
    enabled = rows <= MAX_PDL_ROWS and pdl_enabled(device)
    return {"PDL": True, "launch_pdl": True} if enabled else {"PDL": False}


@triton.jit
def release_dependents(PDL: tl.constexpr):
    """Let the next kernel in the stream launch (it waits for this one's results itself)."""
    if PDL:
        gdc_launch_dependents()


@triton.jit
def wait_for_inputs(PDL: tl.constexpr):
    """Block until the previous kernel in the stream has finished and its writes are visible."""
    if PDL:
        gdc_wait()
