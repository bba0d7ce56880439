"""llama.cpp's `llama-bench` side by side with `corral bench` on the same GGUF file.

Two subcommands:

build
    Extracts llama.cpp from the llama-cpp-python 0.3.36 sdist (the archive tests/reference_data.py
    caches, downloaded with pip when missing), configures it with CMake (Release, static
    llama/ggml libraries, no curl/OpenSSL, no tests, examples or server) and builds only the
    `llama-bench` target into --build-dir (build/llama.cpp-cpu, or build/llama.cpp-cuda with
    --cuda). The CPU variant is compiled for this machine's processor (GGML_NATIVE); the CUDA
    variant for one GPU architecture (--cuda-arch, 90 = H100/H200) with portable AVX2 CPU code,
    only the f16 FlashAttention vector kernels (llama-bench's default f16 KV cache) and no NCCL,
    which keeps the build to what the benchmark runs. The CUDA variant needs nvcc, the CUDA
    runtime headers and cuBLAS: when the toolkit has no cuBLAS, --cublas names a folder or a
    nvidia-cublas wheel that has it; when it has no libcuda.so stub to link against, a stub with
    the driver functions ggml calls is compiled (the real driver is loaded at run time).
    --pack also writes BUILD_DIR/llama-bench.gz, stripped and compressed, to copy elsewhere.

        python benchmarks/llama_cpp_bench.py build
        python benchmarks/llama_cpp_bench.py build --cuda --cuda-arch 90 -j 16

run
    Runs llama.cpp's `llama-bench -o json` and then `corral bench -o json` (this checkout's
    corral) on the same file with the same -p, -n, -r and -ngl, and the same CPU thread count
    (-t, default: the cores this process may use), and prints one markdown table:
    both tools' tokens/s (mean ± sample standard deviation over -r runs, each tool after its
    own warm-up run) and the ratio corral / llama.cpp, then the commands, versions (llama.cpp's
    build commit as llama-bench reports it) and devices. --json OUT keeps both tools' raw
    records.

        python benchmarks/llama_cpp_bench.py run -m model.gguf -p 512 -n 128 -r 3
        python benchmarks/llama_cpp_bench.py run -m model.gguf -ngl 99 --json out.json

The tool lives outside the package: corral never imports it.
"""

import argparse
import importlib
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# the sibling module: this script's folder is first on sys.path when it runs
from llama_cpp_build import (
    BINARY,
    CPU_BUILD_DIR,
    CUDA_BUILD_DIR,
    REPO,
    SELF,
    ToolError,
    build,
)

from corral.tools.bench import count_list, positive_int

TAIL_LINES = 40
FLASH_ATTN = {-1: "auto", 0: "off", 1: "on"}  # llama-bench's JSON values


def default_binary() -> Path:
    """The llama-bench built by `build`: the CUDA one when this machine has an NVIDIA GPU and
    it was built, else the CPU one."""
    gpu = Path("/dev/nvidiactl").exists()
    for build_dir in (CUDA_BUILD_DIR, CPU_BUILD_DIR) if gpu else (CPU_BUILD_DIR,):
        if (build_dir / BINARY).is_file():
            return build_dir / BINARY
    raise ToolError(
        f"no llama-bench at {CPU_BUILD_DIR / BINARY}"
        + (f" or {CUDA_BUILD_DIR / BINARY}" if gpu else "")
        + f": run `{SELF} build"
        + (" --cuda`" if gpu else "`")
        + " first, or pass --llama-bench PATH"
    )


def default_model() -> Path:
    """The embedded SmolLM2-135M-Instruct Q4_1 file (corral's default model)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module("corral.default_model").default_model_path()


def shared_options(args: argparse.Namespace) -> list[str]:
    """The options both tools get: -p, -n, -r, -t and -ngl when given."""
    options = ["-p", ",".join(map(str, args.n_prompt)), "-n", ",".join(map(str, args.n_gen))]
    options += ["-r", str(args.repetitions), "-t", str(args.threads)]
    if args.n_gpu_layers is not None:
        options += ["-ngl", str(args.n_gpu_layers)]
    return options


def tail(text: str) -> str:
    """The last TAIL_LINES lines of `text`."""
    return "\n".join(text.rstrip().splitlines()[-TAIL_LINES:])


def run_json(name: str, command: Sequence[str], env: dict[str, str] | None = None) -> list[dict]:
    """Run a benchmark that prints a JSON array on stdout; its records, or a ToolError with the
    tail of its stderr (or stdout) when it fails."""
    print(f"running {name}: {shlex.join(command)}", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    except OSError as error:
        raise ToolError(f"cannot start {name}: {error}") from None
    if done.returncode != 0:
        raise ToolError(
            f"{name} failed (exit {done.returncode}); the end of its output:\n"
            + tail(done.stderr or done.stdout)
        )
    try:
        records = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise ToolError(f"{name} did not print JSON; its output:\n{tail(done.stdout)}") from None
    if not isinstance(records, list) or not records:
        raise ToolError(f"{name} printed no test results: {tail(done.stdout)}")
    return records


def corral_command(args: argparse.Namespace, model: Path) -> list[str]:
    """`corral bench -o json` of this checkout, run with this Python."""
    command = [sys.executable, "-m", "corral.interfaces.cli", "bench", "-m", str(model)]
    command += [*shared_options(args), "-o", "json"]
    return command + (["--device", args.device] if args.device else [])


def llama_bench_command(args: argparse.Namespace, binary: Path, model: Path) -> list[str]:
    """`llama-bench -o json` with the same settings."""
    return [str(binary), "-m", str(model), *shared_options(args), "-o", "json"]


def corral_commit() -> str:
    """This checkout's short git commit (+ "-dirty" with uncommitted changes), or "?"."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--"]).returncode
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + ("-dirty" if dirty else "")


def spread(record: dict[str, Any]) -> str:
    """'383.20 ± 3.10': a record's mean and standard deviation of tokens/s."""
    return f"{record['avg_ts']:.2f} ± {record['stddev_ts']:.2f}"


def table(corral: list[dict], llama: list[dict]) -> str:
    """The markdown table: per test both tools' tokens/s and the ratio of the means."""
    rows = [
        "| test | corral t/s | llama.cpp t/s | corral / llama.cpp |",
        "| ---- | ---------: | ------------: | -----------------: |",
    ]
    by_test = {(r["n_prompt"], r["n_gen"]): r for r in llama if not r.get("n_depth")}
    for record in corral:
        other = by_test.get((record["n_prompt"], record["n_gen"]))
        ratio = f"{record['avg_ts'] / other['avg_ts']:.2f}" if other else "-"
        theirs = spread(other) if other else "-"
        rows.append(f"| {record['test']} | {spread(record)} | {theirs} | {ratio} |")
    return "\n".join(rows)


def describe(corral: dict[str, Any], llama: dict[str, Any]) -> str:
    """Lines naming the file, both tools' versions, devices, threads and GPU layers."""
    gpu = f", {llama['gpu_info']}" if llama.get("gpu_info") else ""
    flash_attn = FLASH_ATTN.get(llama.get("flash_attn"), "?")
    return "\n".join(
        [
            f"model: {corral['model_filename']} ({corral['model_type']}, "
            f"{corral['model_size'] / 2**20:.1f} MiB file; llama.cpp: {llama['model_type']})",
            f"corral {corral['corral_version']} (git {corral_commit()}): {corral['backend']} "
            f"{corral['device_name']}, {corral['dtype']} compute, {corral['n_threads']} threads, "
            f"ngl {corral['n_gpu_layers']}",
            f"llama.cpp build {llama['build_commit']} ({llama['build_number']}): "
            f"{llama['backends']} {llama['cpu_info']}{gpu}, {llama['n_threads']} threads, "
            f"ngl {llama['n_gpu_layers']}, flash_attn {flash_attn}",
        ]
    )


def run(args: argparse.Namespace) -> None:
    """Benchmark the file with both tools and print the side-by-side table."""
    if not any(args.n_prompt) and not any(args.n_gen):
        raise ToolError("nothing to measure: -p and -n are both 0")
    model = (args.model or default_model()).resolve()
    if not model.is_file():
        raise ToolError(f"model file {model} does not exist")
    binary = (args.llama_bench or default_binary()).resolve()
    if not binary.is_file():
        raise ToolError(f"no llama-bench at {binary}: run `{SELF} build` first")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    corral_cmd = corral_command(args, model)
    llama_cmd = llama_bench_command(args, binary, model)
    llama = run_json("llama-bench", llama_cmd)  # first: a broken build fails fast
    corral = run_json("corral bench", corral_cmd, env)
    if ("CUDA" in llama[0]["backends"]) != (corral[0]["backend"] == "CUDA"):
        print(
            f"warning: corral ran on {corral[0]['backend']}, llama-bench with "
            f"{llama[0]['backends']}: pass --device or use the other build",
            file=sys.stderr,
        )
    print(table(corral, llama))
    print("\n" + describe(corral[0], llama[0]))
    print(f"commands:\n  {shlex.join(llama_cmd)}\n  {shlex.join(corral_cmd)}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "commands": {"corral": corral_cmd, "llama.cpp": llama_cmd},
                    "corral": corral,
                    "llama.cpp": llama,
                },
                indent=2,
            )
            + "\n"
        )


def parser() -> argparse.ArgumentParser:
    """The command line: `build` and `run`."""
    main = argparse.ArgumentParser(
        prog=SELF,
        description=__doc__.split("\n\n")[0]
        + " `build` compiles llama.cpp's llama-bench from the llama-cpp-python 0.3.36 sdist; "
        "`run` measures a GGUF file with corral and llama-bench and prints both, with the "
        "ratio.",
        epilog="See `build --help` and `run --help`; benchmarks/README.md.",
    )
    commands = main.add_subparsers(dest="command", required=True)
    cores = len(os.sched_getaffinity(0))

    make = commands.add_parser(
        "build",
        help="build llama-bench from the llama-cpp-python sdist",
        description="Extract llama.cpp from the llama-cpp-python 0.3.36 sdist (cached by the "
        "tests; pip downloads it when missing) and build only the llama-bench target, Release, "
        "statically linked (BUILD_SHARED_LIBS=OFF), without curl/OpenSSL, tests, examples or "
        "server. CPU: tuned for this processor (GGML_NATIVE). --cuda: one GPU architecture, "
        "portable AVX2 CPU code, f16 FlashAttention vector kernels only, no NCCL; needs nvcc, "
        "cuda_runtime.h and cuBLAS (see --cublas). Prefix with `nice -n 19` on a shared machine.",
    )
    make.add_argument(
        "--build-dir",
        type=Path,
        help=f"output folder (default {CPU_BUILD_DIR.relative_to(REPO)}"
        f", with --cuda {CUDA_BUILD_DIR.relative_to(REPO)}); the binary is BUILD_DIR/{BINARY}",
    )
    make.add_argument("--cuda", action="store_true", help="build the CUDA backend")
    make.add_argument("--cuda-arch", default="90", help="CMAKE_CUDA_ARCHITECTURES (90: H100/H200)")
    make.add_argument(
        "--cuda-toolkit",
        type=Path,
        default=Path(os.environ.get("CUDA_HOME") or "/usr/local/cuda"),
        help="CUDA toolkit folder with bin/nvcc (default $CUDA_HOME or /usr/local/cuda)",
    )
    make.add_argument(
        "--cublas",
        type=Path,
        help="cuBLAS when the toolkit lacks it: a folder with include/cublas_v2.h and "
        "lib/libcublas.so*, or an nvidia-cublas wheel (default: the toolkit, then an installed "
        "nvidia-cublas package)",
    )
    make.add_argument(
        "--pack",
        action="store_true",
        help="also write BUILD_DIR/llama-bench.gz, stripped and compressed, to copy elsewhere",
    )
    make.add_argument(
        "-j", "--jobs", type=positive_int, default=cores, help=f"build jobs ({cores})"
    )
    make.add_argument(
        "-D",
        dest="cmake_define",
        action="append",
        default=[],
        metavar="VAR=VALUE",
        help="extra CMake definition (repeatable), e.g. -D GGML_CUDA_FA=OFF",
    )
    make.set_defaults(handler=build)

    bench = commands.add_parser(
        "run",
        help="corral bench and llama-bench side by side",
        description="Run `llama-bench -o json` and `corral bench -o json` (this checkout) on "
        "the same file with the same -p/-n/-r/-t/-ngl, one after the other, and print a markdown "
        "table of both tools' tokens/s (mean ± sample stddev) with the ratio corral/llama.cpp.",
    )
    add = bench.add_argument
    add("-m", "--model", type=Path, help="GGUF file (default: the embedded SmolLM2 Q4_1)")
    add("-p", "--n-prompt", type=count_list, default=[512], help="prompt tokens (512; 0: skip)")
    add("-n", "--n-gen", type=count_list, default=[128], help="generated tokens (128; 0: skip)")
    add("-r", "--repetitions", type=positive_int, default=3, help="timed runs per test (3)")
    add(
        "-ngl",
        "--n-gpu-layers",
        type=int,
        help="layers on the GPU, passed to both (default: "
        "each tool's own: llama-bench all, corral as many as fit on a GPU)",
    )
    add(
        "-t",
        "--threads",
        type=positive_int,
        default=cores,
        help=f"CPU threads for both ({cores}, the cores this process may use)",
    )
    add("--device", help="corral's device (cpu, cuda; default: cuda when available)")
    add(
        "--llama-bench",
        type=Path,
        help=f"llama-bench binary (default: BUILD_DIR/{BINARY} of "
        "`build`, the CUDA one on a machine with an NVIDIA GPU)",
    )
    add("--json", type=Path, metavar="OUT", help="also write both tools' raw records to OUT")
    bench.set_defaults(handler=run)
    return main


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the chosen subcommand; 1 with a message on a ToolError."""
    args = parser().parse_args(argv)
    try:
        args.handler(args)
    except ToolError as error:
        print(f"llama_cpp_bench: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
