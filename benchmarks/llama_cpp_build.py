"""The `build` half of benchmarks/llama_cpp_bench.py: llama.cpp's `llama-bench` compiled from
the llama-cpp-python sdist (CPU, or CUDA for one GPU architecture with the toolkit pieces a
pip-assembled CUDA install lacks), and packed to copy to another machine."""

import argparse
import gzip
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
CPU_BUILD_DIR = REPO / "build" / "llama.cpp-cpu"
CUDA_BUILD_DIR = REPO / "build" / "llama.cpp-cuda"
BINARY = Path("bin") / "llama-bench"
SELF = "python benchmarks/llama_cpp_bench.py"
COMMIT_FILE = "LLAMA_CPP_COMMIT"  # written into the extracted tree: the sdist's submodule HEAD

# Common CMake options: Release, one static binary, nothing llama-bench does not link.
BASE_DEFINES = (
    "CMAKE_BUILD_TYPE=Release",
    "BUILD_SHARED_LIBS=OFF",
    "CMAKE_SKIP_BUILD_RPATH=ON",
    "LLAMA_CURL=OFF",
    "LLAMA_OPENSSL=OFF",
    "LLAMA_BUILD_TESTS=OFF",
    "LLAMA_BUILD_EXAMPLES=OFF",
    "LLAMA_BUILD_SERVER=OFF",
    "LLAMA_BUILD_APP=OFF",
    "LLAMA_BUILD_TOOLS=ON",
)
# CUDA: one architecture, f16-f16 FlashAttention vector kernels only (llama-bench's default KV
# cache is f16; the tile and MMA FlashAttention kernels are kept), no NCCL (one GPU), and
# generic x86-64 AVX2 code for the CPU backend so the binary runs on another machine.
CUDA_DEFINES = (
    "GGML_CUDA=ON",
    "GGML_CUDA_FA_ALL_QUANTS=OFF",
    "GGML_CUDA_FA_QUANTS=f16-f16",
    "GGML_CUDA_NCCL=OFF",
    "GGML_NATIVE=OFF",
)


class ToolError(Exception):
    """A failure explained to the user in one message (printed without a traceback)."""


def reference_data() -> ModuleType:
    """tests/reference_data.py: the tests' sdist download and cache."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module("tests.reference_data")


def source_tree() -> tuple[Path, str]:
    """The llama.cpp tree vendored in the llama-cpp-python sdist, and its commit.

    Extracted once from the sdist tests/reference_data.py caches (pip downloads it when
    missing) into `<test cache>/llama.cpp-VERSION-src`. The tests' own `llama.cpp-VERSION`
    folder holds only the single files they asked for, so the whole tree goes to a folder of its
    own, renamed into place when complete. The commit is the llama.cpp submodule's HEAD recorded
    in the sdist's .git folder ("unknown" when absent).
    """
    ref = reference_data()
    version = ref.LLAMA_CPP_PYTHON_VERSION
    tree = ref.cache_dir() / f"llama.cpp-{version}-src"
    if not tree.is_dir():
        name = f"llama_cpp_python-{version}"
        tarball = ref.download_sdist(f"llama-cpp-python=={version}", f"{name}.tar.gz")
        print(f"extracting llama.cpp from {tarball} to {tree}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(dir=tree.parent, prefix=f"{tree.name}.") as tmp:
            staging = Path(tmp) / "tree"
            commit = extract_tree(
                tarball,
                f"{name}/vendor/llama.cpp/",
                f"{name}/.git/modules/vendor/llama.cpp/HEAD",
                staging,
            )
            (staging / COMMIT_FILE).write_text(commit + "\n")
            os.replace(staging, tree)
    return tree, (tree / COMMIT_FILE).read_text().strip()


def extract_tree(tarball: Path, prefix: str, head: str, dest: Path) -> str:
    """Extract the members of `tarball` under `prefix` into `dest` (prefix removed) and return
    the text of member `head` (a git HEAD file: the commit), or "unknown" without it."""
    commit = "unknown"
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            if member.name == head and member.isfile():
                source = tar.extractfile(member)
                if source is not None:
                    commit = source.read().decode().strip() or commit
            elif member.name.startswith(prefix) and member.name != prefix + ".git":
                member.name = member.name.removeprefix(prefix)  # .git: a submodule link
                tar.extract(member, dest, filter="data")
    if not (dest / "CMakeLists.txt").is_file():
        raise ToolError(f"{tarball} has no llama.cpp tree under {prefix}")
    return commit


def cuda_toolkit(args: argparse.Namespace) -> Path:
    """The CUDA toolkit folder, checked for nvcc and the runtime headers and library."""
    root = args.cuda_toolkit.resolve()
    needed = [root / "bin" / "nvcc", root / "include" / "cuda_runtime.h"]
    missing = [str(path) for path in needed if not path.is_file()]
    if not list(root.glob("lib*/libcudart.so*")):
        missing.append(f"{root}/lib64/libcudart.so")
    if missing:
        raise ToolError(f"the CUDA toolkit at {root} lacks {', '.join(missing)} (--cuda-toolkit)")
    return root


def cublas_folder(candidate: Path) -> tuple[Path, Path] | None:
    """(include folder, library folder) of cuBLAS in `candidate`, if it has both."""
    for include, lib in (("include", "lib64"), ("include", "lib")):
        if (candidate / include / "cublas_v2.h").is_file() and list(
            (candidate / lib).glob("libcublas.so*")
        ):
            return candidate / include, candidate / lib
    return None


def unpack_wheel(wheel: Path, dest: Path) -> None:
    """Unpack the include/ and lib/ files of an nvidia-cublas wheel into `dest` (once)."""
    if dest.is_dir():
        return
    print(f"unpacking {wheel} to {dest}", file=sys.stderr, flush=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with (
        zipfile.ZipFile(wheel) as archive,
        tempfile.TemporaryDirectory(dir=dest.parent, prefix=f"{dest.name}.") as tmp,
    ):
        members = [n for n in archive.namelist() if re.search(r"/(include|lib)/[^/]+$", n)]
        archive.extractall(Path(tmp) / "wheel", members=members)
        os.replace(Path(tmp) / "wheel", dest)


def unpacked_cublas(dest: Path) -> Path | None:
    """The folder of an unpacked nvidia-cublas wheel that holds include/ (nvidia/cu13 in CUDA
    13's wheels), or None."""
    folders = sorted(path.parent.parent for path in dest.rglob("cublas_v2.h"))
    return folders[0] if folders else None


def find_cublas(args: argparse.Namespace, toolkit: Path, build_dir: Path) -> tuple[Path, Path]:
    """cuBLAS headers and libraries: from --cublas (a folder or an nvidia-cublas wheel), else the
    toolkit, a wheel unpacked by an earlier build, or an installed nvidia-cublas package (torch's
    CUDA wheels bring one)."""
    unpacked = build_dir / "cublas"
    if args.cublas is not None:
        given = args.cublas.resolve()
        if given.suffix == ".whl":
            unpack_wheel(given, unpacked)
            given = unpacked_cublas(unpacked) or unpacked
        found = cublas_folder(given)
        if found is None:
            raise ToolError(f"--cublas {args.cublas}: no include/cublas_v2.h and lib/libcublas.so*")
        return found
    site = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
    earlier = unpacked_cublas(unpacked) if unpacked.is_dir() else None
    for candidate in (toolkit, *([earlier] if earlier else []), *sorted(site.glob("cu*"))):
        found = cublas_folder(candidate)
        if found is not None:
            return found
    raise ToolError(
        f"cuBLAS (cublas_v2.h, libcublas.so) is neither in {toolkit} nor in an installed "
        "nvidia-cublas package: pass --cublas with a folder that has include/ and lib/, or a "
        "wheel, e.g. after `pip download --no-deps nvidia-cublas==13.1.1.3 -d build/wheels`"
    )


def library(folder: Path, name: str) -> Path:
    """The shared library `name` (libcublas) in `folder`: name.so, else the first name.so.N."""
    exact = folder / f"{name}.so"
    versioned = sorted(folder.glob(f"{name}.so.*"))
    if exact.exists():
        return exact
    if not versioned:
        raise ToolError(f"{folder} has no {name}.so")
    return versioned[0]


def driver_library(toolkit: Path, source: Path, build_dir: Path) -> Path:
    """libcuda.so to link against: the toolkit's stub, else a stub compiled here that defines
    the driver functions ggml-cuda calls (soname libcuda.so.1, so the real driver loads at run
    time)."""
    for candidate in (toolkit / "lib64" / "stubs" / "libcuda.so", toolkit / "lib64" / "libcuda.so"):
        if candidate.exists():
            return candidate
    declared = set(
        re.findall(r"CUresult CUDAAPI (cu\w+)\(", (toolkit / "include/cuda.h").read_text())
    )
    used = set()
    for path in (source / "ggml" / "src" / "ggml-cuda").glob("*.cu*"):
        used |= set(re.findall(r"\b(cu[A-Z]\w*)\s*\(", path.read_text()))
    stub = build_dir / "cuda-stub"
    code = "".join(f"int {name}(void) {{ return 999; }}\n" for name in sorted(used & declared))
    stub_library = stub / "libcuda.so"
    if not stub_library.exists() or (stub / "cuda_stub.c").read_text() != code:  # else: no relink
        stub.mkdir(parents=True, exist_ok=True)
        (stub / "cuda_stub.c").write_text(code)
        run_checked(
            ["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(stub_library)]
            + [str(stub / "cuda_stub.c")],
            "compiling the libcuda.so stub",
        )
    return stub_library


def cuda_defines(args: argparse.Namespace, source: Path, build_dir: Path) -> list[str]:
    """CMake definitions of the CUDA variant, with the toolkit's parts located."""
    toolkit = cuda_toolkit(args)
    include, lib = find_cublas(args, toolkit, build_dir)
    defines = [
        *CUDA_DEFINES,
        f"CMAKE_CUDA_ARCHITECTURES={args.cuda_arch}",
        f"CMAKE_CUDA_COMPILER={toolkit / 'bin' / 'nvcc'}",
        f"CUDAToolkit_ROOT={toolkit}",
        f"CUDA_cuda_driver_LIBRARY={driver_library(toolkit, source, build_dir)}",
    ]
    if include != toolkit / "include":
        defines += [
            f"CUDA_cublas_LIBRARY={library(lib, 'libcublas')}",
            f"CUDA_cublasLt_LIBRARY={library(lib, 'libcublasLt')}",
            f"CMAKE_CUDA_FLAGS=-isystem {include}",
        ]
    return defines


def run_checked(command: Sequence[str], what: str) -> None:
    """Run `command` with its output on this terminal; ToolError when it fails."""
    print("+ " + shlex.join(command), file=sys.stderr, flush=True)
    try:
        subprocess.run(command, check=True)
    except FileNotFoundError:
        raise ToolError(f"{what}: {command[0]} is not installed") from None
    except subprocess.CalledProcessError as error:
        raise ToolError(f"{what} failed (exit {error.returncode}); see its output above") from None


def build(args: argparse.Namespace) -> None:
    """Extract, configure and build llama-bench; print the binary, its size and its libraries."""
    build_dir = (args.build_dir or (CUDA_BUILD_DIR if args.cuda else CPU_BUILD_DIR)).resolve()
    source, commit = source_tree()
    print(f"llama.cpp {commit} from llama-cpp-python's sdist: {source}", file=sys.stderr)
    build_dir.mkdir(parents=True, exist_ok=True)
    defines = [*BASE_DEFINES, f"LLAMA_BUILD_COMMIT={commit[:7]}", "LLAMA_BUILD_NUMBER=0"]
    if args.cuda:
        defines += cuda_defines(args, source, build_dir)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = ["cmake", "-S", str(source), "-B", str(build_dir), *generator]
    configure += [f"-D{define}" for define in [*defines, *args.cmake_define]]
    started = time.monotonic()
    run_checked(configure, "cmake configure")
    compile_llama_bench = ["cmake", "--build", str(build_dir), "--target", "llama-bench"]
    run_checked([*compile_llama_bench, "-j", str(args.jobs)], "cmake --build")
    minutes = (time.monotonic() - started) / 60
    binary = build_dir / BINARY
    print(f"\nbuilt {binary} ({binary.stat().st_size / 2**20:.1f} MiB) in {minutes:.1f} min")
    if shutil.which("ldd"):
        ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
        print("dynamic libraries:\n" + ldd.stdout.rstrip())
    if args.pack:
        packed = pack(binary)
        packed_at, binary_at = shown(packed), shown(binary)
        print(
            f"packed {packed_at} ({packed.stat().st_size / 2**20:.1f} MiB, stripped, gzip); on "
            f"the other machine: gzip -dc {packed_at} > {binary_at} && chmod +x {binary_at}"
        )


def shown(path: Path) -> str:
    """`path` relative to the repository root when inside it (the same on another machine)."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def pack(binary: Path) -> Path:
    """A stripped, gzip-compressed copy of `binary`, BUILD_DIR/llama-bench.gz: small enough to
    copy to another machine (the CUDA binary: 74 MiB, stripped 65, packed 41)."""
    packed = binary.parent.parent / f"{binary.name}.gz"
    with tempfile.TemporaryDirectory() as tmp:
        stripped = Path(tmp) / binary.name
        shutil.copy2(binary, stripped)
        if shutil.which("strip"):
            run_checked(["strip", str(stripped)], "strip")
        with stripped.open("rb") as source, gzip.open(packed, "wb", compresslevel=6) as out:
            shutil.copyfileobj(source, out)
    return packed
