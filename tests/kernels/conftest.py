"""Kernel tests run the Triton kernels on a GPU when there is one, else in Triton's
interpreter on CPU (TRITON_INTERPRET=1, set by the root conftest.py, which also patches
the interpreter: tests/triton_interpreter.py).
"""

import pytest
import torch


@pytest.fixture(scope="session")
def device() -> str:
    """Where the kernels run: the GPU, or the CPU under Triton's interpreter."""
    return "cuda" if torch.cuda.is_available() else "cpu"
