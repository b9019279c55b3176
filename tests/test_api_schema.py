"""Property-based API testing: schemathesis generates requests from the app's own OpenAPI schema.

Every operation (search, images, add, delete, stats, health) gets bounded numbers of valid and
invalid requests, sent over a real socket to uvicorn on 127.0.0.1; no answer may be a 5xx, and
documented answers must match their schema and content type. The server runs on a throwaway
copy of the sample index (DELETE and POST /images really change it), and URL fetching is cut
off from the network: generated URLs are checked by the real SSRF rules, then any connection
is refused and hostnames are never looked up, so no generated address is ever contacted.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis")
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from imagefinder import netsafe
from imagefinder.api import Settings, create_app
from imagefinder.api.testing import ServerThread, start_asgi

MAX_EXAMPLES = 30


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    """Generated URLs pass through the real checks, but nothing is resolved or contacted."""
    import ipaddress

    def resolve(host: str, port: int) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]  # IP literals are checked as they are
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, "name lookups are disabled in this test") from None

    def no_connection(*args, **kwargs):
        raise netsafe.FetchError("connections are disabled in this test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(netsafe, "resolve_host", resolve)
        mp.setattr(netsafe, "_get_pinned", no_connection)
        yield


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, embedder, offline) -> Iterator[ServerThread]:
    from imagefinder import build_index
    from imagefinder.sample import write_sample

    root = tmp_path_factory.mktemp("schema-sample")
    images, _query = write_sample(root / "images")
    build_index([str(images)], root / "index", embedder=embedder, workers=4)
    server = start_asgi(create_app(root / "index", Settings(max_upload_bytes=512 * 1024, max_pixels=1_000_000)))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api_schema(api: ServerThread):
    return schemathesis.openapi.from_url(f"{api.url}/openapi.json")


# Every operation, with each request body type it accepts. (schemathesis.pytest.from_fixture would
# generate this list itself, but its lazy loader does not work with pytest 9.)
OPERATIONS = [
    ("POST", "/search", "application/json"),
    ("POST", "/search", "multipart/form-data"),
    ("POST", "/images", "application/json"),
    ("POST", "/images", "multipart/form-data"),
    ("GET", "/images/{image_id}", None),
    ("GET", "/images/{image_id}/thumbnail", None),
    ("GET", "/images/{image_id}/info", None),
    ("DELETE", "/images/{image_id}", None),
    ("GET", "/stats", None),
    ("GET", "/health", None),
]
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def test_the_list_covers_every_operation_in_the_schema(api_schema) -> None:
    documented = set()
    for result in api_schema.get_all_operations():
        operation = result.ok()
        documented.add((operation.method.upper(), operation.path))
    assert documented == {(method, path) for method, path, _ in OPERATIONS}


# Negative (schema-violating) requests need something to violate: /stats and /health take no input.
CASES = [(m, p, t, mode) for m, p, t in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode is GenerationMode.POSITIVE or p not in ("/stats", "/health")]


@pytest.mark.parametrize("method, path, media_type, mode", CASES,
                         ids=[f"{m} {p} {t or ''} {mode.value}".replace("  ", " ") for m, p, t, mode in CASES])
def test_no_server_errors(api_schema, method: str, path: str, media_type: str | None, mode: GenerationMode) -> None:
    operation = api_schema[path][method]
    kwargs = {"media_type": media_type} if media_type else {}
    strategy = operation.as_strategy(generation_mode=mode, **kwargs)

    @given(case=strategy)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=60)

    check()
