"""`corral serve`: OpenAI-compatible HTTP server (see app.py for the routes)."""
