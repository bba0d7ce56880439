"""Reference files from upstream projects, fetched on first use and cached for later runs.

llama.cpp's own test data (``models/ggml-vocab-*.gguf`` with their ``.inp``/``.out`` tokenizer
vectors, ``src/unicode-data.cpp``, the quant block definitions, ...) ships inside the sdist of
``llama-cpp-python`` under ``vendor/llama.cpp``. Tests ask for single files of that tree with
:func:`llama_cpp_source`; the first call downloads the sdist with pip (PyPI must be reachable),
keeps the tarball in the cache so later files need no download, and extracts only the files
asked for.

The cache directory is ``$CORRAL_TEST_CACHE`` if set, else ``~/.cache/corral-tests``.
"""

from __future__ import annotations

import functools
import os
import pathlib
import posixpath
import shutil
import subprocess
import sys
import tarfile
import tempfile

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
_SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
_TREE_PREFIX = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
_DOWNLOAD_TIMEOUT_S = 900


def cache_dir() -> pathlib.Path:
    """The directory that holds downloaded and extracted reference files."""
    configured = os.environ.get("CORRAL_TEST_CACHE")
    base = pathlib.Path(configured) if configured else pathlib.Path.home() / ".cache/corral-tests"
    return base.expanduser()


def _checked_relpath(relpath: str) -> str:
    """Normalise `relpath` and refuse anything that could leave the llama.cpp tree."""
    if not relpath or "\\" in relpath or "\x00" in relpath:
        raise ValueError(f"bad llama.cpp path {relpath!r}")
    norm = posixpath.normpath(relpath)
    if norm.startswith("/") or norm == "." or norm == ".." or norm.startswith("../"):
        raise ValueError(f"llama.cpp path {relpath!r} leaves the source tree")
    return norm


def download_sdist(
    requirement: str, filename: str, *, pip_args: tuple[str, ...] = (), env: dict | None = None
) -> pathlib.Path:
    """The cached source archive `filename` of `requirement` ("name==version"), downloaded
    with pip (no dependencies, no wheels) when missing."""
    target = cache_dir() / filename
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
            + [*pip_args, requirement, "-d", tmp],
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            timeout=_DOWNLOAD_TIMEOUT_S,
        )
        downloaded = pathlib.Path(tmp) / filename
        if not downloaded.is_file():
            raise FileNotFoundError(f"pip download did not produce {filename}")
        os.replace(downloaded, target)
    return target


def _sdist_tarball() -> pathlib.Path:
    """Path of the cached llama-cpp-python sdist."""
    return download_sdist(f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", _SDIST_NAME)


def _extract_member(tarball: pathlib.Path, member_name: str, dest: pathlib.Path) -> None:
    """Copy one regular-file member of `tarball` to `dest` (atomically, via a temp file)."""
    with tarfile.open(tarball, "r:gz") as tar:
        member = next((m for m in tar if m.name == member_name), None)  # stops at the match
        if member is None:
            raise FileNotFoundError(f"{member_name} is not in {tarball.name}")
        if not member.isfile():
            raise ValueError(f"{member_name} in {tarball.name} is not a regular file")
        source = tar.extractfile(member)
        if source is None:
            raise ValueError(f"cannot read {member_name} from {tarball.name}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with source, tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as out:
            shutil.copyfileobj(source, out)
        os.replace(out.name, dest)


@functools.cache
def llama_cpp_source(relpath: str) -> pathlib.Path:
    """Local path of file `relpath` of llama.cpp's tree (as vendored by llama-cpp-python).

    `relpath` is relative to the llama.cpp root, e.g. ``"models/ggml-vocab-gpt-2.gguf"``.
    The file is extracted from the cached sdist on first use (downloading the sdist if needed).
    """
    rel = _checked_relpath(relpath)
    root = (cache_dir() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}").resolve()
    dest = (root / rel).resolve()
    if not dest.is_relative_to(root):
        raise ValueError(f"llama.cpp path {relpath!r} leaves the cache directory")
    if not dest.is_file():
        _extract_member(_sdist_tarball(), _TREE_PREFIX + rel, dest)
    return dest
