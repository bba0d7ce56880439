"""Write a Llama-2-shaped GGUF file or GPTQ folder with random valid weights, for speed
measurements.

    python scripts/make_shaped_gguf.py --shape 7B --type Q4_K_M [-o FILE] [--pure]
        [--layers N] [--seed 0]
    python scripts/make_shaped_gguf.py --format gptq --shape 7B --bits 4 [--group-size 128]
        [--act-order] [--no-sym] [-o FOLDER] [--layers N] [--seed 0]

--shape: tiny, 7B, 13B or 70B (llama.cpp's Llama-2 hyperparameters).
--type: a llama-quantize file type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K_S/M/L,
  Q4_K_S/M, Q5_K_S/M, Q6_K, F16, BF16, F32; Q3_K / Q4_K / Q5_K are aliases of the _M
  mixes, as in llama-quantize). Tensors get the types llama-quantize would give them;
  with --pure every matrix gets the file type's base type (llama-quantize --pure).
--format gptq: an AutoGPTQ folder (config.json, quantize_config.json, model.safetensors,
  tokenizer.model) whose decoder linears are --bits 2/3/4/8 GPTQ with --group-size
  32/64/128/-1, act-order (desc_act) with --act-order, asymmetric zero points with --no-sym.
Sizes: 7B Q4_K_M ~3.9 GiB, Q4_0 ~3.6 GiB, Q8_0 ~6.7 GiB, F16 ~12.6 GiB; 70B Q4_K_M ~38.6 GiB;
GPTQ 4-bit g128: 7B ~3.6 GiB, 13B ~6.8 GiB, 70B ~34 GiB.
See corral/tools/shaped_gguf.py and shaped_gptq.py for what the random weights hold.
"""

import argparse
import sys
import time
from pathlib import Path

from corral.tools.info import human_bytes, human_count
from corral.tools.shaped_gguf import ALIASES, FILE_TYPES, SHAPES, write_shaped_gguf
from corral.tools.shaped_gptq import write_shaped_gptq

GGUF_ONLY = ("type", "pure")
GPTQ_ONLY = ("bits", "group_size", "act_order", "no_sym")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=("gguf", "gptq"), default="gguf")
    parser.add_argument("--shape", choices=list(SHAPES), default="7B")
    parser.add_argument("--type", help="GGUF: " + ", ".join([*FILE_TYPES, *ALIASES]))
    parser.add_argument(
        "-o", "--output", type=Path, help="default: llama-2-SHAPE-TYPE.gguf / -gptq-... folder"
    )
    parser.add_argument("--pure", action="store_true", help="GGUF: every matrix of the base type")
    parser.add_argument("--bits", type=int, choices=(2, 3, 4, 8), help="GPTQ (default 4)")
    parser.add_argument("--group-size", type=int, choices=(32, 64, 128, -1), help="GPTQ (128)")
    parser.add_argument("--act-order", action="store_true", help="GPTQ: desc_act, permuted g_idx")
    parser.add_argument("--no-sym", action="store_true", help="GPTQ: asymmetric zero points")
    parser.add_argument("--layers", type=int, help="override the shape's layer count")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    other = GPTQ_ONLY if args.format == "gguf" else GGUF_ONLY
    given = [name for name in other if getattr(args, name) not in (None, False)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        parser.error(f"{flags} cannot be used with --format {args.format}")
    return args


def write(args: argparse.Namespace, progress) -> tuple[Path, int, int, str]:
    """Write what the arguments ask for: (path, bytes, parameters, description)."""
    if args.format == "gguf":
        name = (args.type or "Q4_K_M").upper()
        suffix = "-pure" if args.pure else ""
        output = args.output or Path(f"llama-2-{args.shape}-{name}{suffix}.gguf")
        written = write_shaped_gguf(
            output,
            args.shape,
            name,
            pure=args.pure,
            seed=args.seed,
            n_layer=args.layers,
            progress=progress,
        )
        types = ", ".join(f"{t} x{count}" for t, count in written.types.most_common())
        return written.path, written.size, written.n_params, types
    bits = args.bits or 4
    group_size = args.group_size or 128
    order = "-act-order" if args.act_order else ""
    sym = "-asym" if args.no_sym else ""
    output = args.output or Path(f"llama-2-{args.shape}-gptq-{bits}bit-g{group_size}{order}{sym}")
    done = write_shaped_gptq(
        output,
        args.shape,
        bits,
        group_size,
        args.act_order,
        sym=not args.no_sym,
        seed=args.seed,
        n_layer=args.layers,
        progress=progress,
    )
    spec = done.spec
    described = f"GPTQ {spec.bits}-bit, group size {spec.group_size}, desc_act {spec.act_order}"
    return done.path, done.size, done.n_params, f"{described}, sym {spec.sym}"


def main() -> None:
    args = parse_args()
    next_report = [0.0]

    def progress(done: int, total: int) -> None:
        if done / total >= next_report[0]:
            print(f"\r{done / total:4.0%} of {human_bytes(total)}", end="", file=sys.stderr)
            next_report[0] += 0.05

    start = time.perf_counter()
    try:
        path, size, n_params, described = write(args, progress)
    except ValueError as error:
        sys.exit(f"make_shaped_gguf: error: {error}")
    seconds = time.perf_counter() - start
    print(file=sys.stderr)
    print(
        f"{path}: {human_bytes(size)}, {human_count(n_params)} parameters ({described}), "
        f"written in {seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
