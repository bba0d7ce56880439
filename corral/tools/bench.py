"""`corral bench`: prompt processing and generation speed, in llama-bench's spirit.

Tests, with llama-bench's names:

- ppP: one prompt of P random token ids prefilled from position 0 by the engine's own
  chunked prefill (`corral.engine.generate.prefill`); rate = P / time.
- tgN: N single-token decode steps from position 0. The first input is the BOS token,
  each next one the argmax of the previous logits, kept on the device (no sampler, no host
  sync between steps); rate = N / time. As llama-bench's tg: N decodes of one token.

Each test runs once untimed (warm-up: allocator, library handles, kernel caches), then
-r timed repetitions; the report is the mean ± sample standard deviation of the
per-repetition rates (llama-bench's avg_ts / stddev_ts). On CUDA the device is
synchronised before the clock starts and before it stops.
"""

import argparse
import importlib.metadata
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch


def count_list(text: str) -> list[int]:
    """'512' or '128,512' -> [128, 512] (token counts >= 0), as llama-bench's -p / -n."""
    try:
        counts = [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N,N,... got {text!r}") from None
    if any(count < 0 for count in counts):
        raise argparse.ArgumentTypeError(f"token counts must be >= 0, got {text!r}")
    return counts


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_parser(commands: Any) -> None:
    """Register `corral bench` on the CLI's subcommand parsers."""
    from corral.interfaces.cli import add_cache_type_args

    bench = commands.add_parser("bench", help="measure prompt and generation speed")
    bench.add_argument("-m", "--model", type=Path, help="model file or folder (default: embedded)")
    add = bench.add_argument
    add("-p", "--n-prompt", type=count_list, default=[512], help="prompt tokens (512; 0: skip)")
    add("-n", "--n-gen", type=count_list, default=[128], help="generated tokens (128; 0: skip)")
    add("-r", "--repetitions", type=positive_int, default=3, help="timed runs per test (3)")
    add("-ngl", "--n-gpu-layers", type=int, help="layers on the GPU (the rest on the CPU)")
    add_cache_type_args(bench)
    add("-t", "--threads", type=positive_int, help="CPU threads (default: torch's)")
    add("-o", "--output", choices=("md", "json"), default="md", help="markdown table or JSON")
    add("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")


@dataclass
class TestResult:
    """Timings of one test: ppP (n_prompt = P) or tgN (n_gen = N)."""

    n_prompt: int
    n_gen: int
    samples_ns: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        """llama-bench's test name: pp512, tg128."""
        return f"pp{self.n_prompt}" if self.n_prompt else f"tg{self.n_gen}"

    @property
    def samples_ts(self) -> list[float]:
        """Tokens per second of each repetition."""
        return [(self.n_prompt or self.n_gen) * 1e9 / ns for ns in self.samples_ns]

    @property
    def avg_ts(self) -> float:
        """Mean tokens per second."""
        return statistics.fmean(self.samples_ts)

    @property
    def stddev_ts(self) -> float:
        """Sample standard deviation of the tokens per second (0 for one repetition)."""
        rates = self.samples_ts
        return statistics.stdev(rates) if len(rates) > 1 else 0.0


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ns(run: Callable[[], object], device: torch.device) -> int:
    """Nanoseconds `run` takes, queued device work included."""
    synchronize(device)
    start = time.perf_counter_ns()
    run()
    synchronize(device)
    return time.perf_counter_ns() - start


def prompt_run(model: Any, prompt_ids: list[int]) -> Callable[[], object]:
    """One ppP run: prefill `prompt_ids` from position 0 (over the previous run's cache)."""
    from corral.engine.generate import prefill

    return lambda: prefill(model, prompt_ids)


def generation_run(model: Any, first: torch.Tensor, n_gen: int) -> Callable[[], None]:
    """One tgN run: `n_gen` one-token steps from position 0, greedy on the logits."""

    def run() -> None:
        token = first  # (1, 1)
        for position in range(n_gen):
            logits = model(token, position)  # (1, 1, V)
            token = logits[:, -1].argmax(-1, keepdim=True)  # (1, 1), stays on the device

    return run


def load_model(args: argparse.Namespace, n_ctx: int) -> tuple[Any, int]:
    """The LLM the options name and how many of its layers run on a GPU."""
    from corral.interfaces.api import LLM

    llm = LLM(
        args.model,
        n_ctx=n_ctx,
        device=args.device,
        gpu_layers=args.n_gpu_layers,
        cache_type_k=args.cache_type_k,
        cache_type_v=args.cache_type_v,
    )
    return llm, llm.placement.gpu_layers


def model_row(llm: Any, gpu_layers: int) -> dict[str, Any]:
    """The model's llama-bench columns: description, file size, parameter count, backend."""
    from corral.checkpoints import open_checkpoint
    from corral.tools.info import human_count
    from corral.tools.shaped_gguf import FILE_TYPE_NAMES

    with open_checkpoint(llm.path) as checkpoint:
        types = checkpoint.tensor_types()
        size = sum(path.stat().st_size for path in checkpoint.files())
    n_params = llm.config.n_params()  # a tied head once (it may hold a packed copy)
    matrices = Counter({name: n for name, n in types.items() if name != "F32"}) or types
    quant = FILE_TYPE_NAMES.get(llm.metadata.get("general.file_type"))
    quant = quant or matrices.most_common(1)[0][0]
    device = llm.device
    cuda = device.type == "cuda"
    return {
        "model_filename": str(llm.path),
        "model_type": f"{llm.metadata.get('general.architecture', '?')} "
        f"{human_count(n_params)} {quant}",
        "model_size": size,
        "model_n_params": n_params,
        "backend": "CUDA" if cuda else "CPU",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "dtype": str(llm.dtype).removeprefix("torch."),
        "n_gpu_layers": gpu_layers,
        "type_k": llm.model.layers[0].attn.cache.k.cache_type,
        "type_v": llm.model.layers[0].attn.cache.v.cache_type,
        "n_threads": torch.get_num_threads(),
        "corral_version": corral_version(),
    }


def corral_version() -> str:
    """The installed corral's version ("source tree" when run without installing it)."""
    try:
        return importlib.metadata.version("corral")
    except importlib.metadata.PackageNotFoundError:
        return "source tree"


def cpu_name() -> str:
    """The processor's model name (Linux /proc/cpuinfo), else 'cpu'."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def json_record(model: dict[str, Any], result: TestResult) -> dict[str, Any]:
    """One test as llama-bench's JSON fields (plus device, dtype and test name)."""
    ns = result.samples_ns
    return {
        **model,
        "n_prompt": result.n_prompt,
        "n_gen": result.n_gen,
        "test": result.name,
        "test_time": datetime.now(UTC).isoformat(timespec="seconds"),
        "repetitions": len(ns),
        "avg_ns": round(statistics.fmean(ns)),
        "stddev_ns": round(statistics.stdev(ns)) if len(ns) > 1 else 0,
        "avg_ts": result.avg_ts,
        "stddev_ts": result.stddev_ts,
        "samples_ns": ns,
        "samples_ts": result.samples_ts,
    }


MARKDOWN_HEADER = (
    "| model | size | params | backend | ngl | test | t/s |\n"
    "| ----- | ---: | -----: | ------- | --: | ---: | --: |"
)


def markdown_row(model: dict[str, Any], result: TestResult) -> str:
    """One test as a llama-bench table row."""
    from corral.tools.info import human_bytes, human_count

    cells = (
        model["model_type"],
        human_bytes(model["model_size"]),
        human_count(model["model_n_params"]),
        model["backend"],
        str(model["n_gpu_layers"]),
        result.name,
        f"{result.avg_ts:.2f} ± {result.stddev_ts:.2f}",
    )
    return "| " + " | ".join(cells) + " |"


def plan_tests(n_prompt: Sequence[int], n_gen: Sequence[int]) -> list[TestResult]:
    """The tests to run, pp first (llama-bench's order); 0 means skip."""
    tests = [TestResult(n_prompt=p, n_gen=0) for p in n_prompt if p]
    tests += [TestResult(n_prompt=0, n_gen=n) for n in n_gen if n]
    if not tests:
        raise ValueError("nothing to measure: -p and -n are both 0")
    return tests


def run(args: argparse.Namespace) -> None:
    """Run the pp and tg tests and print a markdown table or a JSON array."""
    tests = plan_tests(args.n_prompt, args.n_gen)
    if args.threads:
        torch.set_num_threads(args.threads)
    llm, gpu_layers = load_model(args, n_ctx=max(args.n_prompt) + max(args.n_gen))
    model, device = llm.model, llm.device
    row = model_row(llm, gpu_layers)
    generator = torch.Generator().manual_seed(0)
    first = torch.tensor([[llm.tokenizer.bos_id or 0]], device=device)  # (1, 1)
    if args.output == "md":
        print(MARKDOWN_HEADER, flush=True)
    for test in tests:
        if test.n_prompt:
            ids = torch.randint(0, llm.config.n_vocab, (test.n_prompt,), generator=generator)
            once = prompt_run(model, ids.tolist())
        else:
            once = generation_run(model, first, test.n_gen)
        time_ns(once, device)  # warm-up
        test.samples_ns = [time_ns(once, device) for _ in range(args.repetitions)]
        if args.output == "md":
            print(markdown_row(row, test), flush=True)
    if args.output == "json":
        print(json.dumps([json_record(row, test) for test in tests], indent=2))
    else:
        print(f"\ncorral {row['corral_version']}, {row['dtype']} compute, {row['device_name']}")
