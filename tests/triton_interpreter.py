"""Two fixes to Triton 3.6's interpreter, applied by the root conftest.py when tests run
Triton kernels on CPU (TRITON_INTERPRET=1):
- it calls int() on 1-element numpy arrays for loop bounds, which numpy >= 2.4 refuses
  (triton-lang/triton#9171): `__index__` squeezes first, the upstream fix;
- its tl.dot multiplies bfloat16 operands as their uint16 bit patterns: they are widened
  to float32 first (exact), as the GPU's tensor cores do;
- it casts float32 to bfloat16 by truncation, where the GPU (cvt.rn) rounds to nearest
  even, as torch does: it rounds here too, so kernels can be held to torch's results.
"""


def fix_interpreter() -> None:
    """Patch the interpreter in place (once)."""
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

    cast = interpreter.InterpreterBuilder.cast_impl

    def cast_rounding(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = np.asarray(src.data, dtype=np.float32).view(np.uint32).astype(np.uint64)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even
            return interpreter.TensorHandle(bits.astype(np.uint16), tl.bfloat16)
        return cast(self, src, dst_type)

    patch.corral_fixed = True
    interpreter._patch_lang_tensor = patch
    interpreter.InterpreterBuilder.create_dot = dot
    interpreter.InterpreterBuilder.cast_impl = cast_rounding
