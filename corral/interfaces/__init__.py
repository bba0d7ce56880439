"""User-facing entry points: Python API and CLI."""
