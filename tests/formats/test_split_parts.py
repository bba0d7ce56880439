"""GGUF files shipped as raw byte parts (`x.gguf-split-a`, `-split-b`, ...) read like the whole."""

from pathlib import Path

import numpy as np
import pytest
import torch

from corral.errors import ModelFormatError
from corral.formats.gguf import GGUFFile
from corral.loader import load_gguf_model

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "tiny-llama-Q4_K_M.gguf"


def split(path: Path, folder: Path, fractions: list[float]) -> list[Path]:
    """Cut `path` into raw parts at the given fractions of its size, like `split -b`."""
    data = path.read_bytes()
    cuts = [0, *(int(len(data) * f) for f in fractions), len(data)]
    parts = []
    for index, (start, end) in enumerate(zip(cuts, cuts[1:], strict=False)):
        part = folder / f"model.gguf-split-{'abcdefgh'[index]}"
        part.write_bytes(data[start:end])
        parts.append(part)
    return parts


def test_parts_read_like_the_joined_file(tmp_path):
    parts = split(FIXTURE, tmp_path, [0.45, 0.8])
    with GGUFFile(FIXTURE) as whole, GGUFFile(parts[0]) as parted:
        assert parted.metadata.keys() == whole.metadata.keys()
        assert parted.tensors == whole.tensors
        for name in whole.tensors:
            assert np.array_equal(parted.tensor_bytes(name), whole.tensor_bytes(name)), name


def test_a_tensor_straddling_parts_is_read_whole(tmp_path):
    with GGUFFile(FIXTURE) as whole:
        largest = max(whole.tensors.values(), key=lambda t: t.nbytes)
        size = FIXTURE.stat().st_size
        middle = (largest.offset + largest.nbytes // 2) / size
        expected = np.array(whole.tensor_bytes(largest.name))
    parts = split(FIXTURE, tmp_path, [middle])
    with GGUFFile(parts[0]) as parted:
        got = parted.tensor_bytes(largest.name)
        assert np.array_equal(got, expected)
        assert not got.flags.writeable


def test_model_from_parts_gives_the_same_logits(tmp_path):
    parts = split(FIXTURE, tmp_path, [0.3, 0.6, 0.9])
    ids = torch.tensor([[1, 5, 300, 42, 7]])
    logits = []
    for path in (FIXTURE, parts[1]):  # naming any part finds the whole run
        with GGUFFile(path) as gguf:
            model = load_gguf_model(gguf, torch.device("cpu"), torch.float32, 16).model
        logits.append(model(ids, 0))
    assert torch.equal(logits[0], logits[1])


def test_missing_first_part_is_named(tmp_path):
    parts = split(FIXTURE, tmp_path, [0.5])
    parts[0].unlink()
    with pytest.raises(FileNotFoundError, match="split-a"):
        GGUFFile(parts[1])


def test_missing_last_part_is_refused(tmp_path):
    parts = split(FIXTURE, tmp_path, [0.5, 0.75])
    parts[2].unlink()
    with pytest.raises(ModelFormatError, match="past the end of the file"):
        GGUFFile(parts[0])


def test_info_reports_all_parts(tmp_path):
    from corral.tools.info import describe_file

    parts = split(FIXTURE, tmp_path, [0.5])
    assert describe_file(parts[0]).endswith(f"(2 parts, {FIXTURE.stat().st_size / 1024:.1f} KiB)")
