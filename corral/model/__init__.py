"""The Llama transformer in plain PyTorch: no I/O, no format branches."""
