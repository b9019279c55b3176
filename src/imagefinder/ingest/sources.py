"""Sources: what a user points ImageFinder at -> a flat list of items (URL or local path).

Accepted: an http(s) URL, an image file, a folder (recursive), a CSV with a URL/path column
(other columns kept as metadata), or a text file with one path or URL per line.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ImageFinderError
from .decode import is_image_path, path_text

log = logging.getLogger(__name__)

URL_COLUMNS = ("url", "image_url", "image")
LIST_SUFFIXES = {".txt", ".lst", ".list"}
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class SourceError(ImageFinderError, ValueError):
    """A source argument that cannot be read; the message names it and says why."""


@dataclass(frozen=True)
class Item:
    source: str  # an http(s) URL or an absolute file path
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_url(self) -> bool:
        return is_url(self.source)


def is_url(text: str) -> bool:
    """Anything with a scheme is a URL; the downloader refuses schemes other than http(s)."""
    return bool(_SCHEME.match(text))


def expand_sources(sources: Sequence[str]) -> list[Item]:
    """All items of all sources, in order, each source string or path only once."""
    seen: set[str] = set()
    items: list[Item] = []
    for source in sources:
        for item in _expand_one(source):
            if item.source not in seen:
                seen.add(item.source)
                items.append(item)
    return items


def expand_nonempty(sources: Sequence[str]) -> list[Item]:
    """`expand_sources`, refusing sources that hold no image at all (nothing to index or train on)."""
    items = expand_sources(sources)
    if not items:
        raise SourceError(f"no images found in {', '.join(map(str, sources))}")
    return items


def _expand_one(source: str) -> Iterator[Item]:
    if is_url(source):
        yield Item(source)
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"{source}: no such file or folder (expected a folder, CSV, list file, image or URL)")
    if path.is_dir():
        yield from (Item(path_text(p)) for p in walk_images(path))  # non-UTF-8 names escaped
    elif path.suffix.lower() == ".csv":
        yield from read_csv(path)
    elif path.suffix.lower() in LIST_SUFFIXES:
        yield from read_list(path)
    elif is_image_path(path):
        yield Item(path_text(path.resolve()))
    else:
        raise SourceError(
            f"{source}: not a folder, .csv, list file ({', '.join(sorted(LIST_SUFFIXES))}) or image"
        )


def walk_images(root: Path) -> Iterator[Path]:
    """Image files under `root`, sorted, without following symlinked folders (no loops)."""
    for dirpath, dirnames, filenames in os.walk(root, onerror=_log_walk_error):
        # An index written inside the folder holds thumbnails: never index them as photos.
        dirnames[:] = sorted(d for d in dirnames if not _is_index_dir(Path(dirpath, d)))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if is_image_path(path):
                yield path.resolve() if not path.is_symlink() else path.absolute()


def _is_index_dir(path: Path) -> bool:
    return (path / "manifest.json").is_file() or ".tmp-" in path.name or ".old-" in path.name


def _log_walk_error(exc: OSError) -> None:
    log.warning("cannot read folder %s: %s", exc.filename, exc.strerror)


def read_csv(path: Path) -> Iterator[Item]:
    """Rows of a CSV: the URL column (url, image_url, image, else the first), rest as metadata."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            # blank lines are no rows: one before the header must not make the header a data row
            rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"{path}: cannot read CSV: {exc}") from exc
    if not rows:
        return
    header = [h.strip() for h in rows[0]]
    lowered = [h.lower() for h in header]
    column = next((lowered.index(c) for c in URL_COLUMNS if c in lowered), None)
    if column is None and _looks_like_location(header[0] if header else ""):
        header, body, column = [], rows, 0  # no header row: the first column holds locations
    else:
        body, column = rows[1:], column or 0
    for row in body:
        if len(row) <= column or not row[column].strip():
            continue
        meta = {h: v for i, (h, v) in enumerate(zip(header, row)) if i != column and h}
        yield Item(_resolve(row[column].strip(), path), meta)


def read_list(path: Path) -> Iterator[Item]:
    """One path or URL per line; blank lines and '#' comments skipped."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: Notepad writes a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: cannot read list file: {exc}") from exc
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            yield Item(_resolve(line, path))


def _looks_like_location(text: str) -> bool:
    return is_url(text) or is_image_path(Path(text))


def _resolve(location: str, listed_in: Path) -> str:
    """URLs stay as they are; relative paths are relative to the file that lists them."""
    if is_url(location):
        return location
    if "\x00" in location:  # no file name can hold one (and os.path functions raise ValueError)
        raise SourceError(f"{listed_in}: the location {location[:60]!r} contains a NUL byte; "
                          "is this a binary file rather than a text CSV or list?")
    # os.path.expanduser leaves '~nosuchuser/a.jpg' as it is (Path.expanduser raises RuntimeError)
    path = Path(os.path.expanduser(location))
    return str((listed_in.parent / path).resolve() if not path.is_absolute() else path)


def count_by_kind(items: Iterable[Item]) -> dict[str, int]:
    counts = {"url": 0, "file": 0}
    for item in items:
        counts["url" if item.is_url else "file"] += 1
    return counts
