"""Crash safety: interrupted builds resume, and kill -9 never costs the previous index.

The unit tests interrupt a build in-process (an exception part-way) and stage the debris a
crash leaves; the trial tests kill real processes - `imagefinder index` and the API during
adds/deletes - with SIGKILL at random points, then check that the index on disk opens,
searches and holds exactly what was acknowledged. Trials are bounded and seeded:
IMAGEFINDER_CRASH_TRIALS (default 10 per kind) and IMAGEFINDER_CRASH_SEED set them; each
trial's outcome is written to test-artifacts/crash-trials-*.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import REPO, ukbench_image

from imagefinder import build_index
from imagefinder.api.testing import free_port
from imagefinder.embed import Embedder
from imagefinder.finder import ImageFinder
from imagefinder.index import EMBEDDINGS, ArtifactWriter, IndexError_, Store
from imagefinder.ingest.download import cache_path
from imagefinder.ingest.journal import Journal
from imagefinder.ingest.sources import Item
from imagefinder.serve import wait_ready

# end-to-end: `make test-fast` leaves these out, `make test` (CI) runs them
pytestmark = pytest.mark.slow

TRIALS = int(os.environ.get("IMAGEFINDER_CRASH_TRIALS", "10"))
SEED = int(os.environ.get("IMAGEFINDER_CRASH_SEED", "7"))
ARTIFACTS = REPO / "test-artifacts"


def _copy_ukbench(ukbench_dir: Path, numbers: range, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        shutil.copyfile(ukbench_image(ukbench_dir, n), dest / f"ukbench{n:05d}.jpg")
    return dest


def _embeddings(index: Path) -> np.ndarray:
    manifest = json.loads((index / "manifest.json").read_text())
    return np.fromfile(index / EMBEDDINGS, np.float16)[: manifest["rows"] * manifest["embedding_dim"]].reshape(
        manifest["rows"], manifest["embedding_dim"])


def _sources(index: Path) -> list[str]:
    store = Store(index)
    try:
        return sorted(store.ids_by_source())
    finally:
        store.close()


def _searches(index: Path) -> None:
    """The index opens and a search by its first live image finds that image first."""
    finder = ImageFinder(index)
    try:
        first = int(finder.store.live_ids(limit=None)[0])
        assert finder.search_id(first, k=3)[0].id == first
    finally:
        finder.close()


def _write_report(name: str, rows: list[dict]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"crash-trials-{name}.json").write_text(json.dumps(rows, indent=1))


# --- resume and debris, in-process ----------------------------------------------------------


class CountingEmbedder(Embedder):
    """The session embedder, counting the images it embeds and failing after `fail_after` batches."""

    def __init__(self, base: Embedder, fail_after: int | None = None) -> None:
        self.__dict__.update(base.__dict__)
        self.embedded = 0
        self.batches = 0
        self.fail_after = fail_after

    def embed_prepared(self, batch):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt  # what Ctrl-C raises in the middle of a build
        self.batches += 1
        self.embedded += len(batch)
        return super().embed_prepared(batch)


def test_an_interrupted_build_resumes_without_embedding_again(ukbench_dir: Path, embedder, tmp_path: Path) -> None:
    images = _copy_ukbench(ukbench_dir, range(20), tmp_path / "images")
    out = tmp_path / "idx"
    interrupted = CountingEmbedder(embedder, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        build_index([str(images)], out, embedder=interrupted, batch_size=4, workers=2)
    assert not out.exists(), "nothing is committed by an interrupted first build"
    journal = tmp_path / ".idx.journal.sqlite"
    assert journal.is_file(), "the finished part is journalled beside the index"

    resumed = CountingEmbedder(embedder)
    report = build_index([str(images)], out, embedder=resumed, batch_size=4, workers=2)
    assert report.resumed == interrupted.embedded == 8
    assert resumed.embedded == 20 - 8, "only the rest is embedded"
    assert (report.items, report.indexed) == (20, 20)
    assert sorted(os.listdir(tmp_path)) == ["idx", "images"], "journal and staging dirs are gone after the commit"

    reference = build_index([str(images)], tmp_path / "ref", embedder=embedder, batch_size=4, workers=2)
    assert reference.resumed == 0
    np.testing.assert_array_equal(_embeddings(out), _embeddings(tmp_path / "ref"))
    assert sorted(p.name for p in (out / "thumbs").iterdir()) == sorted(p.name for p in (tmp_path / "ref/thumbs").iterdir())
    _searches(out)


def test_a_journal_is_only_used_for_the_same_model_and_unchanged_files(ukbench_dir: Path, tmp_path: Path) -> None:
    images = _copy_ukbench(ukbench_dir, range(2), tmp_path / "images")
    items = [Item(str(p)) for p in sorted(images.iterdir())]
    from imagefinder.index import Record

    journal = Journal(tmp_path / "j.sqlite", "model-a", dim=3)
    for item in items:
        journal.add(item, Record(id=0, source=item.source), np.ones(3, np.float32), None)
    journal.close()
    assert set(Journal(tmp_path / "j.sqlite", "model-a", dim=3).finished(items)) == {0, 1}
    os.utime(items[1].source, ns=(1, 1))  # the file changed after it was embedded
    assert set(Journal(tmp_path / "j.sqlite", "model-a", dim=3).finished(items)) == {0}
    assert Journal(tmp_path / "j.sqlite", "model-b", dim=3).finished(items) == {}, "another model's journal is dropped"
    assert Journal(tmp_path / "j.sqlite", "model-a", dim=3).finished(items) == {}


def test_an_unreadable_journal_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "j.sqlite").write_bytes(b"not a database" * 100)
    journal = Journal(tmp_path / "j.sqlite", "model-a", dim=3)
    assert len(journal) == 0
    journal.close()


def test_a_crash_between_the_swap_renames_keeps_the_previous_index(ukbench_dir: Path, embedder, tmp_path: Path) -> None:
    images = _copy_ukbench(ukbench_dir, range(8), tmp_path / "images")
    out = tmp_path / "idx"
    build_index([str(images)], out, embedder=embedder)
    before = (out / "manifest.json").read_bytes()
    # What swap_into_place leaves when killed after its first rename: the old index moved
    # aside, the new one still in its staging directory.
    os.rename(out, tmp_path / ".idx.old-deadbeef")
    (tmp_path / ".idx.tmp-cafe0000" / "thumbs").mkdir(parents=True)
    _searches(out)  # a reader puts the previous index back
    assert (out / "manifest.json").read_bytes() == before
    build_index([str(images)], out, embedder=embedder)
    assert sorted(os.listdir(tmp_path)) == ["idx", "images"], "the next build clears the debris"


def test_readers_roll_back_the_transaction_of_a_killed_writer(ukbench_dir: Path, embedder, tmp_path: Path) -> None:
    images = _copy_ukbench(ukbench_dir, range(8), tmp_path / "images")
    out = tmp_path / "idx"
    build_index([str(images)], out, embedder=embedder)
    before = _sources(out)
    # A writer killed mid-transaction, after SQLite spilled changed pages into the file: a hot journal.
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sqlite3, sys; con = sqlite3.connect(sys.argv[1]); con.execute('PRAGMA cache_size=1');"
        "con.execute('BEGIN'); con.execute(\"UPDATE items SET source = 'x' || hex(randomblob(2000))\");"
        "os.kill(os.getpid(), signal.SIGKILL)"), str(out / "items.sqlite")], check=False, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert (out / "items.sqlite-journal").is_file(), "the kill left a hot journal"
    assert _sources(out) == before, "a read-only reader sees the committed rows"
    _searches(out)


def test_two_builds_into_one_directory_are_refused(tmp_path: Path) -> None:
    first = ArtifactWriter(tmp_path / "idx")
    try:
        with pytest.raises(IndexError_, match="another build is writing"):
            ArtifactWriter(tmp_path / "idx")
    finally:
        first.abort()
    ArtifactWriter(tmp_path / "idx").abort()  # released: a new build may start
    assert os.listdir(tmp_path) == []


# --- kill -9 during `imagefinder index` -----------------------------------------------------


def _index_command(sources: list[Path], out: Path) -> list[str]:
    return [sys.executable, "-m", "imagefinder.cli", "index", *map(str, sources), "--out", str(out), "--json",
            "--batch-size", "8", "--quiet"]


def test_ctrl_c_stops_a_build_cleanly_and_the_rerun_resumes(ukbench_dir: Path, tmp_path: Path) -> None:
    listing = tmp_path / "all.txt"  # the 1000 UKBench images in place: long enough to interrupt
    listing.write_text("\n".join(str(p) for p in sorted((ukbench_dir / "images").glob("*.jpg"))) + "\n")
    journal = tmp_path / ".idx.journal.sqlite"
    child = subprocess.Popen(_index_command([listing], tmp_path / "idx"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _journal_rows(journal) == 0 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "idx").exists() and [p.name for p in tmp_path.glob(".idx.tmp-*")] == []
    journalled = _journal_rows(journal)
    assert 0 < journalled < 1000
    rerun = subprocess.run(_index_command([listing], tmp_path / "idx"), check=False, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert (summary["items"], summary["indexed"], summary["resumed"]) == (1000, 1000, journalled)


def _url_listing(http_server, ukbench_dir: Path, numbers: range, prefix: str, path: Path) -> list[str]:
    urls = []
    for n in numbers:
        http_server.route(f"/{prefix}/{n}.jpg", ukbench_image(ukbench_dir, n).read_bytes())
        urls.append(http_server.url(f"/{prefix}/{n}.jpg"))
    path.write_text("url\n" + "\n".join(urls) + "\n")
    return urls


def _path(url: str) -> str:
    return httpx.URL(url).path


def _journal_rows(path: Path) -> int:
    if not path.exists():
        return 0
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT COUNT(*) FROM done").fetchone()[0]
    except sqlite3.OperationalError:  # killed before it created its table
        return 0
    finally:
        con.close()


def test_kill_9_during_index_builds_never_loses_the_previous_index(
    ukbench_dir: Path, http_server, imagefinder_cache: Path, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    files = _copy_ukbench(ukbench_dir, range(300, 420), tmp_path / "files")  # 120 files + 48 URLs
    old = _copy_ukbench(ukbench_dir, range(200, 206), tmp_path / "old")
    pristine = tmp_path / "pristine"
    first = subprocess.run(_index_command([old], pristine), check=False, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    old_sources = _sources(pristine)

    # A complete run of the same shape (other URLs, so nothing is cached for the trials) sets the kill window.
    _url_listing(http_server, ukbench_dir, range(100, 148), "timing", tmp_path / "timing.csv")
    start = time.monotonic()
    done = subprocess.run(_index_command([files, tmp_path / "timing.csv"], tmp_path / "timing-idx"), check=False,
                          capture_output=True, text=True, timeout=300)
    full_run = time.monotonic() - start
    assert done.returncode == 0, done.stderr

    urls = _url_listing(http_server, ukbench_dir, range(100, 148), "img", tmp_path / "urls.csv")
    sources = [files, tmp_path / "urls.csv"]
    out, journal = tmp_path / "idx", tmp_path / ".idx.journal.sqlite"
    shutil.copytree(pristine, out)
    trials: list[dict] = []
    for trial in range(TRIALS + 1):  # the last one runs to the end
        journalled = _journal_rows(journal)
        cached = {u for u in urls if cache_path(u, imagefinder_cache / "downloads").is_file()}
        requests_before = {u: http_server.count(_path(u)) for u in cached}
        delay = rng.uniform(0.05, 1.0) * full_run if trial < TRIALS else 600.0
        child = subprocess.Popen(_index_command(sources, out), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            stdout, _ = child.communicate(timeout=delay)
            summary = json.loads(stdout)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
            child.communicate(timeout=30)
            summary = None
        held = _sources(out)
        assert held == old_sources or (len(held) == 168 and set(urls) <= set(held)), (
            f"trial {trial}: the index holds neither the previous nor the complete new collection")
        _searches(out)
        assert [u for u in cached if http_server.count(_path(u)) != requests_before[u]] == [], (
            "a cached download is fetched again")
        row = {"trial": trial, "kill_after_s": None if summary else round(delay, 2),
               "index": "previous" if held == old_sources else "new", "journalled_before": journalled,
               "journalled_after": _journal_rows(journal)}
        if summary is not None:  # finished: it resumed all that was journalled, and the journal is gone
            assert (summary["items"], summary["indexed"], summary["resumed"]) == (168, 168, journalled)
            assert row["index"] == "new" and not journal.exists()
            row["resumed"] = summary["resumed"]
        elif row["index"] == "previous":  # killed before its commit: nothing journalled is lost
            assert row["journalled_after"] >= journalled
        trials.append(row)
        if held != old_sources:  # start the next trial from the previous index again
            shutil.rmtree(out)
            shutil.copytree(pristine, out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".idx")) == [], "no debris left"
    _write_report("build", [{"full_run_s": round(full_run, 2)}, *trials])
    killed = [t for t in trials if t["kill_after_s"] is not None]
    finished = [t for t in trials if t["kill_after_s"] is None]
    print(f"\nbuild kill trials: {len(trials)} runs, {len(killed)} killed mid-build (index afterwards: previous "
          f"{sum(t['index'] == 'previous' for t in killed)}, complete new {sum(t['index'] == 'new' for t in killed)}), "
          f"{len(finished)} finished (resumed {[t['resumed'] for t in finished]} journalled images of 168)")
    assert killed, "at least one trial must kill a build in progress"


# --- kill -9 of the API during adds and deletes ---------------------------------------------


def test_the_api_sweeps_temporary_files_a_killed_server_left(ukbench_dir: Path, embedder, tmp_path: Path) -> None:
    from imagefinder.api.writes import LISTING_TEMP, UploadWriter

    images = _copy_ukbench(ukbench_dir, range(4), tmp_path / "images")
    build_index([str(images)], tmp_path / "idx", embedder=embedder)
    uploads = tmp_path / "idx" / "uploads"
    uploads.mkdir()
    # temp files of atomic.write_bytes (".NAME.XXXX.tmp") and of the listing CSVs
    stale = [uploads / ".f00d.jpg.abc.tmp", uploads / f"{LISTING_TEMP}def.csv"]
    young, kept = uploads / ".beef.png.now.tmp", uploads / "f00d.jpg"  # another worker's, and a real upload
    dotfile = uploads / ".keep"  # not ours: left alone, however old
    for path in [*stale, young, kept, dotfile]:
        path.write_bytes(b"x")
    for path in [*stale, kept, dotfile]:
        os.utime(path, (time.time() - 2 * 3600, time.time() - 2 * 3600))
    finder = ImageFinder(tmp_path / "idx")
    try:
        UploadWriter(finder)
    finally:
        finder.close()
    assert sorted(p.name for p in uploads.iterdir()) == sorted([young.name, kept.name, dotfile.name])


@dataclass
class ApiLedger:
    """What the API acknowledged: live ids -> source, and the one request in flight at the kill."""

    live: dict[int, str]
    inflight: tuple[str, object] | None = None
    acked: Counter = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)  # answers other than success, before the kill


def _client(url: str, ledger: ApiLedger, pool: dict[str, bytes], rng: random.Random, stop: threading.Event) -> None:
    """Add images not yet indexed and delete added ones until the server dies; acknowledged changes are recorded."""
    digest = {name: hashlib.sha256(data).hexdigest() for name, data in pool.items()}
    with httpx.Client(base_url=url, timeout=30.0, trust_env=False) as client:
        while not stop.is_set():
            ours = [i for i, src in ledger.live.items() if Path(src).parent.name == "uploads"]
            live_digests = {Path(src).stem for src in ledger.live.values()}
            new = [name for name in sorted(pool) if digest[name] not in live_digests]
            delete = ours and (not new or rng.random() < 0.4)
            ledger.inflight = ("delete", rng.choice(ours)) if delete else ("add", rng.choice(new))
            try:
                if delete:
                    r = client.delete(f"/images/{ledger.inflight[1]}")
                else:
                    name = str(ledger.inflight[1])
                    r = client.post("/images", files={"file": (name, pool[name], "image/jpeg")})
            except httpx.HTTPError:
                return  # the server was killed
            if r.status_code not in (200, 201) or (delete and not r.json()["removed"]):
                ledger.unexpected.append(f"{ledger.inflight}: {r.status_code} {r.text}")
                return
            if delete:
                del ledger.live[int(ledger.inflight[1])]
            else:
                added = r.json()["images"][0]
                ledger.live[added["id"]] = added["source"]
            ledger.acked[ledger.inflight[0]] += 1
            ledger.inflight = None


def _check_api_index(index: Path, ledger: ApiLedger, pool: dict[str, bytes]) -> dict[int, str]:
    """The index on disk after a kill: opens, searches, and holds what was acknowledged."""
    store = Store(index)
    try:
        actual = {i: s for s, i in store.ids_by_source().items()}
        counts = store.manifest.counts
        assert counts.indexed == len(actual) == store.ntotal, "counts, id table and vectors agree"
    finally:
        store.close()
    extra, missing = set(actual) - set(ledger.live), set(ledger.live) - set(actual)
    kind, what = ledger.inflight or ("none", None)
    assert missing <= ({what} if kind == "delete" else set()), f"acknowledged images lost: {missing}"
    assert len(extra) <= (1 if kind == "add" else 0), f"ids nobody acknowledged: {extra}"
    for image_id in extra:  # uploads are stored as <sha256>.<ext>
        assert Path(actual[image_id]).stem == hashlib.sha256(pool[str(what)]).hexdigest(), "extra = the add in flight"
    for source in actual.values():
        assert Path(source).is_file(), f"an indexed upload lost its file: {source}"
    _searches(index)
    return actual


def test_kill_9_of_the_api_during_adds_and_deletes_loses_nothing_acknowledged(
    ukbench_dir: Path, embedder, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    images = _copy_ukbench(ukbench_dir, range(500, 506), tmp_path / "images")
    index = tmp_path / "idx"
    build_index([str(images)], index, embedder=embedder)
    pool = {f"u{n}.jpg": ukbench_image(ukbench_dir, n).read_bytes() for n in range(520, 540)}
    store = Store(index)
    ledger = ApiLedger({i: s for s, i in store.ids_by_source().items()})
    store.close()
    trials: list[dict] = []
    for trial in range(TRIALS):
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "imagefinder.api", "--index", str(index), "--port", str(port),
                                   "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert wait_ready(f"http://127.0.0.1:{port}/health", server, timeout=120) == "ready", (
                server.stderr.read().decode() if server.poll() is not None else "API did not start")
            stop = threading.Event()
            client = threading.Thread(target=_client, args=(f"http://127.0.0.1:{port}", ledger, pool,
                                                            random.Random(rng.random()), stop))
            client.start()
            delay = rng.uniform(0.1, 3.0)
            time.sleep(delay)
        finally:
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=30)
        stop.set()
        client.join(timeout=60)
        assert not client.is_alive()
        assert ledger.unexpected == [], "only successes are expected before the kill"
        inflight = ledger.inflight
        ledger.live = _check_api_index(index, ledger, pool)
        ledger.inflight = None
        trials.append({"trial": trial, "kill_after_s": round(delay, 2), "in_flight": inflight and inflight[0],
                       "live": len(ledger.live), "acked": dict(ledger.acked)})
    _write_report("api", trials)
    assert ledger.acked["add"] and ledger.acked["delete"], "the trials must exercise both adds and deletes"
    print(f"\nAPI kill trials: {len(trials)} survived; {dict(ledger.acked)} acknowledged changes kept; "
          f"killed with a request in flight {sum(t['in_flight'] is not None for t in trials)} times")
