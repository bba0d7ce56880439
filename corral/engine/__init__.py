"""The engine works on token ids only: prefill, decode, stop conditions."""
