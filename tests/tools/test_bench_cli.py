"""`corral bench` through the CLI entry point on a tiny shaped GGUF: the report's structure
(JSON fields, markdown table), never its timings. Model size and parameter count are checked
against the file on disk and gguf-py's reading of it."""

import json
import math

import gguf
import numpy as np
import pytest

from corral.interfaces.cli import main
from corral.tools.shaped_gguf import write_shaped_gguf


@pytest.fixture(scope="module")
def bench_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "tiny-Q4_K_M.gguf"
    write_shaped_gguf(path, "tiny", "Q4_K_M")
    return path


def test_json_report(bench_model, capsys):
    argv = ["bench", "-m", str(bench_model), "-p", "8", "-n", "4", "-r", "2", "-o", "json"]
    assert main([*argv, "--device", "cpu"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["test"] for r in records] == ["pp8", "tg4"]
    assert [(r["n_prompt"], r["n_gen"]) for r in records] == [(8, 0), (0, 4)]
    n_params = sum(int(np.prod(t.shape)) for t in gguf.GGUFReader(bench_model).tensors)
    for record in records:
        assert record["model_size"] == bench_model.stat().st_size
        assert record["model_n_params"] == n_params
        assert record["model_type"].startswith("llama ") and "Q4_K_M" in record["model_type"]
        assert record["backend"] == "CPU" and record["n_gpu_layers"] == 0
        assert record["repetitions"] == 2
        assert len(record["samples_ns"]) == len(record["samples_ts"]) == 2
        assert all(ns > 0 for ns in record["samples_ns"])
        rates = record["samples_ts"]
        assert all(math.isfinite(rate) and rate > 0 for rate in rates)
        n_tokens = record["n_prompt"] or record["n_gen"]
        for ns, rate in zip(record["samples_ns"], rates, strict=True):
            assert rate == pytest.approx(n_tokens * 1e9 / ns)
        assert record["avg_ts"] == pytest.approx(np.mean(rates))
        assert record["stddev_ts"] == pytest.approx(np.std(rates, ddof=1))


def test_markdown_table(bench_model, capsys):
    argv = ["bench", "-m", str(bench_model), "-p", "8,16", "-n", "4", "-r", "1"]
    assert main([*argv, "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [line for line in lines if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == ["model", "size", "params", "backend", "ngl", "test", "t/s"]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [row[5] for row in rows] == ["pp8", "pp16", "tg4"]
    for row in rows:
        assert row[3] == "CPU"
        mean, spread = row[6].split(" ± ")
        assert float(mean) > 0 and float(spread) == 0.0  # one repetition: no spread


def test_gpu_layers_need_a_gpu(bench_model, capsys):
    argv = ["bench", "-m", str(bench_model), "-p", "0", "-n", "2", "-r", "1", "-ngl", "99"]
    assert main([*argv, "--device", "cpu", "-o", "json"]) == 1
    assert "--gpu-layers needs a CUDA device" in capsys.readouterr().err


def test_bad_options(bench_model, capsys):
    assert main(["bench", "-m", str(bench_model), "-p", "0", "-n", "0"]) == 1
    assert "nothing to measure" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "-m", str(bench_model), "-r", "0"])
    with pytest.raises(SystemExit):
        main(["bench", "-m", str(bench_model), "-p", "8,x"])
    assert main(["bench", "-m", str(bench_model.with_name("missing.gguf"))]) == 1
    assert "missing.gguf" in capsys.readouterr().err


def test_hf_folder_report(tmp_path, capsys):
    from tests.fixtures.tiny_hf import save_llama_folder, tiny_llama

    hf = tiny_llama(seed=0, num_attention_heads=4, num_key_value_heads=2)
    folder = save_llama_folder(tmp_path / "hf", hf)
    argv = ["bench", "-m", str(folder), "-p", "4", "-n", "2", "-r", "1", "-o", "json"]
    assert main([*argv, "--device", "cpu"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert all(r["model_n_params"] == hf.num_parameters() for r in records)
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert all(r["model_size"] == size for r in records)
    tied = tiny_llama(seed=0, tie_word_embeddings=True)  # the LM head is the embedding
    tied_folder = save_llama_folder(tmp_path / "tied", tied)
    tied_argv = ["bench", "-m", str(tied_folder), "-p", "0", "-n", "2", "-r", "1", "-o", "json"]
    assert main([*tied_argv, "--device", "cpu"]) == 0
    tied_records = json.loads(capsys.readouterr().out)
    assert tied_records[0]["model_n_params"] == tied.num_parameters()
