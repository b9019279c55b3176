"""Property-based API testing: schemathesis generates requests from the app's own OpenAPI schema.

Every operation (search, images, add, delete, stats, health) gets bounded numbers of valid and
invalid requests, sent over a real socket to uvicorn on 127.0.0.1; no answer may be a 5xx, and
documented answers must match their schema and content type. The server runs on a throwaway
copy of the sample index (DELETE and POST /images really change it), and URL fetching is cut
off from the network: generated URLs are checked by the real SSRF rules, then any connection
is refused and hostnames are never looked up, so no generated address is ever contacted.

The operations, checks and set-up are shared with `benchmarks/fuzz.py --targets api` (tests/fuzzing.py),
which runs the same fuzzing for a fixed time; the total number of requests sent is reported here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis")
from fuzzing import (
    API_CASES,
    OPERATIONS,
    api_case_id,
    api_settings,
    api_strategy,
    build_api_index,
    check_api_case,
    offline_urls,
)
from hypothesis import HealthCheck, given, settings

from imagefinder.api import create_app
from imagefinder.api.testing import ServerThread, start_asgi

MAX_EXAMPLES = 30


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    with offline_urls():
        yield


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, embedder, offline) -> Iterator[ServerThread]:
    index = build_api_index(tmp_path_factory.mktemp("schema-sample"), embedder)
    server = start_asgi(create_app(index, api_settings()))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api_schema(api: ServerThread):
    return schemathesis.openapi.from_url(f"{api.url}/openapi.json")


@pytest.fixture(scope="module")
def requests_made(request: pytest.FixtureRequest) -> Iterator[dict[str, int]]:
    """Requests sent per case; the total is reported at the end of the module (the README quotes it)."""
    counts: dict[str, int] = {}
    yield counts
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and counts:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nAPI schema fuzzing: {sum(counts.values())} requests over {len(counts)} "
                                f"cases (max_examples={MAX_EXAMPLES} per case)")


def test_the_list_covers_every_operation_in_the_schema(api_schema) -> None:
    documented = set()
    for result in api_schema.get_all_operations():
        operation = result.ok()
        documented.add((operation.method.upper(), operation.path))
    assert documented == {(method, path) for method, path, _ in OPERATIONS}


@pytest.mark.parametrize("method, path, media_type, mode", API_CASES, ids=[api_case_id(*c) for c in API_CASES])
def test_no_server_errors(api_schema, requests_made: dict[str, int], method: str, path: str,
                          media_type: str | None, mode: str) -> None:
    case_id = api_case_id(method, path, media_type, mode)
    requests_made[case_id] = 0

    @given(case=api_strategy(api_schema, method, path, media_type, mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        requests_made[case_id] += 1
        check_api_case(case)

    check()
    assert requests_made[case_id] > 0, "no request was generated"
