"""Numba kernels over the CPU layout (`corral.kernels.cpu.layout`): one per job, every
quant type at once (its geometry is passed as plain ints).

Where the time goes: the innermost loop always runs over the RB output rows of a row
block with one activation, so LLVM turns it into SIMD instructions over rows (8 float32
lanes on AVX2); the per-type work (decoding scales) happens once per sub-block and row
block. Each sub-block of 16 or 32 weights contributes a * dot(q, x) + b * sum(x), as in
llama.cpp's dot products (there with int8 activations, here with float32 ones).

Arguments shared by the kernels:
    qs (NB, G, 16, RB) u8, qh (NB, G, HBY, RB) u8, scales (NB, S, SB, RB) u8,
    d / dmin (NB, D, RB) u16 fp16 bits, half (65536,) f32: fp16 bits -> value,
    geo: (low_bits, high_bits, subs_per_group, groups_per_sub, d_block, sub, kind, offset),
    low_maps (2, 16, F) and high_maps (2, HBY, FH) int64: per byte and field, the weight of
    the group it holds and that weight's sub-block inside the group (layout.field_maps).
"""

import numpy as np
from numba import njit, prange

from corral.kernels.cpu.layout import K_BYTES, K_NIBBLES, K_SIGNED, SYMMETRIC, WITH_MIN

_JIT = {"cache": True, "fastmath": True, "error_model": "numpy", "nogil": True}


@njit(**_JIT)
def _signed_byte(byte: np.uint8) -> np.float32:
    return np.float32(np.int32(byte) - 256 if byte >= 128 else np.int32(byte))


@njit(**_JIT)
def sub_block_scales(geo, scales, d, dmin, half, nb, s, a, b):  # noqa: ANN001, ANN201
    """Fill a, b (RB,) float32 with the (a, b) of sub-block `s` in row block `nb`."""
    d_block, sub, kind, offset = geo[4], geo[5], geo[6], geo[7]
    di = s * sub // d_block
    rows = a.shape[0]
    for r in range(rows):
        scale = half[d[nb, di, r]]
        if kind == SYMMETRIC:
            a[r] = scale
            b[r] = -offset * scale
        elif kind == WITH_MIN:
            a[r] = scale
            b[r] = half[dmin[nb, di, r]]
        elif kind == K_NIBBLES:
            byte = scales[nb, s, 0, r]
            a[r] = scale * np.float32(byte & 15)
            b[r] = -half[dmin[nb, di, r]] * np.float32(byte >> 4)
        elif kind == K_SIGNED:
            a[r] = scale * _signed_byte(scales[nb, s, 0, r])
            b[r] = -offset * a[r]
        elif kind == K_BYTES:
            a[r] = scale * np.float32(scales[nb, s, 0, r])
            b[r] = -half[dmin[nb, di, r]] * np.float32(scales[nb, s, 1, r])


@njit(**_JIT)
def _one_sub_block(maps, t):  # noqa: ANN001, ANN201
    """True when every field of byte t belongs to the same sub-block."""
    for f in range(1, maps.shape[2]):
        if maps[1, t, f] != maps[1, t, 0]:
            return False
    return True


@njit(**_JIT)
def _one_sub_per_run(maps, run):  # noqa: ANN001, ANN201
    """True when each run of `run` bytes (t = run i .. run i + run - 1) holds fields of one
    sub-block."""
    if maps.shape[1] % run:
        return False
    for t in range(maps.shape[1]):
        for f in range(maps.shape[2]):
            if maps[1, t, f] != maps[1, t - t % run, 0]:
                return False
    return True


@njit(**_JIT)
def _nibbles_of_4_bytes(q4, x8, acc):  # noqa: ANN001, ANN201
    """acc[r] += the 8 nibbles of bytes q4[0..3, r] times x8 (low nibble first)."""
    q0, q1, q2, q3 = q4[0], q4[1], q4[2], q4[3]
    x0, x1, x2, x3, x4, x5, x6, x7 = x8[0], x8[1], x8[2], x8[3], x8[4], x8[5], x8[6], x8[7]
    for r in range(acc.shape[0]):
        a = np.float32(q0[r] & 15) * x0 + np.float32(q0[r] >> 4) * x1
        b = np.float32(q1[r] & 15) * x2 + np.float32(q1[r] >> 4) * x3
        c = np.float32(q2[r] & 15) * x4 + np.float32(q2[r] >> 4) * x5
        d = np.float32(q3[r] & 15) * x6 + np.float32(q3[r] >> 4) * x7
        acc[r] += (a + b) + (c + d)


@njit(**_JIT)
def _nibbles_of_2_bytes(q2, x4, acc):  # noqa: ANN001, ANN201
    """acc[r] += the 4 nibbles of bytes q2[0..1, r] times x4 (low nibble first)."""
    q0, q1 = q2[0], q2[1]
    x0, x1, x2, x3 = x4[0], x4[1], x4[2], x4[3]
    for r in range(acc.shape[0]):
        a = np.float32(q0[r] & 15) * x0 + np.float32(q0[r] >> 4) * x1
        acc[r] += a + (np.float32(q1[r] & 15) * x2 + np.float32(q1[r] >> 4) * x3)


@njit(**_JIT)
def _bytes_of_4(q4, x4, acc):  # noqa: ANN001, ANN201
    """acc[r] += the bytes q4[0..3, r] (one 8-bit field each) times x4."""
    q0, q1, q2, q3 = q4[0], q4[1], q4[2], q4[3]
    x0, x1, x2, x3 = x4[0], x4[1], x4[2], x4[3]
    for r in range(acc.shape[0]):
        a = np.float32(q0[r]) * x0 + np.float32(q1[r]) * x1
        acc[r] += a + (np.float32(q2[r]) * x2 + np.float32(q3[r]) * x3)


@njit(**_JIT)
def _byte_dot(qt, fields, xs, acc):  # noqa: ANN001, ANN201
    """acc[r] += sum over the byte's fields f of field_f(qt[r]) * xs[f] (1, 2, 4 or 8
    fields of 8 / fields bits each), in one pass over the rows."""
    rows = acc.shape[0]
    if fields == 2:
        x0, x1 = xs[0], xs[1]
        for r in range(rows):
            v = qt[r]
            acc[r] += np.float32(v & 15) * x0 + np.float32(v >> 4) * x1
    elif fields == 4:
        x0, x1, x2, x3 = xs[0], xs[1], xs[2], xs[3]
        for r in range(rows):
            v = qt[r]
            low = np.float32(v & 3) * x0 + np.float32((v >> 2) & 3) * x1
            acc[r] += low + np.float32((v >> 4) & 3) * x2 + np.float32(v >> 6) * x3
    elif fields == 8:
        for r in range(rows):
            v = qt[r]
            total = np.float32(0)
            for f in range(8):
                total += np.float32((v >> f) & 1) * xs[f]
            acc[r] += total
    else:
        x0 = xs[0]
        for r in range(rows):
            acc[r] += np.float32(qt[r]) * x0


@njit(**_JIT)
def _accumulate(q, nb, g, bits, maps, x, weight, dot, fq):  # noqa: ANN001, ANN201
    """dot[m, sub, r] += field * weight * x[m, k] for every field of the bytes q[nb, g]
    (bytes, RB), k its weight's column."""
    mask = (1 << bits) - 1
    m_rows, fields = x.shape[0], maps.shape[2]
    base = g * (x.shape[1] // q.shape[1])
    xs = np.empty(fields, np.float32)
    n_bytes = q.shape[2]
    # decode: runs of bytes of one sub-block in one pass over the rows (fewer updates of
    # the accumulators): 4 bytes of 4-bit fields (or 2), 4 bytes of 8-bit ones
    run = 0
    if m_rows == 1 and fields == 2:
        run = 4 if _one_sub_per_run(maps, 4) else 2 if _one_sub_per_run(maps, 2) else 0
    elif m_rows == 1 and fields == 1:
        run = 4 if _one_sub_per_run(maps, 4) else 0
    if run:
        x_run = np.empty(fields * run, np.float32)
        for t in range(0, n_bytes, run):
            for i in range(fields * run):
                x_run[i] = x[0, base + maps[0, t + i // fields, i % fields]] * weight
            acc = dot[0, maps[1, t, 0]]
            if fields == 1:
                _bytes_of_4(q[nb, g, t : t + 4], x_run, acc)
            elif run == 4:
                _nibbles_of_4_bytes(q[nb, g, t : t + 4], x_run, acc)
            else:
                _nibbles_of_2_bytes(q[nb, g, t : t + 2], x_run, acc)
        return
    for t in range(n_bytes):
        qt = q[nb, g, t]
        if m_rows == 1 and _one_sub_block(maps, t):  # decode: all fields in one pass
            for f in range(fields):
                xs[f] = x[0, base + maps[0, t, f]] * weight
            _byte_dot(qt, fields, xs, dot[0, maps[1, t, 0]])
            continue
        for f in range(fields):
            shift = bits * f
            k, sl = base + maps[0, t, f], maps[1, t, f]
            for r in range(fq.shape[0]):
                fq[r] = np.float32((qt[r] >> shift) & mask)
            for m in range(m_rows):
                xv, acc = x[m, k] * weight, dot[m, sl]
                for r in range(fq.shape[0]):
                    acc[r] += fq[r] * xv


@njit(parallel=True, **_JIT)
def matmul_small(qs, qh, scales, d, dmin, half, geo, low_maps, high_maps, x, out):  # noqa: ANN001, ANN201
    """out (M, N) float32 = x (M, K) float32 @ W.T, reading every weight once for all the
    M rows (few of them: the work grows with M)."""
    low_bits, high_bits, spg, gps, sub = geo[0], geo[1], geo[2], geo[3], geo[5]
    n_blocks, groups, _, rows = qs.shape
    m_rows = x.shape[0]
    high_weight = np.float32(1 << low_bits)  # q = low | high << low_bits
    for nb in prange(n_blocks):
        acc = np.zeros((m_rows, rows), np.float32)
        dot = np.zeros((m_rows, spg, rows), np.float32)
        fq = np.empty(rows, np.float32)
        a = np.empty(rows, np.float32)
        b = np.empty(rows, np.float32)
        for g in range(groups):
            _accumulate(qs, nb, g, low_bits, low_maps, x, np.float32(1), dot, fq)
            if high_bits:
                _accumulate(qh, nb, g, high_bits, high_maps, x, high_weight, dot, fq)
            if (g + 1) % gps:
                continue  # the sub-block goes on in the next group
            for sl in range(spg):
                s = g // gps * spg + sl
                sub_block_scales(geo, scales, d, dmin, half, nb, s, a, b)
                for m in range(m_rows):
                    xs = np.float32(0)
                    for k in range(s * sub, (s + 1) * sub):
                        xs += x[m, k]
                    for r in range(rows):
                        acc[m, r] += a[r] * dot[m, sl, r] + b[r] * xs
                        dot[m, sl, r] = 0.0
        for m in range(m_rows):
            out[m, nb * rows : (nb + 1) * rows] = acc[m]


@njit(**_JIT)
def _write_fields(q, nb, g, bits, maps, a, b, add, out, col):  # noqa: ANN001, ANN201
    """out[g * group + index[t, f], col + r] = a[sub, r] * field + b[sub, r] for every
    field of the bytes q[nb, g], or += a * field when `add` (high bits after low ones)."""
    mask = (1 << bits) - 1
    rows = a.shape[1]
    base = g * (out.shape[0] // q.shape[1])
    for t in range(q.shape[2]):
        for f in range(maps.shape[2]):
            shift = bits * f
            k = base + maps[0, t, f]
            sl = maps[1, t, f]
            target = out[k, col : col + rows]
            at, bt, qt = a[sl], b[sl], q[nb, g, t]
            if add:
                for r in range(rows):
                    target[r] += at[r] * np.float32((qt[r] >> shift) & mask)
            else:
                for r in range(rows):
                    target[r] = at[r] * np.float32((qt[r] >> shift) & mask) + bt[r]


@njit(parallel=True, **_JIT)
def dequantize_transposed(qs, qh, scales, d, dmin, half, geo, low_maps, high_maps, first, out):  # noqa: ANN001, ANN201
    """out (K, n) float32 = W.T for the row blocks from `first` on (n / RB of them)."""
    low_bits, high_bits, spg, gps = geo[0], geo[1], geo[2], geo[3]
    _, groups, _, rows = qs.shape
    for i in prange(out.shape[1] // rows):
        nb = first + i
        a = np.empty((spg, rows), np.float32)
        b = np.empty((spg, rows), np.float32)
        high_a = np.empty((spg, rows), np.float32)
        for g in range(groups):
            for sl in range(spg):
                s = g // gps * spg + sl
                sub_block_scales(geo, scales, d, dmin, half, nb, s, a[sl], b[sl])
                for r in range(rows):
                    high_a[sl, r] = a[sl, r] * np.float32(1 << low_bits)
            col = i * rows
            _write_fields(qs, nb, g, low_bits, low_maps, a, b, False, out, col)
            if high_bits:
                _write_fields(qh, nb, g, high_bits, high_maps, high_a, b, True, out, col)
