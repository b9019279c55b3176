"""Writing a new index directory: staged beside its destination, then swapped into place.

`ArtifactWriter` stages the whole artifact in `.NAME.tmp-*`, commits it with two renames
(`layout.swap_into_place`), and holds a build lock meanwhile, so a second build into the same
destination is refused instead of racing. Debris of killed builds (staging and replaced
directories) is removed by the next build, under the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from filelock import FileLock, Timeout

from ..atomic import fsync_dir
from .faiss_ops import ADD_CHUNK
from .items import Items, Record
from .layout import (
    CENTROIDS,
    EMBEDDINGS,
    ITEMS,
    MANIFEST,
    THUMBS,
    IndexError_,
    restore_interrupted_swap,
    swap_into_place,
    vectors_file,
)
from .manifest import Manifest, write_manifest

log = logging.getLogger(__name__)


class ArtifactWriter:
    """Builds a new index directory beside its destination and swaps it in on `commit`."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir).absolute()
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        restore_interrupted_swap(self.out_dir)
        if self.out_dir.exists() and not (self.out_dir / MANIFEST).is_file() and any(self.out_dir.iterdir()):
            raise IndexError_(f"{self.out_dir} exists and is not an ImageFinder index; refusing to replace it")
        self._lock = BuildLock(self.out_dir)
        try:
            self._served = refuse_if_served(self.out_dir)
        except BaseException:
            self._lock.release()
            raise
        _clear_debris(self.out_dir)
        self.tmp = self.out_dir.parent / f".{self.out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
        (self.tmp / THUMBS).mkdir(parents=True)

    @property
    def thumbs(self) -> Path:
        return self.tmp / THUMBS

    @property
    def journal_path(self) -> Path:
        """Where the pipeline journals finished items of this build (beside the index: it outlives a crash)."""
        return self.out_dir.parent / f".{self.out_dir.name}.journal.sqlite"

    def commit(self, records: list[Record], embeddings: np.ndarray, index: faiss.Index | None, manifest: Manifest,
               centroids: np.ndarray | None = None) -> Path:
        append_embeddings(self.tmp / EMBEDDINGS, embeddings, rows_before=0)
        if centroids is not None:
            np.save(self.tmp / CENTROIDS, centroids)
        if index is not None:
            faiss.write_index(index, str(self.tmp / vectors_file(0)))
        with Items.writer(self.tmp / ITEMS) as items:
            items.insert(records, generation=0)
        manifest = manifest.replace(generation=0, rows=len(embeddings))
        write_manifest(self.tmp, manifest)
        fsync_dir(self.tmp)
        replaced = _store_of(self.out_dir)
        swap_into_place(self.tmp, self.out_dir)
        self._release()
        if replaced and replaced != manifest.store:
            _drop_store_quietly(replaced)
        return self.out_dir

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        if self._served is not None:
            os.close(self._served)  # drops the flock; the file went with the replaced directory
            self._served = None
        self._lock.release()


class BuildLock:
    """One build per destination; the OS drops the lock when its process dies, even by kill -9.

    The lock file is deleted on release, so nothing is left beside the index; a process that
    locked a file just deleted by the previous holder notices (other inode) and tries again.
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir.parent / f".{out_dir.name}.build.lock"
        self._inode = -1
        while True:
            lock = FileLock(self.path, timeout=0, on_acquired=self._note_inode)
            try:
                lock.acquire()
            except Timeout:
                raise IndexError_(f"another build is writing {out_dir}; wait for it to finish") from None
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == self._inode:
                    self._lock = lock
                    return
            lock.release()

    def _note_inode(self, fd: int) -> None:
        self._inode = os.fstat(fd).st_ino

    def release(self) -> None:
        if self._lock.is_locked:
            self.path.unlink(missing_ok=True)
            self._lock.release()


SERVED_LOCK = ".served.lock"  # inside the index: share-locked by every process serving it


def refuse_if_served(out_dir: Path) -> int | None:
    """Lock `out_dir` against servers until the build has swapped it (an fd to close), or refuse.

    A server holds a shared lock on INDEX/.served.lock while it runs (`ServeLock`); replacing the
    directory under it would move its uploads/ away and lose every write acknowledged after the
    swap, so a build into a served index is refused with what to do instead."""
    lock = out_dir / SERVED_LOCK
    if not (out_dir / MANIFEST).is_file():  # not an index (yet): nothing serves it
        return None
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise IndexError_(f"{out_dir} is being served by a running ImageFinder API; rebuilding it now would lose "
                          "the images the API adds meanwhile. Stop the server first, or build into another folder "
                          "(--out NEW) and serve that; `imagefinder add` and `imagefinder rebuild` update a "
                          "served index in place") from None
    return fd


class ServeLock:
    """Held by a serving process for its lifetime (released at exit, even by kill -9): builds that
    would replace the index directory refuse while any server holds it (`refuse_if_served`)."""

    def __init__(self, index_dir: Path) -> None:
        self.path = Path(index_dir) / SERVED_LOCK
        self._fd: int | None = None
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only index: nothing here can replace it either
            log.info("not locking %s: %s", self.path, exc.strerror or exc)
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise IndexError_(f"{index_dir} is being replaced by `imagefinder index` right now; start the server "
                              "once that build has finished") from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    __del__ = release


def writer_lock(path: Path) -> FileLock:
    """One writer per index directory across processes (CLI, API workers): `with writer_lock(path):`."""
    return FileLock(Path(path) / ".lock")


def _clear_debris(out_dir: Path) -> None:
    """Staging and replaced directories of builds that were killed (we hold the build lock)."""
    for pattern in (f".{out_dir.name}.tmp-*", f".{out_dir.name}.old-*"):
        for debris in out_dir.parent.glob(pattern):
            log.info("removing %s, left by an interrupted build", debris)
            shutil.rmtree(debris, ignore_errors=True)


def _store_of(path: Path) -> dict[str, Any] | None:
    try:
        return Manifest.from_json((path / MANIFEST).read_text(encoding="utf-8")).store
    except (OSError, IndexError_):
        return None


def _drop_store_quietly(store: dict[str, Any]) -> None:
    """The replaced index's Milvus collection: nothing refers to it any more."""
    try:
        from ..stores import open_vector_store

        open_vector_store(store).drop()
    except Exception as exc:  # noqa: BLE001 - a leaked collection must not fail a finished build
        log.warning("could not drop the replaced index's collection %s: %s", store.get("collection"), exc)


def append_embeddings(path: Path, rows: np.ndarray, rows_before: int, chunk: int = ADD_CHUNK) -> None:
    """Raw float16 rows, append-only: rows past the manifest's count are debris of a crash."""
    width = rows.shape[1] if rows.ndim == 2 else 0
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.truncate(rows_before * width * 2)
        f.seek(0, os.SEEK_END)
        f.writelines(np.ascontiguousarray(rows[start:start + chunk], dtype=np.float16).tobytes()
                     for start in range(0, len(rows), chunk))
        f.flush()
        os.fsync(f.fileno())

