"""The ImageFinder REST API (FastAPI): search, images, add/remove, stats, health.

    uvicorn imagefinder.api:app            # index from $IMAGEFINDER_INDEX, else the built-in sample
    python -m imagefinder.api --index DIR  # the same, with flags (see --help)

    from imagefinder.api import create_app, Settings
    app = create_app("my-index", Settings(allow_private_urls=True))

`app` is built on first access (importing this package loads nothing heavy), from the
environment variables documented in `imagefinder.api.settings`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .settings import Settings, SettingsError, default_index

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["Settings", "SettingsError", "app", "create_app", "default_index", "serve_main"]

_app: FastAPI | None = None
_app_lock = threading.Lock()


def create_app(index_dir: Path | str | None = None, settings: Settings | None = None, **kwargs: Any) -> FastAPI:
    from .service import create_app as _create

    return _create(index_dir, settings, **kwargs)


def __getattr__(name: str) -> Any:
    """`imagefinder.api.app`: the app for the environment's settings, built once on first use."""
    global _app
    if name == "app":
        with _app_lock:
            if _app is None:
                _app = create_app()
            return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m imagefinder.api", description="Serve the ImageFinder REST API "
                                "(OpenAPI docs at /docs). Flags override the IMAGEFINDER_* environment variables.")
    p.add_argument("--index", type=Path, metavar="DIR",
                   help="index directory (default: $IMAGEFINDER_INDEX, else the built-in sample index)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-upload-mb", type=float, metavar="MB", help="largest upload or URL download (default 20)")
    p.add_argument("--allow-private-urls", action="store_true", default=None,
                   help="let {\"url\": ...} reach localhost and private networks (only for a local server)")
    p.add_argument("--cors-origins", metavar="LIST",
                   help="comma-separated origins allowed to call the API from browsers ('*' for any)")
    p.add_argument("--reload", action="store_true", help="restart on code changes (development)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    changes: dict[str, Any] = {}
    if args.index is not None:
        changes["index_dir"] = args.index
    if args.max_upload_mb is not None:
        changes["max_upload_bytes"] = int(args.max_upload_mb * 1024 * 1024)
    if args.allow_private_urls:
        changes["allow_private_urls"] = True
    if args.cors_origins is not None:
        changes["cors_origins"] = tuple(o.strip() for o in args.cors_origins.split(",") if o.strip())
    return replace(settings, **changes)


def serve_main(argv: list[str] | None = None) -> int:
    """Command-line entry point: parse flags, open the index, run uvicorn until Ctrl-C."""
    import uvicorn

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
        if args.reload:  # uvicorn re-imports the app in a child: pass the settings through the environment
            _export(settings)
            uvicorn.run("imagefinder.api:app", host=args.host, port=args.port, reload=True, log_level=args.log_level)
            return 0
        app = create_app(settings=settings)
    except (SettingsError, OSError, ValueError, RuntimeError) as exc:
        print(f"imagefinder api: error: {exc}", file=sys.stderr)
        return 2
    print(f"ImageFinder API on http://{args.host}:{args.port}  (docs: http://{args.host}:{args.port}/docs)",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_keep_alive=15)
    return 0


def _export(settings: Settings) -> None:
    if settings.index_dir is not None:
        os.environ["IMAGEFINDER_INDEX"] = str(settings.index_dir)
    os.environ["IMAGEFINDER_MAX_UPLOAD_BYTES"] = str(settings.max_upload_bytes)
    os.environ["IMAGEFINDER_ALLOW_PRIVATE_URLS"] = "1" if settings.allow_private_urls else "0"
    os.environ["IMAGEFINDER_CORS_ORIGINS"] = ",".join(settings.cors_origins)
