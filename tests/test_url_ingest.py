"""Indexing from URLs (a CSV with metadata, a list file) against a real local HTTP server.

Every way a URL can go wrong ends up as a recorded per-item reason; the good images are
cached so a re-run downloads nothing it already has.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import rows_by_source

from imagefinder import ImageFinder, build_index
from imagefinder.ingest.download import DownloadConfig, cache_path

GOOD = 8
MAX_BYTES = 150_000  # every UKBench JPEG is < 90 kB
TIMEOUT = 2.0  # the good URLs share it: 0.5 s left too little margin on a loaded 2-core CI machine

# name: (expected status, expected error prefix or None)
EXPECTED = {
    **{f"good{i}": ("ok", None) for i in range(GOOD)},
    "missing": ("failed", "HTTP 404"),
    "server-error": ("failed", "HTTP 500"),
    "slow": ("failed", f"timeout after {TIMEOUT:g}s"),
    "html": ("failed", "not an image: content-type text/html"),
    "oversize": ("failed", "too large"),
    "broken": ("failed", "corrupt or truncated image"),
}
REASONS = {
    "HTTP 404 Not Found": 1,
    "HTTP 500 Internal Server Error": 1,
    f"timeout after {TIMEOUT:g}s": 1,
    "not an image": 1,
    "too large": 1,
    "corrupt or truncated image": 1,
}


def _jpeg(ukbench_dir: Path, n: int) -> bytes:
    return (ukbench_dir / "images" / f"ukbench{n:05d}.jpg").read_bytes()


@pytest.fixture(scope="module")
def served(http_server, ukbench_dir: Path) -> dict[str, str]:
    """name -> URL, registered on the session server under /ingest/."""
    urls = {f"good{i}": http_server.route(f"/ingest/good{i}.jpg", _jpeg(ukbench_dir, i)) for i in range(GOOD)}
    urls["missing"] = http_server.url("/ingest/missing.jpg")  # not registered: the server answers 404
    urls["server-error"] = http_server.route("/ingest/error.jpg", b"oops", "text/plain", status=500)
    urls["slow"] = http_server.route("/ingest/slow.jpg", _jpeg(ukbench_dir, 8), delay=4 * TIMEOUT)
    urls["html"] = http_server.route("/ingest/page.jpg", b"<!doctype html><p>hello</p>", "text/html; charset=utf-8")
    urls["oversize"] = http_server.route("/ingest/huge.jpg", _jpeg(ukbench_dir, 9) + b"\0" * (2 * MAX_BYTES))
    full = _jpeg(ukbench_dir, 10)
    urls["broken"] = http_server.route("/ingest/broken.jpg", full[: len(full) // 2])
    return urls


@pytest.fixture(scope="module")
def url_csv(served: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("csv") / "photos.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["title", "image_url"])  # the URL column is not the first one
        for name, url in served.items():
            writer.writerow([f"Title of {name}, with a comma", url])
    return path


@pytest.fixture(scope="module")
def download_config(tmp_path_factory: pytest.TempPathFactory) -> DownloadConfig:
    return DownloadConfig(cache_dir=tmp_path_factory.mktemp("downloads"), timeout=TIMEOUT, retries=0,
                          max_bytes=MAX_BYTES, workers=4)


@pytest.fixture(scope="module")
def url_index(url_csv: Path, download_config: DownloadConfig, embedder, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("url-index") / "index"
    report = build_index([str(url_csv)], out, download=download_config, embedder=embedder, workers=4)
    return out, report


def test_each_url_gets_its_status_and_reason(url_index, served: dict[str, str]) -> None:
    out, report = url_index
    assert (report.items, report.indexed, report.failed) == (len(EXPECTED), GOOD, len(EXPECTED) - GOOD)
    rows = rows_by_source(out)
    assert set(rows) == set(served.values())
    for name, (status, reason) in EXPECTED.items():
        row = rows[served[name]]
        assert row["status"] == status, (name, row)
        if reason is None:
            assert row["error"] is None and row["width"] == 320 and row["height"] == 240
        else:
            assert row["error"].startswith(reason), (name, row["error"])


def test_metadata_columns_are_kept_for_every_row(url_index, served: dict[str, str]) -> None:
    out, _ = url_index
    rows = rows_by_source(out)
    for name, url in served.items():
        assert rows[url]["meta"] == {"title": f"Title of {name}, with a comma"}


def test_summary_counts_failure_reasons(url_index, served: dict[str, str]) -> None:
    out, report = url_index
    assert report.failure_reasons == REASONS
    assert {f["source"] for f in report.failures} == {served[n] for n, (s, _) in EXPECTED.items() if s == "failed"}
    f = ImageFinder(out)
    try:
        info = f.info()
        assert info["failure_reasons"] == REASONS
        assert info["counts"] == {**info["counts"], "items": len(EXPECTED), "indexed": GOOD, "failed": 6}
        assert len(info["failures"]) == 6 and all(x["error"] for x in info["failures"])
    finally:
        f.close()


def test_downloads_are_cached_under_the_url_hash(url_index, served: dict[str, str], download_config,
                                                 ukbench_dir: Path) -> None:
    out, _ = url_index
    rows = rows_by_source(out)
    for i in range(GOOD):
        url = served[f"good{i}"]
        cached = cache_path(url, download_config.cache_dir)
        assert rows[url]["cached_path"] == str(cached)
        assert cached.read_bytes() == _jpeg(ukbench_dir, i)
    for name in ("missing", "server-error", "slow", "html", "oversize"):
        assert not cache_path(served[name], download_config.cache_dir).exists(), name
    assert not list(Path(download_config.cache_dir).glob(".*.part")), "no partial downloads left"


def test_search_finds_the_url_image_with_its_metadata(url_index, served: dict[str, str], ukbench_dir: Path) -> None:
    out, _ = url_index
    f = ImageFinder(out)
    try:
        results = f.search(ukbench_dir / "images" / "ukbench00006.jpg", k=4)
        assert results[0].source == served["good6"] and results[0].score == pytest.approx(1.0, abs=1e-3)
        assert results[0].meta == {"title": "Title of good6, with a comma"}
        assert {r.source for r in results} == {served[f"good{i}"] for i in range(4, 8)}, "its UKBench group"
    finally:
        f.close()


def test_a_rerun_downloads_nothing_it_already_has(url_index, url_csv: Path, served: dict[str, str], http_server,
                                                  download_config, embedder, tmp_path: Path) -> None:
    def path_of(url: str) -> str:
        return url.removeprefix(http_server.base)

    before = {name: http_server.count(path_of(url)) for name, url in served.items()}
    assert all(before[f"good{i}"] == 1 for i in range(GOOD)), before
    assert before["server-error"] == 1, "retries=0: a 500 is tried once"
    report = build_index([str(url_csv)], tmp_path / "again", download=download_config, embedder=embedder)
    after = {name: http_server.count(path_of(url)) for name, url in served.items()}
    for i in range(GOOD):
        assert after[f"good{i}"] == before[f"good{i}"], f"good{i} was downloaded again"
    assert after["broken"] == before["broken"], "a downloaded-but-undecodable file is cached too"
    for name in ("missing", "server-error", "slow", "html", "oversize"):
        assert after[name] == before[name] + 1, f"failures are not cached: {name} is retried"
    assert (report.indexed, report.failed) == (GOOD, 6)
    assert report.failure_reasons == REASONS


def test_list_file_mixes_local_paths_and_urls(http_server, ukbench_dir: Path, embedder, tmp_path: Path,
                                              download_config) -> None:
    (tmp_path / "local.jpg").write_bytes(_jpeg(ukbench_dir, 20))
    url = http_server.route("/ingest/list/remote.jpg", _jpeg(ukbench_dir, 21))
    listing = tmp_path / "images.txt"
    listing.write_text(f"# my images\nlocal.jpg\n\n{url}\n  \n")
    report = build_index([str(listing)], tmp_path / "index", download=download_config, embedder=embedder)
    assert (report.items, report.indexed, report.failed) == (2, 2, 0)
    rows = rows_by_source(tmp_path / "index")
    assert set(rows) == {str((tmp_path / "local.jpg").resolve()), url}
    f = ImageFinder(tmp_path / "index")
    try:
        top = f.search(ukbench_dir / "images" / "ukbench00021.jpg", k=2)
        assert top[0].source == url and top[0].score == pytest.approx(1.0, abs=1e-3)
    finally:
        f.close()


def test_cli_search_with_a_url_query_prints_json(url_index, served: dict[str, str], http_server,
                                                 ukbench_dir: Path, cli) -> None:
    out, _ = url_index
    query_url = http_server.route("/ingest/query/x.jpg", _jpeg(ukbench_dir, 2))
    proc = cli("search", out, query_url, "-k", "3", "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    assert payload["query"]["type"] == "url" and payload["query"]["url"] == query_url
    results = payload["results"]
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert results[0]["source"] == served["good2"] and results[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert results[0]["meta"] == {"title": "Title of good2, with a comma"}
    assert http_server.count("/ingest/query/x.jpg") == 1


def test_cli_public_urls_only_refuses_a_local_server(served: dict[str, str], cli, tmp_path: Path) -> None:
    listing = tmp_path / "urls.txt"
    listing.write_text(served["good0"] + "\n")
    proc = cli("index", listing, "--out", tmp_path / "idx", "--json", "-q", "--public-urls-only")
    assert proc.returncode == 1, proc.stderr  # ran, indexed nothing
    summary = json.loads(proc.stdout)
    assert summary["failed"] == 1 and list(summary["failure_reasons"]) == ["refused"], summary
    info = json.loads(cli("info", tmp_path / "idx", "--json").stdout)
    assert "private address" in info["failures"][0]["error"] and "loopback" in info["failures"][0]["error"]


def test_cli_search_with_a_failing_url_query_exits_2(url_index, served: dict[str, str], cli) -> None:
    out, _ = url_index
    proc = cli("search", out, served["missing"], "--json", "-q")
    assert proc.returncode == 2
    assert "HTTP 404" in proc.stderr and served["missing"] in proc.stderr
    # --json: one line per query, a failure in its place (SearchFailure), nothing else
    (line,) = proc.stdout.splitlines()
    failure = json.loads(line)
    assert failure["query"]["url"] == served["missing"] and "HTTP 404" in failure["error"] and "results" not in failure


def test_csv_without_header_and_csv_of_relative_paths(url_index, served: dict[str, str], http_server, ukbench_dir,
                                                      download_config, embedder, tmp_path: Path) -> None:
    # no header row: the first column holds the locations; already-cached URLs are not fetched again
    bare = tmp_path / "bare.csv"
    bare.write_text(f"{served['good0']},first\n{served['good1']},second\n")
    before = http_server.count("/ingest/good0.jpg")
    report = build_index([str(bare)], tmp_path / "bare-index", download=download_config, embedder=embedder)
    assert (report.items, report.indexed) == (2, 2)
    assert http_server.count("/ingest/good0.jpg") == before
    assert set(rows_by_source(tmp_path / "bare-index")) == {served["good0"], served["good1"]}
    # local paths in a CSV are relative to the CSV's own folder; other columns become metadata
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.jpg").write_bytes(_jpeg(ukbench_dir, 30))
    listing = tmp_path / "pics.csv"
    listing.write_text("caption,url\nhello,pics/a.jpg\n")
    report = build_index([str(listing)], tmp_path / "local-index", embedder=embedder)
    assert (report.items, report.indexed) == (1, 1)
    rows = rows_by_source(tmp_path / "local-index")
    assert list(rows) == [str((tmp_path / "pics" / "a.jpg").resolve())]
    assert next(iter(rows.values()))["meta"] == {"caption": "hello"}
