"""The ImageFinder REST API (FastAPI): search, images, add/remove, stats, health.

    uvicorn imagefinder.api:app            # index from $IMAGEFINDER_INDEX, else the built-in sample
    python -m imagefinder.api --index DIR  # the same, with flags (see --help)

    from imagefinder.api import create_app, Settings
    app = create_app("my-index", Settings(allow_private_urls=True))

`app` is built on first access (importing this package loads nothing heavy), from the
environment variables documented in `imagefinder.api.settings`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .sample_index import default_index
from .settings import Settings, SettingsError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..finder import ImageFinder

__all__ = ["Settings", "SettingsError", "app", "create_app", "default_index", "serve_main"]

_app: FastAPI | None = None
_app_lock = threading.Lock()


def create_app(index_dir: Path | str | None = None, settings: Settings | None = None,
               finder: ImageFinder | None = None) -> FastAPI:
    """See `imagefinder.api.factory.create_app` (imported here on first call: FastAPI is heavy)."""
    from .factory import create_app as _create

    return _create(index_dir, settings, finder)


def serve_main(argv: list[str] | None = None) -> int:
    from .server import serve_main as _main

    return _main(argv)


def __getattr__(name: str) -> Any:
    """`imagefinder.api.app`: the app for the environment's settings, built once on first use."""
    global _app
    if name == "app":
        with _app_lock:
            if _app is None:
                _app = create_app()
            return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
