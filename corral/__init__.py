"""corral: run Llama-family language models from GGUF, GPTQ and fp16 checkpoints.

`corral.load(path)` returns an `LLM`; the API module is imported on first use so that
`import corral.<submodule>` stays light.
"""

from typing import Any

__all__ = ["LLM", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from corral.interfaces import api

        return getattr(api, name)
    raise AttributeError(f"module 'corral' has no attribute {name!r}")
