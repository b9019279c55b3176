"""Completion-order ingest: one slow URL holds one worker, never the run; ids stay in input order.

300 good URLs on the session's HTTP server (and one answering 503 with ``Retry-After: 3600``)
plus, first in the input, one URL that trickles a
byte every 0.1 s (no read timeout ever fires) and one that goes silent after its headers, on a
raw server on 127.0.0.1 (tests/badcorpus.py). Both keep their connections until every good
image has been handed to the pipeline, then hang up, so each ends as a failure. Consumed in
input order (before), the pipeline waited on the first slow URL while its workers idled, and
the good images were only handed on after it (here: after the server's 30 s safety cap). How
long each run takes is measured by benchmarks/slow_urls.py, never asserted here.
"""

from __future__ import annotations

import threading
from pathlib import Path

from badcorpus import MisbehavingServer
from conftest import rows_by_source, ukbench_image

from imagefinder import build_index
from imagefinder.ingest.download import DownloadConfig
from imagefinder.ingest.stages import Loaded
from imagefinder.runners.local import LocalRunner

GOOD = 300
SLOW = 2  # trickle + silent, first in the input
TIMEOUT = 60.0  # longer than the good work: only the test server's hang-up ends the slow ones


class Watching:
    """LocalRunner, noting the order items are handed on; once every good one is, the slow server hangs up."""

    def __init__(self, raw: MisbehavingServer) -> None:
        self.raw = raw
        self.order: list[int] = []
        self.lock = threading.Lock()

    def run(self, items, first_id, embedder, download, batch_size, on_loaded, progress):
        def watch(x: Loaded) -> None:
            with self.lock:
                self.order.append(x.record.id)
                if sum(i >= SLOW for i in self.order) == GOOD + 1:  # the good ones and the 503
                    self.raw.stopping.set()
            on_loaded(x)

        return LocalRunner(workers=16).run(items, first_id, embedder, download, batch_size, watch, progress)


def test_slow_urls_hold_one_worker_each_and_ids_keep_the_input_order(
        ukbench_dir: Path, http_server, embedder, tmp_path: Path) -> None:
    photos = [ukbench_image(ukbench_dir, n).read_bytes() for n in range(40)]
    good = [http_server.route(f"/order/{n}.jpg", photos[n % len(photos)]) for n in range(GOOD)]
    busy = http_server.route("/order/busy.jpg", b"come back in an hour", "text/plain", status=503,
                             headers={"Retry-After": "3600"})
    with MisbehavingServer(photos[0]) as raw:
        sources = [raw.base + "/slowloris.jpg", raw.base + "/stall.jpg", *good[:150], busy, *good[150:]]
        listing = tmp_path / "urls.txt"
        listing.write_text("\n".join(sources) + "\n")
        watching = Watching(raw)
        download = DownloadConfig(cache_dir=tmp_path / "cache", timeout=TIMEOUT, workers=16)
        report = build_index([str(listing)], tmp_path / "index", embedder=embedder, download=download,
                             runner=watching)

    slow_at = [watching.order.index(i) for i in range(SLOW)]
    assert min(slow_at) >= GOOD + 1, f"a slow URL was handed on at position {min(slow_at)}, before good ones"
    rows = rows_by_source(tmp_path / "index")
    assert [rows[s]["id"] for s in sources] == list(range(len(sources))), "ids are not in input order"
    assert report.indexed == GOOD and report.failed == SLOW + 1
    assert rows[sources[0]]["status"] == "failed" and rows[sources[1]]["status"] == "failed"
    assert "not a recognised image format" in rows[sources[0]]["error"]  # the trickle: 16 bytes + zeros
    assert "incomplete download" in rows[sources[1]]["error"]  # 0 of its 5000 promised bytes
    assert rows[busy]["error"] == ("HTTP 503 Service Unavailable: Retry-After 3600s, longer than the 30s a fetch "
                                   "waits")
    assert http_server.count("/order/busy.jpg") == 1, "a Retry-After of an hour was waited for (and retried)"


def test_a_retry_after_of_an_hour_is_recorded_not_waited_for(http_server, tmp_path: Path) -> None:
    from imagefinder.ingest.download import Downloader

    url = http_server.route("/order/busy-alone.jpg", b"later", "text/plain", status=429,
                            headers={"Retry-After": "3600"})
    with Downloader(DownloadConfig(cache_dir=tmp_path, retries=3)) as d:
        result = d.fetch(url)
    assert result.error is not None and result.error.startswith("HTTP 429 Too Many Requests: Retry-After 3600s")
    assert http_server.count("/order/busy-alone.jpg") == 1


def test_completion_map_hands_on_what_finished_and_says_when_the_rest_is_idle() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from imagefinder.runners.local import IDLE, batched, completion_map

    release = threading.Event()

    def work(i: int) -> int:
        if i == 0:
            release.wait(30)  # the slow peer
        return i

    with ThreadPoolExecutor(max_workers=4) as pool:
        stream = completion_map(work, range(10), pool, ahead=8, idle=0.2)
        seen = []
        for out in stream:
            seen.append(out)
            if out is IDLE:
                release.set()
    results = [x for x in seen if x is not IDLE]
    assert sorted(results) == list(range(10)) and results[-1] == 0, seen  # 0 last: nothing waited on it
    assert IDLE in seen[:seen.index(0)]
    assert list(batched([1, 2, IDLE, IDLE, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
