"""The `corral` command line: `corral run`, `corral chat`, `corral info`."""

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from corral.chat.presets import SYSTEM_PRESETS
from corral.errors import CorralError


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by the commands that load a model."""
    parser.add_argument("-m", "--model", type=Path, help="GGUF file (default: embedded model)")
    parser.add_argument("-c", "--ctx-size", type=int, help="context window in tokens")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def add_chat_template_arg(parser: argparse.ArgumentParser, note: str = "") -> None:
    """The --chat-template option: a built-in format name or a jinja2 template file."""
    parser.add_argument(
        "--chat-template",
        metavar="NAME|FILE",
        help="chat format: a built-in name or a jinja2 template file (default: the model's "
        f"own template, else a guess from its metadata){note}",
    )


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """llama.cpp-style sampling options."""
    parser.add_argument("--temp", type=float, default=0.8, help="temperature; 0 = greedy")
    parser.add_argument("--top-k", type=int, default=40, help="0 = disabled")
    parser.add_argument("--top-p", type=float, default=0.95, help="1.0 = disabled")
    parser.add_argument("--seed", type=int, help="random seed (default: random)")


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling options as keywords for LLM.stream / LLM.chat_stream."""
    return dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, seed=args.seed)


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

    info = commands.add_parser("info", help="describe a GGUF file")
    info.add_argument("model", type=Path, nargs="?", help="GGUF file (default: embedded model)")
    info.add_argument("-c", "--ctx-size", type=int, help="context for the memory estimate")
    info.add_argument("--device", default="cpu", help="device the estimate is for")
    add_chat_template_arg(info, "; shows which format that chooses")
    return parser


def load_llm(args: argparse.Namespace):
    """The model the options name."""
    from corral.interfaces.api import LLM

    return LLM(
        args.model, n_ctx=args.ctx_size, device=args.device, chat_template=args.chat_template
    )


def cmd_run(args: argparse.Namespace) -> None:
    """Stream a continuation of the prompt to stdout; with --chat-template, stream the reply
    to the prompt sent as one user message."""
    llm = load_llm(args)
    if args.chat_template is not None:
        messages = [{"role": "user", "content": args.prompt}]
        stream = llm.chat_stream(messages, args.n_predict, **sampling_kwargs(args))
    else:
        stream = llm.stream(
            args.prompt, args.n_predict, parse_special=args.special, **sampling_kwargs(args)
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
    chat(llm, max_tokens=args.n_predict, system=system, sampling=sampling_kwargs(args))


def cmd_info(args: argparse.Namespace) -> None:
    """Print what a GGUF file holds."""
    from corral.default_model import default_model_path
    from corral.tools.info import describe

    path = args.model or default_model_path()
    rows = describe(path, args.ctx_size, torch.device(args.device), args.chat_template)
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label + ':':<{width + 1}} {value}")


COMMANDS = {"run": cmd_run, "chat": cmd_chat, "info": cmd_info}


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
