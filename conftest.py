"""Puts the repository root on sys.path so tests can import `tests.fixtures` helpers.

Without a GPU, Triton kernels run in Triton's interpreter: TRITON_INTERPRET must be set
before triton is first imported, and transformers imports it, so it is set here, before any
test module loads, and the interpreter is patched (tests/triton_interpreter.py).
"""

import importlib.util
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton"):
    from tests.triton_interpreter import fix_interpreter

    fix_interpreter()
