"""Fixes to Triton 3.6's interpreter, applied by the root conftest.py when tests run
Triton kernels on CPU (TRITON_INTERPRET=1):
- it calls int() on 1-element numpy arrays for loop bounds, which numpy >= 2.4 refuses
  (triton-lang/triton#9171): `__index__` squeezes first, the upstream fix;
- its tl.dot multiplies bfloat16 operands as their uint16 bit patterns: they are widened
  to float32 first (exact), as the GPU's tensor cores do;
- it casts float32 to bfloat16 by truncation, where the GPU (cvt.rn) rounds to nearest
  even, as torch does: it rounds here too, so kernels can be held to torch's results;
- it reduces with a user combine function (tl.reduce) one element at a time, a Python
  call per element: here the combine runs on whole slices along the axis, in the same
  left-to-right order (the same results), one call per slice.
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

    def reduce_slices(self, input):
        """ReduceOps.generic_reduce, folding whole slices along the axis."""
        original_axis = self.axis
        input, axis = self.unravel(input, self.axis)
        datas = [arg.handle.data for arg in input]
        output_shape = datas[0].shape[:axis] + datas[0].shape[axis + 1 :]

        def slice_at(i):
            return tuple(
                self.to_tensor(np.take(d, i, axis=axis), arg.dtype)
                for d, arg in zip(datas, input, strict=True)
            )

        acc = slice_at(0)
        for i in range(1, datas[0].shape[axis]):
            combined = self.combine_fn.fn(*acc, *slice_at(i))
            acc = combined if isinstance(combined, tuple) else (combined,)
        out = []
        for value, arg in zip(acc, input, strict=True):
            data = np.asarray(value.handle.data, dtype=arg.handle.data.dtype)
            data = data.reshape(output_shape)
            if self.keep_dims:
                kept = (1,) * len(datas[0].shape)  # every axis, when reduced over all
                data = data.reshape(kept) if original_axis is None else np.expand_dims(data, axis)
            elif original_axis is None:
                data = data.item()
            out.append(self.to_tensor(data, arg.dtype))
        return out

    patch.corral_fixed = True
    interpreter.ReduceOps.generic_reduce = reduce_slices
    interpreter._patch_lang_tensor = patch
    interpreter.InterpreterBuilder.create_dot = dot
    interpreter.InterpreterBuilder.cast_impl = cast_rounding
