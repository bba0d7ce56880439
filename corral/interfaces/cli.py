"""The `corral` command line: run, chat, info, serve, bench, quantize-gptq."""

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import torch

from corral.chat.presets import SYSTEM_PRESETS
from corral.errors import CorralError
from corral.interfaces.server.serve import add_parser as add_serve_parser
from corral.interfaces.server.serve import run as cmd_serve
from corral.model.kv_cache import CACHE_TYPES
from corral.sampling.errors import SamplingParamsError
from corral.tools.bench import add_parser as add_bench_parser
from corral.tools.bench import run as cmd_bench
from corral.tools.quantize_gptq import add_parser as add_quantize_gptq_parser
from corral.tools.quantize_gptq import run as cmd_quantize_gptq

MODEL_HELP = "GGUF file, or HF / GPTQ model folder"


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by the commands that load a model."""
    parser.add_argument("-m", "--model", type=Path, help=f"{MODEL_HELP} (default: embedded model)")
    parser.add_argument("-c", "--ctx-size", type=int, help="context window in tokens")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument(
        "-ngl",
        "--gpu-layers",
        type=int,
        help="layers to put on the GPU, the last ones (default: as many as fit)",
    )
    add_cache_type_args(parser)


def add_cache_type_args(parser: argparse.ArgumentParser) -> None:
    """llama.cpp's -ctk/-ctv: the storage type of cached keys and values."""
    for short, name in (("-ctk", "k"), ("-ctv", "v")):
        parser.add_argument(
            short,
            f"--cache-type-{name}",
            choices=CACHE_TYPES,
            help=f"KV cache type for {'keys' if name == 'k' else 'values'} "
            "(default: the compute dtype, f32 on CPU, f16 on CUDA)",
        )


def add_chat_template_arg(parser: argparse.ArgumentParser, note: str = "") -> None:
    """The --chat-template option: a built-in format name or a jinja2 template file."""
    parser.add_argument(
        "--chat-template",
        metavar="NAME|FILE",
        help="chat format: a built-in name or a jinja2 template file (default: the model's "
        f"own template, else a guess from its metadata){note}",
    )


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """llama.cpp-style sampling options, with llama.cpp's names and defaults."""
    group = parser.add_argument_group("sampling (llama.cpp names and defaults)")
    add = group.add_argument
    add("--temp", type=float, default=0.8, help="temperature; 0 = greedy (default 0.8)")
    add("--top-k", type=int, default=40, help="top-k; 0 = off (default 40)")
    add("--top-p", type=float, default=0.95, help="top-p; 1.0 = off (default 0.95)")
    add("--min-p", type=float, default=0.05, help="min-p; 0.0 = off (default 0.05)")
    add("--typical", type=float, default=1.0, help="locally typical p; 1.0 = off (default)")
    add(
        "--repeat-penalty",
        type=float,
        default=1.0,
        help="penalise repeats in the last --repeat-last-n tokens; 1.0 = off (default)",
    )
    add(
        "--repeat-last-n",
        type=int,
        default=64,
        help="tokens the penalties look back over; 0 = off, -1 = context size (default 64)",
    )
    add("--presence-penalty", type=float, default=0.0, help="0.0 = off (default)")
    add("--frequency-penalty", type=float, default=0.0, help="0.0 = off (default)")
    add("--mirostat", type=int, default=0, choices=(0, 1, 2), help="1 or 2; 0 = off")
    add("--mirostat-lr", type=float, default=0.1, help="Mirostat learning rate eta (0.1)")
    add("--mirostat-ent", type=float, default=5.0, help="Mirostat target entropy tau (5.0)")
    add(
        "-l",
        "--logit-bias",
        action="append",
        default=[],
        metavar="TOKEN_ID(+|-)BIAS",
        help="add BIAS to a token's logit, e.g. 15043+1 or 15043-inf; repeatable",
    )
    add("--seed", type=int, help="random seed (default: random)")
    add("--ignore-eos", action="store_true", help="never stop at end-of-generation tokens")
    constrain = parser.add_argument_group("constrained output (one of)")
    exclusive = constrain.add_mutually_exclusive_group()
    exclusive.add_argument("--grammar", metavar="GBNF", help="llama.cpp grammar text (rule root)")
    exclusive.add_argument("--grammar-file", type=Path, metavar="FILE", help="GBNF grammar file")
    exclusive.add_argument("-j", "--json-schema", metavar="SCHEMA", help="JSON schema text")
    exclusive.add_argument("--json-schema-file", type=Path, metavar="FILE", help="JSON schema file")
    exclusive.add_argument("--regex", help="the output must match this regular expression")
    exclusive.add_argument("--json", action="store_true", help="the output is a JSON object")


def read_option_file(path: Path | None, option: str) -> str | None:
    """The text of a file named by `option`, or a clear error naming the option."""
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{option}: cannot read {path}: {error}") from error


def constraint_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The constrained-output options as keywords for LLM.stream / LLM.chat_stream."""
    return dict(
        grammar=args.grammar or read_option_file(args.grammar_file, "--grammar-file"),
        json_schema=args.json_schema
        or read_option_file(args.json_schema_file, "--json-schema-file"),
        regex=args.regex,
        json_mode=args.json,
    )


def parse_logit_bias(text: str) -> tuple[int, float]:
    """`TOKEN_ID(+|-)BIAS` as llama.cpp writes it: "15043+1", "15043-0.5", "15043-inf"."""
    match = re.fullmatch(r"\s*(\d+)\s*([+-])\s*(inf|\d+(?:\.\d*)?|\.\d+)\s*", text)
    if match is None:
        raise SamplingParamsError(
            f"--logit-bias: expected TOKEN_ID(+|-)BIAS such as 15043+1 or 15043-inf, got {text!r}"
        )
    token, sign, value = match.groups()
    bias = float(value)
    return int(token), -bias if sign == "-" else bias


def generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Sampling and constrained-output options as keywords for LLM.stream / chat_stream."""
    return {**sampling_kwargs(args), **constraint_kwargs(args)}


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling options as SamplingParams keywords."""
    return dict(
        temperature=args.temp,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        typical_p=args.typical,
        repeat_penalty=args.repeat_penalty,
        repeat_last_n=args.repeat_last_n,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        mirostat=args.mirostat,
        mirostat_eta=args.mirostat_lr,
        mirostat_tau=args.mirostat_ent,
        logit_bias=dict(parse_logit_bias(item) for item in args.logit_bias),
        seed=args.seed,
        ignore_eos=args.ignore_eos,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with all subcommands."""
    parser = argparse.ArgumentParser(prog="corral", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="continue a prompt, streaming to stdout")
    add_model_args(run)
    run.add_argument("-p", "--prompt", required=True)
    run.add_argument("-n", "--n-predict", type=int, default=128, help="max new tokens")
    run.add_argument(
        "--special", action="store_true", help="parse special tokens like <|im_start|> in -p"
    )
    add_chat_template_arg(run, "; when given, -p is sent as one user message")
    add_sampling_args(run)

    chat = commands.add_parser("chat", help="interactive chat in the terminal")
    add_model_args(chat)
    add_chat_template_arg(chat)
    system = chat.add_mutually_exclusive_group()
    system.add_argument("--system", help="system prompt (default: the chat format's own)")
    system.add_argument(
        "--system-preset",
        choices=sorted(SYSTEM_PRESETS),
        help="a system prompt the models were trained with (llama-2, airoboros, orca-1..15)",
    )
    chat.add_argument(
        "-n", "--n-predict", type=int, help="max tokens per reply (default: 512 or n_ctx/2)"
    )
    add_sampling_args(chat)

    info = commands.add_parser("info", help="describe a model file or folder")
    info.add_argument("model", type=Path, nargs="?", help=f"{MODEL_HELP} (default: embedded)")
    info.add_argument("-c", "--ctx-size", type=int, help="context for the memory estimate")
    info.add_argument("--device", default="cpu", help="device the estimate is for")
    add_chat_template_arg(info, "; shows which format that chooses")
    add_bench_parser(commands)
    add_quantize_gptq_parser(commands)

    add_serve_parser(commands)
    return parser


def load_llm(args: argparse.Namespace):
    """The model the options name."""
    from corral.interfaces.api import LLM

    return LLM(
        args.model,
        n_ctx=args.ctx_size,
        device=args.device,
        chat_template=args.chat_template,
        gpu_layers=args.gpu_layers,
        cache_type_k=args.cache_type_k,
        cache_type_v=args.cache_type_v,
    )


def cmd_run(args: argparse.Namespace) -> None:
    """Stream a continuation of the prompt to stdout; with --chat-template, stream the reply
    to the prompt sent as one user message."""
    llm = load_llm(args)
    if args.chat_template is not None:
        messages = [{"role": "user", "content": args.prompt}]
        stream = llm.chat_stream(messages, args.n_predict, **generation_kwargs(args))
    else:
        stream = llm.stream(
            args.prompt, args.n_predict, parse_special=args.special, **generation_kwargs(args)
        )
        sys.stdout.write(args.prompt)
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def cmd_chat(args: argparse.Namespace) -> None:
    """Interactive chat on the terminal."""
    from corral.interfaces.chat_cli import chat

    llm = load_llm(args)
    system = SYSTEM_PRESETS[args.system_preset] if args.system_preset else args.system
    chat(llm, max_tokens=args.n_predict, system=system, sampling=generation_kwargs(args))


def cmd_info(args: argparse.Namespace) -> None:
    """Print what a GGUF file holds."""
    from corral.default_model import default_model_path
    from corral.tools.info import describe

    path = args.model or default_model_path()
    rows = describe(path, args.ctx_size, torch.device(args.device), args.chat_template)
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label + ':':<{width + 1}} {value}")


COMMANDS = {
    "run": cmd_run,
    "chat": cmd_chat,
    "info": cmd_info,
    "serve": cmd_serve,
    "bench": cmd_bench,
    "quantize-gptq": cmd_quantize_gptq,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `corral` console script."""
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (CorralError, FileNotFoundError, ValueError) as error:
        print(f"corral: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
