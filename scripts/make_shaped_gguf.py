"""Write a Llama-2-shaped GGUF file with random valid weights, for speed measurements.

    python scripts/make_shaped_gguf.py --shape 7B --type Q4_K_M [-o FILE] [--pure]
        [--layers N] [--seed 0]

--shape: tiny, 7B, 13B or 70B (llama.cpp's Llama-2 hyperparameters).
--type: a llama-quantize file type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K_S/M/L,
  Q4_K_S/M, Q5_K_S/M, Q6_K, F16, BF16, F32; Q3_K / Q4_K / Q5_K are aliases of the _M
  mixes, as in llama-quantize). Tensors get the types llama-quantize would give them;
  with --pure every matrix gets the file type's base type (llama-quantize --pure).
Sizes: 7B Q4_K_M ~3.9 GiB, Q4_0 ~3.6 GiB, Q8_0 ~6.7 GiB, F16 ~12.6 GiB; 70B Q4_K_M ~38.6 GiB.
See corral/tools/shaped_gguf.py for what the random blocks hold.
"""

import argparse
import sys
import time
from pathlib import Path

from corral.tools.info import human_bytes, human_count
from corral.tools.shaped_gguf import ALIASES, FILE_TYPES, SHAPES, write_shaped_gguf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="7B")
    parser.add_argument("--type", default="Q4_K_M", help=", ".join([*FILE_TYPES, *ALIASES]))
    parser.add_argument("-o", "--output", type=Path, help="default: llama-2-SHAPE-TYPE.gguf")
    parser.add_argument("--pure", action="store_true", help="every matrix of the base type")
    parser.add_argument("--layers", type=int, help="override the shape's layer count")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    suffix = "-pure" if args.pure else ""
    output = args.output or Path(f"llama-2-{args.shape}-{args.type.upper()}{suffix}.gguf")
    next_report = [0.0]

    def progress(done: int, total: int) -> None:
        if done / total >= next_report[0]:
            print(f"\r{done / total:4.0%} of {human_bytes(total)}", end="", file=sys.stderr)
            next_report[0] += 0.05

    start = time.perf_counter()
    try:
        written = write_shaped_gguf(
            output,
            args.shape,
            args.type,
            pure=args.pure,
            seed=args.seed,
            n_layer=args.layers,
            progress=progress,
        )
    except ValueError as error:
        sys.exit(f"make_shaped_gguf: error: {error}")
    seconds = time.perf_counter() - start
    print(file=sys.stderr)
    types = ", ".join(f"{name} x{count}" for name, count in written.types.most_common())
    print(
        f"{written.path}: {human_bytes(written.size)}, {human_count(written.n_params)} "
        f"parameters ({types}), written in {seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
