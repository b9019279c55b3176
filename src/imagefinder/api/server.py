"""`python -m imagefinder.api`: flags over the IMAGEFINDER_* settings, then uvicorn until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..access import is_loopback_bind
from .settings import INDEX_VAR, Settings, SettingsError, env_name

EXPOSED_READ_ONLY = ("it listens on {host}, beyond this machine, without IMAGEFINDER_API_TOKEN; set a token "
                     "to accept changes")


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
    p.add_argument("--read-only", action="store_true", default=None,
                   help="refuse every change to the index (same as IMAGEFINDER_READ_ONLY=1)")
    p.add_argument("--reload", action="store_true", help="restart on code changes (development)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn treats slow clients. Its own options cover idle keep-alive connections and header
    size (h11's 16 KB); it has no timeout for headers that trickle in, so our protocol adds one.
    Slow bodies are timed out by the app (`read_body`, IMAGEFINDER_BODY_TIMEOUT)."""
    return {"http": header_timeout_protocol(settings.header_timeout), "timeout_keep_alive": 15,
            "h11_max_incomplete_event_size": 16 * 1024}


def header_timeout_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request headers take more than `seconds`
    (from the connection, or from the first byte of the next request on a kept-alive one)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the headers are in: the app times the body
                self._disarm()
            elif self._header_timer is None:  # the first bytes of the next request on a kept-alive one
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(seconds, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol


def settings_from_args(args: argparse.Namespace) -> Settings:
    changes: dict[str, Any] = {}
    if args.index is not None:
        changes["index_dir"] = args.index
    if args.max_upload_mb is not None:
        changes["max_upload_bytes"] = int(args.max_upload_mb * 1024 * 1024)
    if args.allow_private_urls:
        changes["allow_private_urls"] = True
    if args.cors_origins is not None:
        changes["cors_origins"] = args.cors_origins  # parsed like $IMAGEFINDER_CORS_ORIGINS
    if args.read_only:
        changes["read_only"] = True
    return guard_exposed(Settings.from_env().with_changes(**changes), args.host)


def guard_exposed(settings: Settings, host: str) -> Settings:
    """A server listening beyond this machine without a token serves searches only (read-only)."""
    if is_loopback_bind(host) or settings.token is not None or settings.read_only:
        return settings
    print(f"imagefinder api: warning: read-only: {EXPOSED_READ_ONLY.format(host=host)}", file=sys.stderr)
    return settings.with_changes(read_only=True, read_only_reason=EXPOSED_READ_ONLY.format(host=host))


def serve_main(argv: list[str] | None = None) -> int:
    """Command-line entry point: parse flags, open the index, run uvicorn until Ctrl-C."""
    import uvicorn

    from .factory import create_app

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
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, **uvicorn_options(settings))
    return 0


def _export(settings: Settings) -> None:
    if settings.index_dir is not None:
        os.environ[INDEX_VAR] = str(settings.index_dir)
    os.environ[env_name("max_upload_bytes")] = str(settings.max_upload_bytes)
    os.environ[env_name("allow_private_urls")] = "1" if settings.allow_private_urls else "0"
    os.environ[env_name("cors_origins")] = ",".join(settings.cors_origins)
    os.environ[env_name("read_only")] = "1" if settings.read_only else "0"
    os.environ[env_name("read_only_reason")] = settings.read_only_reason
