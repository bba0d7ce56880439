"""The `corral` command as a user runs it (subprocesses of the installed console script)."""

import subprocess
import sys

import pytest

CORRAL = [sys.executable, "-m", "corral.interfaces.cli"]


def corral(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CORRAL, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_run_on_embedded_model_continues_the_prompt():
    result = corral("run", "-p", "The capital of France is", "-n", "12", "--temp", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The capital of France is Paris.")


def test_run_with_seed_is_reproducible():
    args = ("run", "-p", "Tell me a story:", "-n", "10", "--temp", "1", "--seed", "9")
    assert corral(*args).stdout == corral(*args).stdout


def test_info_describes_the_embedded_model():
    result = corral("info", "-c", "2048")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "architecture:" in out and "llama" in out
    assert "134.5M" in out  # SmolLM2-135M with its tied output counted once
    assert "9 heads, 3 KV heads" in out
    assert "Q4_1 x210" in out and "Q8_0 x1" in out
    assert "memory at -c 2048" in out
    assert "KV cache 90.0 MiB" in out  # K and V: 2 * 30 layers * 2048 * 3 heads * 64 * 4 B


@pytest.mark.parametrize("command", ["run", "info"])
def test_bad_model_file_gives_a_clear_error(tmp_path, command):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16)
    args = ["info", str(bad)] if command == "info" else ["run", "-m", str(bad), "-p", "x"]
    result = corral(*args)
    assert result.returncode == 1
    assert "broken.gguf" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_prompt_is_a_usage_error():
    result = corral("run")
    assert result.returncode == 2
    assert "-p/--prompt" in result.stderr


def test_q8_0_kv_cache_runs_from_the_command_line():
    result = corral(
        "run", "-p", "The capital of France is", "-n", "12", "--temp", "0", "-ctk", "q8_0",
        "-ctv", "q8_0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The capital of France is Paris.")


def test_unknown_kv_cache_type_is_a_usage_error():
    result = corral("run", "-p", "x", "--cache-type-k", "q4_0")
    assert result.returncode == 2
    assert "--cache-type-k" in result.stderr and "q8_0" in result.stderr
