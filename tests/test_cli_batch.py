"""`imagefinder search` with several queries (files, a folder, a bad file), --where, and the shared JSON schema;
`imagefinder sync` after files were added, changed, touched and deleted. Real CLI subprocesses, real images."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from imagefinder.api.schemas import SearchFailure, SearchResponse

FAR = ("rocket", "hubble")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory, embedder) -> tuple[Path, Path, Path]:
    """(index over a CSV with a `place` column, the images folder, a query image outside it)."""
    from imagefinder import build_index
    from imagefinder.sample import write_sample

    root = tmp_path_factory.mktemp("cli-batch")
    images, query = write_sample(root / "images")
    listing = root / "photos.csv"
    with listing.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "place"])
        for path in sorted(images.glob("*.jpg")):
            w.writerow([str(path), "far" if path.name.startswith(FAR) else "near"])
    build_index([str(listing)], root / "index", embedder=embedder, workers=2)
    return root / "index", images, query


def lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_batch_queries_one_json_line_each(sample, tmp_path: Path, cli) -> None:
    index, images, query = sample
    folder = tmp_path / "queries"
    folder.mkdir()
    for name in ("coffee_original.jpg", "cat_original.jpg"):
        shutil.copy(images / name, folder / name)
    notes = tmp_path / "notes.jpg"
    notes.write_text("this is not a picture")  # the name says image, the contents do not
    proc = cli("search", index, query, images / "brick_original.jpg", folder, notes, "-k", "3", "--json")
    assert proc.returncode == 2, proc.stderr  # a query failed: bad input, the others still answered
    out = lines(proc.stdout)
    assert len(out) == 5
    answers = [SearchResponse.model_validate(o) for o in out[:4]]  # the API's schema, exactly
    assert [a.query.path for a in answers] == [str(query), str(images / "brick_original.jpg"),
                                               str(folder / "cat_original.jpg"), str(folder / "coffee_original.jpg")]
    assert all(len(a.results) == 3 and a.k == 3 and a.results[0].thumbnail_url is None for a in answers)
    assert Path(answers[1].results[0].source).name == "brick_original.jpg"
    assert Path(answers[2].results[0].source).name == "cat_original.jpg"
    failure = SearchFailure.model_validate(out[4])
    assert failure.query.path == str(notes) and str(notes) in failure.error
    assert str(notes) in proc.stderr  # the message names the file


def test_a_single_non_image_query_names_the_file(sample, tmp_path: Path, cli) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    proc = cli("search", sample[0], notes)
    assert proc.returncode == 2 and str(notes) in proc.stderr and "Traceback" not in proc.stderr


def test_where_filters_inside_the_search(sample, cli) -> None:
    index, _, query = sample
    plain = lines(cli("search", index, query, "-k", "5", "--json").stdout)[0]
    assert all(r["meta"]["place"] == "near" for r in plain["results"])
    proc = cli("search", index, query, "-k", "5", "--where", "place=far", "--json")
    assert proc.returncode == 0, proc.stderr
    answer = lines(proc.stdout)[0]
    assert answer["where"] == ["place=far"] and len(answer["results"]) == 5
    assert all(r["meta"]["place"] == "far" for r in answer["results"])
    bad = cli("search", index, query, "--where", "place")
    assert bad.returncode == 2 and "COLUMN OP VALUE" in bad.stderr


def _ids(index: Path) -> dict[str, int]:
    from imagefinder.index import Store

    store = Store(index)
    try:
        return store.ids_by_source()
    finally:
        store.close()


def test_sync_adds_changed_new_and_removes_deleted(tmp_path: Path, sample, embedder, cli) -> None:
    from imagefinder import build_index
    from imagefinder.sync import SyncError, sync_index

    _, images, query = sample
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted(images.glob("*_original.jpg")):
        shutil.copy(path, photos / path.name)
    build_index([str(photos)], tmp_path / "index", embedder=embedder, workers=2)
    index = tmp_path / "index"
    before = _ids(index)
    assert len(before) == 9
    time.sleep(1.1)  # later modification times than the build's
    (photos / "grass_original.jpg").unlink()  # deleted
    shutil.copy(query, photos / "new_query.jpg")  # new
    changed = photos / "cat_original.jpg"  # changed contents, same name
    ImageOps.mirror(Image.open(changed)).save(changed, quality=85)
    touched = photos / "brick_original.jpg"  # modified time only
    os.utime(touched)
    dry = sync_index(index, embedder=embedder, dry_run=True)
    assert (dry.added, dry.changed, dry.removed) == (1, 1, 1) and _ids(index) == before
    proc = cli("sync", index, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["added"], report["changed"], report["removed"], report["unchanged"], report["failed"]) == \
        (1, 1, 1, 7, 0)
    after = _ids(index)
    key = {Path(s).name: i for s, i in after.items()}
    assert set(key) == {Path(s).name for s in before} - {"grass_original.jpg"} | {"new_query.jpg"}
    assert key["cat_original.jpg"] != before[str(changed)]  # re-embedded under a new id
    assert key["brick_original.jpg"] == before[str(touched)]  # same contents: left alone
    again = sync_index(index, embedder=embedder)
    assert (again.added, again.changed, again.removed, again.unchanged) == (0, 0, 0, 9)
    human = cli("sync", index)
    assert human.returncode == 0 and "0 added, 0 re-embedded, 0 removed, 9 unchanged" in human.stdout
    # a recorded folder that is gone (an unmounted disk) must not empty the index
    shutil.move(photos, tmp_path / "elsewhere")
    with pytest.raises(SyncError, match="missing"):
        sync_index(index, embedder=embedder)
    assert _ids(index) == after
    # an index that records no folder says how to name one
    other = tmp_path / "from-files"
    build_index([str(p) for p in sorted((tmp_path / "elsewhere").glob("*.jpg"))[:3]], other, embedder=embedder)
    proc = cli("sync", other)
    assert proc.returncode == 2 and "sync INDEX FOLDER" in proc.stderr
    assert sync_index(other, [str(tmp_path / "elsewhere")], embedder=embedder).added == 6
