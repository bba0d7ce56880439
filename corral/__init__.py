"""corral: run Llama-family language models from GGUF, GPTQ and fp16 checkpoints."""
