"""Quantization schemes: type tables and dequantization (see ggml_types, legacy, kquants)."""
