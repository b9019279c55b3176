"""Sources: what a user points ImageFinder at -> a flat list of items (URL or local path).

Accepted: an http(s) URL, an image file, a folder (recursive), a CSV with a URL/path column
(other columns kept as metadata), or a text file with one path or URL per line.

A CSV or list file is read line by line the way a run treats images: one bad row (a field
over the csv module's limit, bytes that are not UTF-8 text, a NUL in its location) becomes a
failed item, recorded with its reason like a failed download, and the run goes on. The file's
encoding is UTF-8 (a BOM or none); UTF-16/32 with a BOM (or UTF-16 without one) and
single-byte files (Windows-1252 / latin-1: no UTF-8 sequence anywhere) are decoded as such,
with a warning. Only a file that cannot be read at all is a SourceError.
"""

from __future__ import annotations

import codecs
import csv
import io
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
MAX_FIELD = csv.field_size_limit()  # 131072: longer fields are csv.Errors, so their rows fail
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))  # UTF-32 LE starts as UTF-16 LE
_UNDECODED = re.compile("[\udc80-\udcff]")  # a byte that was not UTF-8, kept by surrogateescape
LIST_SUFFIXES = {".txt", ".lst", ".list"}
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class SourceError(ImageFinderError, ValueError):
    """A source argument that cannot be read; the message names it and says why."""


@dataclass(frozen=True)
class Item:
    source: str  # an http(s) URL or an absolute file path (for an unreadable row: 'FILE:LINE')
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    error: str | None = field(default=None, compare=False, hash=False)  # a row that could not be read

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
    rows = list(_csv_rows(path, read_text(path, "CSV")))
    if not rows:
        return
    first_line, first, first_error = rows[0]
    if first_error is not None:  # an unreadable header: every row is read as a location only
        yield _failed(path, first_line, first_error)
        first = []
    header = [h.strip() for h in first]
    if any(_UNDECODED.search(h) for h in header):  # metadata keys must be text: such a column is not kept
        log.warning("%s: a header cell is not UTF-8 text; that column's values are not kept", path)
        header = ["" if _UNDECODED.search(h) else h for h in header]
    lowered = [h.lower() for h in header]
    column = next((lowered.index(c) for c in URL_COLUMNS if c in lowered), None)
    if column is None and _looks_like_location(header[0] if header else ""):
        header, body, column = [], rows, 0  # no header row: the first column holds locations
    else:
        body, column = rows[1:], column or 0
    for line, row, error in body:
        if error is None and (len(row) <= column or not row[column].strip()):
            continue
        yield _csv_item(path, line, row, error, header, column)


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, list[str], str | None]]:
    """(line, cells, why the row is unreadable or None) of each non-blank row; a csv.Error fails its row only."""
    reader = csv.reader(io.StringIO(text, newline=""))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # the reader carries on at the next line
            yield reader.line_num, [], f"unreadable CSV row: {exc}"
            continue
        if any(cell.strip() for cell in row):  # a blank line before the header must not become it
            yield reader.line_num, row, None


def _csv_item(path: Path, line: int, row: list[str], error: str | None, header: list[str], column: int) -> Item:
    if error is None:
        bad = next((i for i, cell in enumerate(row) if _UNDECODED.search(cell)), None)
        if bad is not None:
            name = header[bad] if bad < len(header) and header[bad] else f"#{bad + 1}"
            error = f"column {name!r} is not UTF-8 text ({_first_byte(row[bad])})"
    if error is not None:
        return _failed(path, line, error, row[column].strip() if len(row) > column else "")
    meta = {h: v for i, (h, v) in enumerate(zip(header, row)) if i != column and h}
    return _location_item(path, line, row[column].strip(), meta)


def read_list(path: Path) -> Iterator[Item]:
    """One path or URL per line; blank lines and '#' comments skipped."""
    for number, line in enumerate(read_text(path, "list file").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if _UNDECODED.search(line):
            yield _failed(path, number, f"not UTF-8 text ({_first_byte(line)})")
        else:
            yield _location_item(path, number, line)


def read_text(path: Path, kind: str) -> str:
    """A CSV or list file's text, decoded as the module doc says; SourceError only if it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read {kind}: {exc.strerror or exc}") from exc
    text, encoding = decode_text(data)
    if encoding not in ("utf-8", "ascii"):
        log.warning("%s is not UTF-8: read as %s (save it as UTF-8 to be sure of its characters)", path, encoding)
    return text


def decode_text(data: bytes) -> tuple[str, str]:
    """(text, the encoding it was read as). Bytes that are not UTF-8 in a UTF-8 file stay as surrogate escapes."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return _decode_wide(data[len(bom):], encoding), encoding
    sixteen = _utf16_without_bom(data)
    if sixteen is not None:
        return _decode_wide(data, sixteen), sixteen
    text = data.decode("utf-8", "surrogateescape")
    if not _UNDECODED.search(text):
        return text, "utf-8"
    if any(ord(c) > 127 and not _UNDECODED.match(c) for c in text):
        return text, "utf-8"  # real UTF-8 with stray bytes: the rows holding them fail, not the file
    try:
        return data.decode("cp1252"), "cp1252"  # no UTF-8 anywhere: a single-byte file
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def _decode_wide(data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding, "surrogateescape")
    except UnicodeDecodeError:  # a broken UTF-16/32 unit with an ASCII byte in it cannot be escaped
        return data.decode(encoding, "replace")


def _utf16_without_bom(data: bytes) -> str | None:
    """UTF-16 of mostly ASCII text: every other byte is NUL (the first or the second of each pair)."""
    head = data[:4096]
    if len(head) < 4 or len(head) % 2:
        return None
    even, odd = head[0::2].count(0), head[1::2].count(0)
    if odd > 0.9 * len(head) // 2 and even == 0:
        return "utf-16-le"
    if even > 0.9 * len(head) // 2 and odd == 0:
        return "utf-16-be"
    return None


def _first_byte(text: str) -> str:
    match = _UNDECODED.search(text)
    return f"byte 0x{ord(match.group()) - 0xDC00:02x}" if match else "undecodable"


def _failed(listed_in: Path, line: int, why: str, location: str = "") -> Item:
    """A row recorded as a failed item named FILE:LINE (so a good row of the same image is still indexed)."""
    readable = location and not _UNDECODED.search(location) and "\x00" not in location and len(location) <= 2048
    where = f" (location {location})" if readable else ""
    return Item(f"{path_text(listed_in.absolute())}:{line}", error=f"{listed_in.name} line {line}: {why}{where}")


def _location_item(listed_in: Path, line: int, location: str, meta: dict[str, str] | None = None) -> Item:
    if "\x00" in location:  # no file name can hold one (and os.path functions raise ValueError)
        return _failed(listed_in, line, "the location contains a NUL byte (is this a binary file?)")
    return Item(_resolve(location, listed_in), meta or {})


def _looks_like_location(text: str) -> bool:
    return is_url(text) or is_image_path(Path(text))


def _resolve(location: str, listed_in: Path) -> str:
    """URLs stay as they are; relative paths are relative to the file that lists them."""
    if is_url(location):
        return location
    # os.path.expanduser leaves '~nosuchuser/a.jpg' as it is (Path.expanduser raises RuntimeError)
    path = Path(os.path.expanduser(location))
    return str((listed_in.parent / path).resolve() if not path.is_absolute() else path)


def count_by_kind(items: Iterable[Item]) -> dict[str, int]:
    counts = {"url": 0, "file": 0}
    for item in items:
        counts["url" if item.is_url else "file"] += 1
    return counts
