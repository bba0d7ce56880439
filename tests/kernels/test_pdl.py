"""When the decode kernels launch with programmatic dependent launch
(corral.kernels.triton.pdl.launch_options): Hopper-class CUDA devices, decode-sized
launches only, never in Triton's interpreter, and CORRAL_PDL=0 turns it off."""

import pytest
import torch

from corral.kernels.triton import pdl


@pytest.fixture
def hopper(monkeypatch: pytest.MonkeyPatch) -> torch.device:
    """CUDA device 0 taken for a compute-capability-9.0 GPU, outside the interpreter."""
    monkeypatch.setitem(pdl._CAPABLE, 0, True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("CORRAL_PDL", raising=False)
    return torch.device("cuda", 0)


def test_decode_launches_on_hopper_use_pdl(hopper: torch.device):
    assert pdl.launch_options(hopper, 1) == {"PDL": True, "launch_pdl": True}
    assert pdl.launch_options(hopper, pdl.MAX_PDL_ROWS)["PDL"]


def test_prefill_sized_launches_do_not(hopper: torch.device):
    assert pdl.launch_options(hopper, pdl.MAX_PDL_ROWS + 1) == {"PDL": False}


def test_older_gpus_the_interpreter_and_the_switch_turn_it_off(
    hopper: torch.device, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(pdl._CAPABLE, 0, False)  # an Ampere GPU
    assert pdl.launch_options(hopper) == {"PDL": False}
    monkeypatch.setitem(pdl._CAPABLE, 0, True)
    monkeypatch.setenv("CORRAL_PDL", "0")
    assert pdl.launch_options(hopper) == {"PDL": False}
    monkeypatch.delenv("CORRAL_PDL")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert pdl.launch_options(hopper) == {"PDL": False}
    assert pdl.launch_options(torch.device("cpu")) == {"PDL": False}
