"""Tools on model files: info (and later quantize, perplexity, bench)."""
