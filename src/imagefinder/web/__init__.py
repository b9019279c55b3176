"""The ImageFinder web page (Flask): one page to search by dropping, pasting, picking or linking an image.

    python -m imagefinder.web                      # http://127.0.0.1:5000, API at $IMAGEFINDER_API_URL
    python -m imagefinder.web --api-url http://127.0.0.1:8000 --port 5000

The page's script talks to the API through this server (`/api/...` is forwarded to the API
URL) rather than calling the API from the browser. One origin means no CORS set-up, the API
may listen where only this server can reach it, and the page keeps working when it is opened
from another device (a phone on the LAN would resolve "127.0.0.1:8000" to itself). When the
API is down, the forwarder answers 502 with a sentence the page shows as it is.
`proxy=False` makes the page call the API URL directly instead (the API then needs CORS for
this page's origin: IMAGEFINDER_CORS_ORIGINS).

Changes to the index (POST /images, DELETE) pass the page's own cross-site check first (a page
of another origin is refused with 403: see imagefinder.access), then go to the API with the
browser's `Authorization` header and `X-Forwarded-For` / `X-Forwarded-Host`, so the API applies
its token / this-machine-only rule to the browser, not to this forwarder.

Everything the page needs (HTML, CSS, JS, icons) is served from this package: no CDN, no build step.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

import httpx
from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from ..access import AccessDenied, WriteRequest, cross_site
from .settings import DEFAULT_API_URL, WebSettings

__all__ = ["DEFAULT_API_URL", "create_app", "main"]

log = logging.getLogger(__name__)

_FORWARDED_PATH = re.compile(r"^(search(/batch|/matches)?|stats|health|duplicates|images(/\d{1,16}(/thumbnail|/info)?)?)$")
_READS = ("search", "search/batch", "search/matches")  # POSTs that change nothing
_RESPONSE_HEADERS = ("content-type", "cache-control", "etag", "last-modified", "www-authenticate")


def create_app(api_url: str | None = None, *, proxy: bool = True, timeout: float = 60.0,
               max_body_bytes: int | None = None) -> Flask:
    """The Flask app serving the page; `api_url` is the ImageFinder API it searches with."""
    settings = WebSettings()
    api_url = (api_url or settings.api_url).rstrip("/")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes or settings.max_body_bytes
    app.config["API_URL"] = api_url
    # Idle connections are dropped before the API's own keep-alive timeout (uvicorn: 5 s), so a
    # request never goes out on a connection the API is closing at that moment.
    client = httpx.Client(base_url=api_url, timeout=httpx.Timeout(timeout, connect=5.0), trust_env=False,
                          limits=httpx.Limits(max_connections=64, max_keepalive_connections=16,
                                              keepalive_expiry=2.0))
    app.extensions["imagefinder_client"] = client

    @app.get("/")
    def index() -> str:
        return render_template("index.html", api_base="api" if proxy else api_url, api_url=api_url,
                               docs_url=f"{api_url}/docs")

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.route("/api/<path:sub>", methods=["GET", "POST", "DELETE"])
    def forward(sub: str) -> Response:
        if not proxy:
            return _error(404, "this page calls the API directly; /api/ is not forwarded")
        if not _FORWARDED_PATH.match(sub):
            return _error(404, f"no such API endpoint: /{sub}")
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
        if request.method != "GET" and sub not in _READS:
            try:
                headers.update(_write_headers())
            except AccessDenied as exc:
                return _error(exc.status, str(exc))
        body = request.get_data(cache=False) if request.method == "POST" else None
        try:
            upstream = client.request(request.method, f"/{sub}", params=request.args.to_dict(flat=False),
                                      content=body, headers=headers)
        except httpx.TimeoutException:
            return _error(504, f"the search API at {api_url} did not answer in time; try again, or check its log")
        except httpx.TransportError:
            return _error(502, f"the search API at {api_url} is not reachable: is it running? Start it with "
                               "`python -m imagefinder.api` (or `make run` for both)")
        out = Response(upstream.content, status=upstream.status_code)
        for name in _RESPONSE_HEADERS:
            if name in upstream.headers:
                out.headers[name] = upstream.headers[name]
        return out

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if exc.code == 413:
            limit = app.config["MAX_CONTENT_LENGTH"]
            return _error(413, f"the upload is too large: the limit is {limit / 1024 / 1024:.0f} MB; "
                               "send a smaller image")
        if request.path.startswith("/api/"):
            return _error(exc.code or 500, exc.description or exc.name)
        return exc  # type: ignore[return-value]

    return app


def _write_headers() -> dict[str, str]:
    """What a write forwards about the browser, after refusing it if it comes from a foreign page."""
    seen = WriteRequest(client=request.remote_addr, scheme=request.scheme,
                        headers={k.lower(): v for k, v in request.headers.items()})
    foreign = cross_site(seen)
    if foreign:
        raise AccessDenied(403, f"cross-site request refused: {foreign}; changes to the index are accepted only "
                                "from this page itself")
    out = {"X-Forwarded-For": ", ".join(a for a in (request.headers.get("X-Forwarded-For"), request.remote_addr) if a),
           "X-Forwarded-Host": request.host}
    if request.headers.get("Authorization"):
        out["Authorization"] = request.headers["Authorization"]
    return out


def _error(status: int, detail: str) -> Response:
    response = jsonify(detail=detail)
    response.status_code = status
    return response


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m imagefinder.web",
                                description="Serve the ImageFinder web page (it searches with the ImageFinder API).")
    p.add_argument("--api-url", default=WebSettings().api_url,
                   help=f"the API to search with (default: $IMAGEFINDER_API_URL, else {DEFAULT_API_URL})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument("--no-proxy", action="store_true",
                   help="let the browser call the API directly (the API must allow this page's origin via CORS)")
    p.add_argument("--debug", action="store_true", help="Flask debug mode (reloader; never on a shared network)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per forwarded request is noise
    app = create_app(args.api_url, proxy=not args.no_proxy)
    print(f"ImageFinder web page on http://{args.host}:{args.port}  (API: {args.api_url})", file=sys.stderr,
          flush=True)
    app.run(host=args.host, port=args.port, debug=args.debug, threaded=True, use_reloader=args.debug)
    return 0

