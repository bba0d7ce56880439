"""The web chat page of `corral serve`: static files (no build step, no CDN)."""
