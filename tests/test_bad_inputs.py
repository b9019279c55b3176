"""One real ingest over the whole bad-input corpus (tests/badcorpus.py: files, a list file, URLs).

The ingest runs once (module fixture) over every case; the tests check that it finished, that
each bad case is recorded with its own reason, that the good ones are indexed with the right
size, and that the index it wrote opens and answers searches. The CLI gets the corpus folder once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from badcorpus import TIMEOUT, UPRIGHT, Corpus, MisbehavingServer, download_config, write_corpus
from conftest import rows_by_source
from PIL import Image
from test_images import BLUE, RED, _close

from imagefinder import ImageFinder, build_index
from imagefinder.index import Store
from imagefinder.ingest.decode import ImageError, open_image
from imagefinder.ingest.download import DownloadConfig

GROUP = range(4)  # UKBench images 0-3: four photos of one object


@pytest.fixture(scope="module")
def photos(ukbench_dir: Path) -> list[bytes]:
    return [(ukbench_dir / "images" / f"ukbench{n:05d}.jpg").read_bytes() for n in GROUP]


@pytest.fixture(scope="module")
def corpus(http_server, photos: list[bytes], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    with MisbehavingServer(photos[0]) as raw:
        yield write_corpus(tmp_path_factory.mktemp("badcorpus"), http_server, raw, photos)


@pytest.fixture(scope="module")
def ingest(corpus: Corpus, embedder, tmp_path_factory: pytest.TempPathFactory):
    """The one ingest: the corpus folder and its list file (local paths and URLs) in one build."""
    out = tmp_path_factory.mktemp("badcorpus-index") / "index"
    cache = tmp_path_factory.mktemp("badcorpus-downloads")
    report = build_index(corpus.sources, out, download=download_config(cache), embedder=embedder,
                         batch_size=8, workers=8)
    return out, report


def test_the_corpus_has_at_least_30_cases_of_each_kind_needed(corpus: Corpus) -> None:
    active = corpus.active()
    assert len(corpus.cases) >= 30 and len(active) >= 30
    assert len({c.name for c in corpus.cases}) == len(corpus.cases)
    assert len({c.source for c in corpus.cases}) == len(corpus.cases), "every case its own item"
    bad = [c for c in active if not c.ok]
    assert len(bad) >= 30, "at least 30 bad inputs, besides the awkward-but-valid ones"
    assert sum(c.source.startswith(("http://", "https://", "ftp://")) for c in active) >= 15


def test_the_run_finishes_with_every_item_accounted_for(corpus: Corpus, ingest) -> None:
    out, report = ingest
    active = corpus.active()
    good = [c for c in active if c.ok]
    assert (report.items, report.indexed, report.failed) == (len(active), len(good), len(active) - len(good))
    assert sum(report.failure_reasons.values()) == report.failed
    rows = rows_by_source(out)
    assert set(rows) == {c.source for c in active}, "each case once: no walk into the folder loop, nothing lost"


def test_each_case_is_recorded_with_its_reason(corpus: Corpus, ingest) -> None:
    out, _ = ingest
    rows = rows_by_source(out)
    wrong = []
    for case in corpus.active():
        row = rows[case.source]
        if case.ok:
            if row["status"] != "ok" or (case.size and (row["width"], row["height"]) != case.size):
                wrong.append((case.name, "expected ok", row["status"], row["error"], row["width"], row["height"]))
        elif row["status"] != "failed" or not re.match(case.expect, row["error"] or ""):
            wrong.append((case.name, case.expect, row["status"], row["error"]))
    assert not wrong, "\n".join(map(repr, wrong))


def test_failure_summary_groups_the_reasons(corpus: Corpus, ingest) -> None:
    out, report = ingest
    rows = rows_by_source(out)
    errors = [rows[c.source]["error"] for c in corpus.active() if not c.ok]
    assert report.failure_reasons == dict(Counter(e.split(":")[0].strip() for e in errors))
    for reason in ("corrupt or truncated image", "HTTP 404 Not Found", "too many redirects (more than 5)",
                   f"timeout after {TIMEOUT:g}s", "too large", "TLS/SSL error", "refused", "decompression bomb refused"):
        assert reason in report.failure_reasons, reason


def test_the_index_stays_valid_and_searchable(corpus: Corpus, ingest, photos: list[bytes]) -> None:
    out, report = ingest
    cases = corpus.by_name()
    store = Store(out)
    try:
        assert store.ntotal == report.indexed
        assert {f["source"] for f in store.failures(limit=1000)} == {c.source for c in corpus.active() if not c.ok}
    finally:
        store.close()
    finder = ImageFinder(out)
    try:
        results = finder.search(photos[1], k=report.indexed + 10)
        assert len(results) == report.indexed
        copies = {cases[n].source for n in ("good_1", "long_name")}  # photos[1] twice, byte-identical
        assert {r.source for r in results[:2]} == copies and results[1].score > 0.999
        same_object = {cases[n].source for n in ("good_0", "good_2", "good_3", "url_good", "non_utf8_name",
                                                 "long_utf8_name")}
        assert {r.source for r in results[2:8]} == same_object, "then the other photos of the same object"
        failed_ids = {row["id"] for row in rows_by_source(out).values() if row["status"] == "failed"}
        assert len(failed_ids) == report.failed
        assert not failed_ids & {r.id for r in results}
        with pytest.raises(KeyError):
            finder.search_id(next(iter(failed_ids)))
    finally:
        finder.close()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_cases_decode_upright(corpus: Corpus, ingest, orientation: int) -> None:
    case = corpus.by_name()[f"exif_{orientation}"]
    stored = Image.open(case.source).size
    assert stored == (UPRIGHT[::-1] if orientation >= 5 else UPRIGHT), "5-8 are stored with width/height swapped"
    decoded = open_image(Path(case.source))
    assert decoded.image.size == (decoded.width, decoded.height) == UPRIGHT
    assert rows_by_source(ingest[0])[case.source]["width"] == UPRIGHT[0]
    w, h = UPRIGHT
    assert _close(decoded.image.getpixel((w // 4, h // 4)), RED), "red quadrant must be top-left"
    for xy in [(3 * w // 4, h // 4), (w // 4, 3 * h // 4), (3 * w // 4, 3 * h // 4)]:
        assert _close(decoded.image.getpixel(xy), BLUE), f"{xy} must be blue"


def test_private_address_allow_list_is_validated_up_front(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DownloadConfig(cache_dir=tmp_path, allow_private=False, allowed_private=("10.0.0.0/8", "not-a-network"))


def test_unreadable_file_case(corpus: Corpus, ingest) -> None:
    """Checked inside the corpus run when chmod 000 blocks reading; named here when it cannot."""
    case = corpus.by_name()["unreadable"]
    if case.skip:
        pytest.skip(case.skip)
    assert rows_by_source(ingest[0])[case.source]["error"] == "permission denied reading the file"


@pytest.mark.skipif(os.geteuid() != 0, reason="the corpus run itself checks chmod 000 when not root")
def test_unreadable_file_as_an_unprivileged_user(tmp_path: Path) -> None:
    """As root chmod 000 blocks nothing, so the decode runs in a forked child that drops to nobody."""
    folder = Path(tempfile.mkdtemp(prefix="imagefinder-perm-"))  # /tmp itself: nobody may enter it
    try:
        folder.chmod(0o755)
        unreadable = folder / "unreadable.jpg"
        Image.new("RGB", (8, 8), RED).save(unreadable)
        unreadable.chmod(0)
        assert _open_as(65534, unreadable) == "permission denied reading the file"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _open_as(uid: int, path: Path) -> str:
    """`open_image(path)` in a child process running as `uid`: its ImageError message, or 'opened'."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only this thread exists here; report and leave without running any cleanup
        try:
            os.setgid(uid)
            os.setuid(uid)
            try:
                open_image(path)
                message = "opened"
            except ImageError as exc:
                message = str(exc)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
            message = f"child failed: {exc!r}"
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        message = f.read().decode()
    os.waitpid(pid, 0)
    return message


def test_cli_index_of_the_corpus_folder_reports_failures_and_exits_0(corpus: Corpus, cli, tmp_path: Path) -> None:
    in_folder = [c for c in corpus.active() if Path(c.source).parent == corpus.folder]
    bad = [c for c in in_folder if not c.ok]
    proc = cli("index", corpus.folder, "--out", tmp_path / "index", "--json", "-q")
    assert proc.returncode == 0, proc.stderr  # documented: 0 when anything was indexed, failures recorded
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["items"], summary["indexed"], summary["failed"]) == (len(in_folder), len(in_folder) - len(bad),
                                                                         len(bad))
    assert sum(summary["failure_reasons"].values()) == len(bad)
    assert {"corrupt or truncated image", "decompression bomb refused", "cannot read file"} <= set(
        summary["failure_reasons"])
    info = cli("info", tmp_path / "index", "--json")
    assert info.returncode == 0, info.stderr
    failures = {f["source"]: f["error"] for f in json.loads(info.stdout)["failures"]}
    assert set(failures) == {c.source for c in bad}
    assert all(re.match(c.expect, failures[c.source]) for c in bad), failures
    one = json.loads(cli("info", tmp_path / "index", "--json", "--failures", "1").stdout)
    assert len(one["failures"]) == 1 and sum(one["failure_reasons"].values()) == len(bad), "reasons count every failure"
