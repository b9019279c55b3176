"""Seed-compatible entry point: `cd api && uvicorn app:app --reload` (docs at http://127.0.0.1:8000/docs).

All the code lives in the package (`imagefinder.api`); the index comes from $IMAGEFINDER_INDEX,
else the built-in sample index (built on first run).
"""

from imagefinder.api import app

__all__ = ["app"]
