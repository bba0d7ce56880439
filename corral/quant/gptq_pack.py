"""Pack GPTQ codes into AutoGPTQ's checkpoint layout (checkpoint_format "gptq").

One quantized linear with K inputs, N outputs, G groups and b bits is stored as

| tensor  | dtype | shape         | holds                                                    |
|---------|-------|---------------|----------------------------------------------------------|
| qweight | int32 | (K*b/32, N)   | codes, packed down the K axis                            |
| qzeros  | int32 | (G, N*b/32)   | zero point - 1 of every group and output, packed along N |
| scales  | fp16  | (G, N)        | step of every group and output                           |
| g_idx   | int32 | (K,)          | group of every input column (act-order permutes it)      |

weight[n, k] = scales[g_idx[k], n] * (code[k, n] - (stored_zero[g_idx[k], n] + 1)).

Packing: every run of 32 consecutive values along the packed axis becomes b words, read as
one little-endian bit stream: value j occupies bits [b*j, b*j + b) of the stream, bit i of
the stream being bit i % 32 of word i // 32. For b = 2, 4, 8 the values never cross a word;
for b = 3 the 11th and 22nd values straddle words:

    word 0: v0 .. v9 at bits 0..29, v10 bits 0-1 at bits 30-31
    word 1: v10 bit 2 at bit 0, v11 .. v20 at bits 1..30, v21 bit 0 at bit 31
    word 2: v21 bits 1-2 at bits 0-1, v22 .. v31 at bits 2..31

The words are stored as int32 (two's complement of the uint32 bit pattern).
"""

import torch

from corral.quant.gptq_algorithm import SUPPORTED_BITS, GPTQResult

PACK_RUN = 32  # values per run of b words


def pack_values(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer `values` (R, C), each in [0, 2^bits), down axis 0 into int32 (R*bits/32, C).

    R must be a multiple of 32.
    """
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    n_rows, n_cols = values.shape
    if n_rows % PACK_RUN:
        raise ValueError(f"{n_rows} values do not split into runs of {PACK_RUN}")
    runs = values.to(torch.int64).reshape(n_rows // PACK_RUN, PACK_RUN, n_cols)  # (R/32, 32, C)
    words = torch.zeros(n_rows // PACK_RUN, bits, n_cols, dtype=torch.int64, device=values.device)
    for j in range(PACK_RUN):
        word, shift = divmod(bits * j, 32)
        value = runs[:, j]  # (R/32, C)
        words[:, word] |= (value << shift) & 0xFFFFFFFF
        if shift + bits > 32:  # straddles into the next word (3-bit only)
            words[:, word + 1] |= value >> (32 - shift)
    words = words.reshape(n_rows // PACK_RUN * bits, n_cols)  # (R*b/32, C)
    return (words - ((words >> 31) << 32)).to(torch.int32)


def pack_gptq(result: GPTQResult, bits: int) -> dict[str, torch.Tensor]:
    """The AutoGPTQ tensors `qweight`, `qzeros`, `scales` (fp16) and `g_idx` of one linear.

    `result` holds codes (N, K), scales and zeros (G, N) and g_idx (K,). K and N must be
    multiples of 32, codes within [0, 2^bits), zero points within [1, 2^bits) (the format
    stores zero - 1 unsigned), and g_idx within [0, G).
    """
    codes, scales, zeros, g_idx = result.codes, result.scales, result.zeros, result.g_idx
    n_out, n_in = codes.shape
    n_groups = scales.shape[0]
    maxq = (1 << bits) - 1
    if n_in % PACK_RUN or n_out % PACK_RUN:
        raise ValueError(f"GPTQ packing needs K and N divisible by 32, got K={n_in}, N={n_out}")
    if scales.shape != (n_groups, n_out) or zeros.shape != (n_groups, n_out):
        raise ValueError(
            f"scales {tuple(scales.shape)} and zeros {tuple(zeros.shape)} must both be "
            f"(groups, {n_out})"
        )
    if g_idx.shape != (n_in,):
        raise ValueError(f"g_idx has shape {tuple(g_idx.shape)}, expected ({n_in},)")
    if n_in and (int(g_idx.min()) < 0 or int(g_idx.max()) >= n_groups):
        raise ValueError(f"g_idx values must lie in [0, {n_groups})")
    if codes.numel() and int(codes.max()) > maxq:
        raise ValueError(f"codes exceed {maxq}, the largest {bits}-bit value")
    if zeros.numel() and (int(zeros.min()) < 1 or int(zeros.max()) > maxq):
        raise ValueError(
            f"zero points must lie in [1, {maxq}]: the 'gptq' format stores zero - 1 unsigned"
        )
    stored_zeros = (zeros.to(torch.int64) - 1).t()  # (N, G)
    return {
        "qweight": pack_values(codes.t(), bits),  # (K*b/32, N)
        "qzeros": pack_values(stored_zeros, bits).t().contiguous(),  # (G, N*b/32)
        "scales": scales.to(torch.float16).contiguous(),  # (G, N)
        "g_idx": g_idx.to(torch.int32).contiguous(),  # (K,)
    }
