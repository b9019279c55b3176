"""Adding and removing images through the API: uploaded files kept under INDEX/uploads/.

An upload is saved as uploads/<sha256>.<ext> (atomically) and added through a CSV listing that
names it, so its origin (file name, URL) is kept as metadata. A failed add removes the files
it wrote; deleting an uploaded image deletes its file. One lock orders this bookkeeping; the
index itself is changed by `ImageFinder.add` / `remove`, which reload the index afterwards.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path

from fastapi import HTTPException

from ..atomic import write_bytes
from ..finder import ImageFinder
from ..ingest.sources import is_url
from ..runners.decoded import DecodedRunner
from .uploads import EXTENSIONS, CheckedImage

log = logging.getLogger(__name__)

UPLOADS = "uploads"
LISTING_TEMP = ".add-"  # prefix of the listing CSVs
STALE_TEMP_S = 3600.0  # older than any request: left by a server that was killed
PAGE = 500  # rows read from the id table at once
_UPLOAD_NAME = re.compile(rf"[0-9a-f]{{64}}\.(?:{'|'.join(sorted(set(EXTENSIONS.values())))})")


class UploadWriter:
    """Saves uploads, adds them to the index and removes them again, for one server process."""

    def __init__(self, finder: ImageFinder) -> None:
        self.finder = finder
        # absolute and resolved: these paths become the images' sources in the index
        self.uploads = Path(finder.path).resolve() / UPLOADS
        self._lock = threading.Lock()
        sweep_temp_files(self.uploads)
        self.sweep_orphans()

    def public_source(self, source: str) -> str:
        """A source as callers may see it: never a server path. Uploads are `uploads/NAME` (relative to
        the index), other local files their file name (the folder they were indexed from is the
        server's business); URLs as they are."""
        if is_url(source):
            return source
        path = Path(source)
        try:
            return f"{UPLOADS}/{path.relative_to(self.uploads)}"
        except ValueError:
            return path.name

    def add(self, images: list[tuple[CheckedImage, dict[str, str]]]) -> list[tuple[dict, bool]]:
        """Save checked images under INDEX/uploads/<sha256>.<ext> and add them; (row, created) each."""
        with self._lock:
            self.uploads.mkdir(exist_ok=True)
            paths, written = [], []
            for image, _meta in images:
                path = self.uploads / f"{image.decoded.sha256}.{image.extension}"
                if not path.exists():
                    write_bytes(path, image.data)
                    written.append(path)
                paths.append(path)
            before = self.finder.manifest.rows
            listing = self._write_listing(paths, [meta for _, meta in images])
            # each image was decoded (at a bounded size) when it was checked: embed that, not a second decode
            runner = DecodedRunner({str(path): image.decoded for path, (image, _meta) in zip(paths, images)})
            try:
                report = self.finder.add([str(listing)], runner=runner)
            except BaseException:
                _unlink(written)
                raise
            finally:
                listing.unlink(missing_ok=True)
            created = {row["source"]: row for row in self._new_rows(before, self.finder.manifest.rows)}
            if report.failed:
                _unlink([path for path in written if str(path) not in created])
                reasons = "; ".join(str(f.get("error")) for f in report.failures) or "unknown reason"
                raise HTTPException(422, f"the image could not be indexed: {reasons}")
        return self._rows(paths, created)

    def _rows(self, paths: list[Path], created: dict[str, dict]) -> list[tuple[dict, bool]]:
        out = []
        existing: dict[str, int] | None = None
        for path in paths:
            source = str(path)
            if source in created:
                out.append((created[source], True))
                continue
            if existing is None:  # a duplicate of an image already indexed
                existing = self.finder.store.ids_by_source()
            if source not in existing:
                raise HTTPException(422, "the image could not be indexed")
            out.append((self.finder.store.records([existing[source]])[existing[source]], False))
        return out

    def _new_rows(self, before: int, after: int) -> list[dict]:
        ids = list(range(before, after))
        rows: list[dict] = []
        for start in range(0, len(ids), PAGE):
            rows += self.finder.store.records(ids[start:start + PAGE]).values()
        return [r for r in rows if r.get("status") == "ok"]

    def _write_listing(self, paths: list[Path], metas: list[dict[str, str]]) -> Path:
        """A CSV naming the files, so their origin (file name, URL) is kept as metadata."""
        columns = sorted({key for meta in metas for key in meta})
        fd, name = tempfile.mkstemp(dir=self.uploads, prefix=LISTING_TEMP, suffix=".csv")
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", *columns])
            for path, meta in zip(paths, metas):
                writer.writerow([str(path), *(meta.get(c, "") for c in columns)])
        return Path(name)

    def sweep_orphans(self) -> int:
        """Remove uploads no indexed image refers to: saved by an add that was killed (kill -9) before
        it committed. Only names `add` writes, and only files older than any request, so another
        worker's add in flight keeps its own."""
        if not self.uploads.is_dir():
            return 0
        known = set(self.finder.store.ids_by_source())
        cutoff, removed = time.time() - STALE_TEMP_S, 0
        for path in self.uploads.iterdir():
            try:
                if not _is_upload(path.name) or str(path) in known or path.stat().st_mtime >= cutoff:
                    continue
                path.unlink()
                removed += 1
            except OSError:
                continue  # gone already, or not ours to remove
        if removed:
            log.info("removed %d file(s) from %s that no indexed image refers to (left by an interrupted add)",
                     removed, self.uploads)
        return removed

    def remove(self, image_id: int) -> bool:
        with self._lock:
            row = self.finder.store.records([image_id]).get(image_id)
            removed = self.finder.remove([image_id]) > 0
            if removed and row is not None:
                self._forget_upload(row)
        return removed

    def _forget_upload(self, row: dict) -> None:
        """Deleting an uploaded image deletes its file too: adds skip sources already indexed,
        so no other live row refers to it, and a later upload of the same image writes it again."""
        path = Path(row["source"])
        if path.parent == self.uploads:
            path.unlink(missing_ok=True)


def _unlink(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _is_upload(name: str) -> bool:
    """A name `add` writes (`<sha256>.<ext>`): anything else in uploads/ is not ours to sweep."""
    return bool(_UPLOAD_NAME.fullmatch(name))


def _is_temp(name: str) -> bool:
    return name.startswith(LISTING_TEMP) or (name.startswith(".") and name.endswith(".tmp"))


def sweep_temp_files(uploads: Path) -> None:
    """Remove temporary files a killed server left in uploads/ (another worker's live ones are young).

    Ours are the listings and atomic.write_bytes' temp files (".NAME.XXXX.tmp"); uploads never start with "."."""
    if not uploads.is_dir():
        return
    cutoff = time.time() - STALE_TEMP_S
    for path in uploads.iterdir():
        try:
            if _is_temp(path.name) and path.stat().st_mtime < cutoff:
                path.unlink()
                log.info("removed %s, left by an interrupted request", path.name)
        except OSError:
            pass  # gone already, or not ours to remove
