"""Readers of checkpoint files: they know bytes and metadata, never the model."""
