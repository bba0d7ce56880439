"""Kernel tests run the Triton kernels on a GPU when there is one, else in Triton's
interpreter on CPU (TRITON_INTERPRET=1, set here before triton is first imported).

Two fixes to Triton 3.6's interpreter, applied only when it runs:
- it calls int() on 1-element numpy arrays for loop bounds, which numpy >= 2.4 refuses
  (triton-lang/triton#9171): `__index__` squeezes first, the upstream fix;
- its tl.dot multiplies bfloat16 operands as their uint16 bit patterns: they are widened
  to float32 first (exact), as the GPU's tensor cores do.
"""

import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _fix_interpreter() -> None:
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    patch_tensor = interpreter._patch_lang_tensor
    if getattr(patch_tensor, "corral_fixed", False):
        return

    def patch(tensor, scope) -> None:
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    def widen(handle):
        if handle.dtype.scalar == tl.bfloat16:
            bits = handle.data.astype(np.uint32) << 16
            return interpreter.TensorHandle(bits.view(np.float32), tl.float32)
        return handle

    create_dot = interpreter.InterpreterBuilder.create_dot

    def dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return create_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    patch.corral_fixed = True
    interpreter._patch_lang_tensor = patch
    interpreter.InterpreterBuilder.create_dot = dot


if os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton"):
    _fix_interpreter()


@pytest.fixture(scope="session")
def device() -> str:
    """Where the kernels run: the GPU, or the CPU under Triton's interpreter."""
    return "cuda" if torch.cuda.is_available() else "cpu"
