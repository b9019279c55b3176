"""Fuzzing: input strategies and property checks, shared by tests/test_fuzz.py and benchmarks/fuzz.py.

The test file runs each property for a bounded, reproducible number of examples in the suite;
the benchmark script runs the very same strategies and checks for a fixed time and counts how
many inputs it tried and how many failed. Nothing here is duplicated in either of them.

Targets and their properties:

- csv / urllist: generated CSV and list files (odd quoting, BOMs, NUL bytes, CRLF, missing and
  extra columns, other encodings, huge fields, header variants, blank lines, comments, garbage)
  go through `expand_sources`. It returns items whose sources come from the file, every URL
  the file lists in its location column (line) among them and none from a comment; a row it
  cannot read is an item with an error, named FILE:LINE, the error naming the line (or, for a
  file it cannot read at all, `SourceError` naming the file); never any other exception.
- decode / upload: real JPEG, PNG, GIF, WebP, TIFF and BMP files, mutated (bit flips, bytes
  set, truncation, deleted and inserted bytes, inserted chunks and markers, header size fields
  rewritten), go through `open_image` + `thumbnail_jpeg` + `to_array`, and through the API's
  upload check. The result is an upright RGB image within the pixel limit that thumbnails and
  preprocesses to the expected shapes, or `ImageError` (for the API: HTTPException 413, 415 or
  422 with a message); never any other exception.
- api: schemathesis requests generated from the API's OpenAPI schema (see test_api_schema.py):
  no 5xx, and documented answers match their schema and content type.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import ipaddress
import socket
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st
from PIL import Image

from imagefinder.ingest import decode as images
from imagefinder.ingest.decode import ImageError, Preprocess, open_image, thumbnail_jpeg, to_array
from imagefinder.ingest.sources import URL_COLUMNS, SourceError, decode_text, expand_sources, is_url

UKBENCH = Path(__file__).resolve().parents[2] / "shared/data/ukbench1000/images"

# --- sources: CSV and list files --------------------------------------------------------------------

_HOST = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{2,5}){1,2}", fullmatch=True)
_PATH_CHARS = st.text("abcXYZ019-_.~%!$&'()*+,;=:@/", max_size=20)
_EXT = st.sampled_from([".jpg", ".JPEG", ".png", ".webp", ".gif", ".tif", ".bmp", "", ".txt"])
urls = st.builds(
    lambda scheme, host, port, path, ext, query: f"{scheme}://{host}{port}/{path}{ext}{query}",
    st.sampled_from(["http", "https", "HTTP", "Https", "ftp", "s3", "file", "data+x"]),
    _HOST,
    st.sampled_from(["", ":8080", ":0", ":99999"]),
    _PATH_CHARS,
    _EXT,
    st.sampled_from(["", "?w=640,h=480", "?a=1&b=%22q%22", "#frag", '?q="x"']),
)
_NAME = st.text("abcdefgh0123456789 _-.éü漢", min_size=1, max_size=12)
paths = st.one_of(
    st.builds(lambda parts, ext: "/".join(parts) + ext, st.lists(_NAME, min_size=1, max_size=3), _EXT),
    st.builds(lambda name, ext: f"../{name}{ext}", _NAME, _EXT),
    st.builds(lambda name, ext: f"~/{name}{ext}", _NAME, _EXT),
    st.builds(lambda name, ext: f"/abs/{name}{ext}", _NAME, _EXT),
    st.sampled_from([".", "..", "~", "/", "./", "a/..", "C:\\photos\\a.jpg", "\\\\server\\share\\b.png"]),
)
garbage = st.text(max_size=30)  # any code point but surrogates: NUL, quotes, commas, CR, LF, BOM ...
huge = st.integers(130_000, 140_000).map(lambda n: "h" * n)  # over csv's 131072-byte field limit
_SPACE = st.sampled_from(["", " ", "  ", "\t", " \t"])

_ENCODINGS = ["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-8-sig", "latin-1", "cp1252", "utf-16"]
_NEWLINES = ["\n", "\r\n", "\r"]
# single bytes and short runs that break text files: NUL, invalid UTF-8, stray quotes, bare CR, BOMs
_BAD_BYTES = st.one_of(
    st.sampled_from([b"\x00", b"\xff", b"\xfe", b"\xc3", b"\x80", b'"', b"\r", b"\xef\xbb\xbf", b"\xff\xfe", b",,"]),
    st.binary(min_size=1, max_size=8),
)

NON_URL_HEADERS = ["id", "label", "name", "caption", "", " ", "url2", "imageurl", "image url", "title", "#"]


@dataclass
class TextDoc:
    """A generated file: its bytes, and what a correct reader must return from it if it reads it."""

    data: bytes
    expected_urls: frozenset[str]  # URLs that must be items when the file reads without error
    forbidden_urls: frozenset[str] = frozenset()  # URLs only in comments: never items

    def __repr__(self) -> str:  # Hypothesis prints this for a failing example
        data = self.data if len(self.data) <= 2000 else self.data[:2000] + b"...(%d bytes)" % len(self.data)
        return f"TextDoc(data={data!r}, expected_urls={set(self.expected_urls)!r})"


def _encode(draw: st.DrawFn, text: str) -> tuple[bytes, bool]:
    """The text in a drawn encoding, maybe with stray bytes spliced in; also whether it is clean UTF-8."""
    encoding = draw(st.sampled_from(_ENCODINGS))
    data = text.encode(encoding, errors="replace")
    clean = encoding in ("utf-8", "utf-8-sig")
    for raw in draw(st.lists(_BAD_BYTES, min_size=1, max_size=3)) if draw(st.integers(0, 3)) == 0 else []:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + raw + data[at:]
        clean = False
    return data, clean


def _quote_odd(draw: st.DrawFn, cells: list[str]) -> str:
    """Cells joined without csv's escaping, some wrapped in unbalanced or doubled quotes."""
    wraps = st.sampled_from(["{}", '"{}"', '"{}', '{}"', "'{}'", '""{}""', ' "{}" '])
    return ",".join(draw(wraps).format(c) for c in cells)


@st.composite
def csv_documents(draw: st.DrawFn) -> TextDoc:
    ncols = draw(st.integers(1, 5))
    header_kind = draw(st.sampled_from(["named", "named", "none", "other"]))
    loc = 0 if header_kind == "none" else draw(st.integers(0, ncols - 1))
    header: list[str] = []
    if header_kind != "none":
        header = [draw(st.one_of(st.sampled_from(NON_URL_HEADERS), garbage)) for _ in range(ncols)]
        if header_kind == "named":
            name = draw(st.sampled_from(URL_COLUMNS))
            header[loc] = draw(_SPACE) + draw(st.sampled_from([name, name.upper(), name.title()])) + draw(_SPACE)
    location_cell = st.one_of(urls, urls, paths, garbage, st.sampled_from(["", "  "]),
                              st.builds(lambda a, u, b: a + u + b, _SPACE, urls, _SPACE))
    other_cell = st.one_of(garbage, st.text("abc 123,;\"'", max_size=10), urls)
    rows: list[list[str]] = []
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.integers(0, 9)) == 0:
            rows.append([])  # a blank line
            continue
        width = ncols + draw(st.sampled_from([0, 0, 0, 0, -1, 1, 2])) if ncols > 1 else ncols
        row = [draw(location_cell) if i == loc else draw(other_cell) for i in range(max(width, 1))]
        rows.append(row)
    if draw(st.integers(0, 19)) == 0 and rows:  # a field bigger than csv's limit, somewhere
        row = draw(st.sampled_from([r for r in rows] + [header] if header else rows))
        if row:
            row[draw(st.integers(0, len(row) - 1))] = draw(huge)

    newline = draw(st.sampled_from(_NEWLINES))
    style = draw(st.sampled_from(["minimal", "minimal", "all", "nonnumeric", "none", "odd"]))
    lines = [header] + rows if header_kind != "none" else rows
    lines = [[]] * draw(st.sampled_from([0, 0, 0, 1, 2])) + lines  # blank lines before the header
    if style == "odd":
        text = newline.join(_quote_odd(draw, r) for r in lines)
    else:
        out = io.StringIO()
        quoting = {"minimal": csv.QUOTE_MINIMAL, "all": csv.QUOTE_ALL,
                   "nonnumeric": csv.QUOTE_NONNUMERIC, "none": csv.QUOTE_NONE}[style]
        writer = csv.writer(out, quoting=quoting, lineterminator=newline, escapechar="\\")
        for r in lines:
            try:
                writer.writerow(r) if r else out.write(newline)
            except csv.Error:  # QUOTE_NONE cannot write a lone empty field: write it unquoted
                out.write(",".join(r) + newline)
        text = out.getvalue()
    if draw(st.booleans()):
        text = text.rstrip("\r\n")  # no final newline
    data, clean = _encode(draw, text)

    # What a correct reader returns, where csv's own rules make it certain: the writer's
    # standard quoting read back by the standard reader, clean UTF-8, no oversized field,
    # and a header naming the column (or no header and a URL in the first cell).
    expected: set[str] = set()
    certain = clean and style in ("minimal", "all", "nonnumeric") and "h" * 130_000 not in text
    if header_kind == "none":
        first = next((r for r in rows if r), [])  # the first line that is not blank
        certain = certain and bool(first) and is_url(first[0].strip()) and not any(
            c.strip().lower() in URL_COLUMNS for c in first)
    elif header_kind == "other":
        certain = False
    if certain:
        expected = {r[loc].strip() for r in rows if len(r) > loc and is_url(r[loc].strip())}
    return TextDoc(data, frozenset(expected))


@st.composite
def list_documents(draw: st.DrawFn) -> TextDoc:
    kinds = st.sampled_from(["url", "url", "path", "comment", "blank", "garbage"])
    lines: list[str] = []
    listed: set[str] = set()
    commented: set[str] = set()
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(kinds)
        if kind == "url":
            url = draw(urls)
            listed.add(url)
            lines.append(draw(_SPACE) + url + draw(_SPACE))
        elif kind == "path":
            lines.append(draw(_SPACE) + draw(paths).strip() + draw(_SPACE))
        elif kind == "comment":
            url = draw(urls)
            commented.add(url)
            lines.append(draw(_SPACE) + "#" + draw(st.sampled_from(["", " "])) + draw(st.one_of(garbage, st.just(url))))
        elif kind == "blank":
            lines.append(draw(_SPACE))
        else:
            lines.append(draw(garbage))
    text = draw(st.sampled_from(_NEWLINES)).join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))
    data, clean = _encode(draw, text)
    if not clean:  # a stray byte may have split or joined lines: nothing is certain any more
        listed, commented = set(), set()
    return TextDoc(data, frozenset(listed), frozenset(commented - listed))


def _squash(text: str) -> str:
    return text.replace('"', "").replace("\\", "")


def _from_input(source: str, text: str, base: Path) -> bool:
    """Whether an item's source is one the file names: a URL in it, or a path resolved from one."""
    if is_url(source):
        return _squash(source) in _squash(text)
    path = Path(source)
    if not path.is_absolute():
        return False
    if _squash(path.name) in _squash(text):
        return True
    # '.', '..', '~', '/' and 'a/..' resolve to a folder whose name the file need not contain
    return path in {base, *base.parents, Path.home(), *Path.home().parents}


def check_source_file(doc: TextDoc, directory: Path, suffix: str) -> str:
    """The sources property for one generated file written to `directory`; returns the outcome."""
    path = directory / f"input{suffix}"
    path.write_bytes(doc.data)
    try:
        items = expand_sources([str(path)])
    except SourceError as exc:
        message = str(exc)
        assert str(path) in message, f"the error does not name the file: {message!r}"
        assert len(message) > len(str(path)) + 10, f"the error does not say why: {message!r}"
        return "SourceError"
    text, _ = decode_text(doc.data)  # as the reader decoded it (its detection is tested on its own)
    base = path.parent.resolve()
    sources = [item.source for item in items]
    assert len(sources) == len(set(sources)), "duplicate items"
    assert len(items) <= len(text.splitlines()) + 1, "more items than lines"
    for item in items:
        if item.error is not None:  # an unreadable row: named by its line, the error says which and why
            line = item.source.rsplit(":", 1)[-1]
            assert item.source == f"{path}:{line}" and line.isdigit(), f"a failed row not named FILE:LINE: {item!r}"
            assert item.error.startswith(f"{path.name} line {line}: ") and len(item.error) > 30, item.error
            assert not item.meta
            continue
        assert item.source and _from_input(item.source, text, base), f"source not from the file: {item.source!r}"
        for key, value in item.meta.items():
            assert key and _squash(key.strip()) in _squash(text), f"metadata key not from the file: {key!r}"
            assert _squash(value) in _squash(text), f"metadata value not from the file: {value!r}"
    missing = doc.expected_urls - set(sources)
    assert not missing, f"URLs listed in the file but not returned: {sorted(missing)}"
    from_comments = doc.forbidden_urls & set(sources)
    assert not from_comments, f"URLs from comment lines returned: {sorted(from_comments)}"
    return "items" if items else "no items"


def check_csv(doc: TextDoc, directory: Path) -> str:
    return check_source_file(doc, directory, ".csv")


def check_list(doc: TextDoc, directory: Path) -> str:
    return check_source_file(doc, directory, ".txt")


# --- images: mutated real files ----------------------------------------------------------------------

FUZZ_MAX_PIXELS = 4_000_000  # small limits: no mutated header may make a test allocate gigabytes


@contextlib.contextmanager
def small_pixel_limit(limit: int = FUZZ_MAX_PIXELS) -> Iterator[None]:
    """Lower the decoder's pixel cap (and Pillow's bomb guard with it) while fuzzing."""
    old = images.MAX_PIXELS, Image.MAX_IMAGE_PIXELS
    images.MAX_PIXELS = Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        images.MAX_PIXELS, Image.MAX_IMAGE_PIXELS = old


def _photo(source: Path | None) -> Image.Image:
    if source is not None and source.is_file():
        with Image.open(source) as im:
            return im.convert("RGB")
    # without the benchmark data: a synthetic photo-like gradient with some texture
    y, x = np.mgrid[0:240, 0:320]
    arr = np.stack([x * 255 // 320, y * 255 // 240, (x * y) % 251], axis=-1).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _save(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def seed_images(photo: Path | None = UKBENCH / "ukbench00000.jpg") -> dict[str, bytes]:
    """Small real files of every format and mode the decoder handles, made from one photo."""
    original = photo.read_bytes() if photo is not None and photo.is_file() else None
    img = _photo(photo)
    small = img.resize((48, 36))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the decoder must turn it upright
    rgba = small.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(small.size))
    palette = small.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    gray16 = Image.fromarray(np.asarray(small.convert("L"), np.uint16) * 257)  # mode I;16
    frames = [small, small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    seeds = {
        "jpeg": _save(small, "JPEG", quality=80),
        "jpeg-progressive": _save(small, "JPEG", quality=70, progressive=True),
        "jpeg-exif-rotated": _save(small, "JPEG", exif=exif.tobytes()),
        "jpeg-cmyk": _save(small.convert("CMYK"), "JPEG"),
        "jpeg-gray": _save(small.convert("L"), "JPEG"),
        "png": _save(small, "PNG"),
        "png-rgba": _save(rgba, "PNG"),
        "png-palette-transparent": _save(palette, "PNG", transparency=0),
        "png-16bit-gray": _save(gray16, "PNG"),
        "png-gray-alpha": _save(rgba.convert("LA"), "PNG"),
        "gif-animated": _save(frames[0].convert("P"), "GIF", save_all=True, append_images=[frames[1].convert("P")],
                              duration=100, loop=0),
        "webp": _save(small, "WEBP", quality=70),
        "webp-lossless-alpha": _save(rgba, "WEBP", lossless=True),
        "tiff": _save(small, "TIFF"),
        "tiff-lzw": _save(small, "TIFF", compression="tiff_lzw"),
        "tiff-exif-rotated": _save(small, "TIFF", exif=exif.tobytes()),
        "bmp": _save(small, "BMP"),
        "bmp-palette": _save(palette, "BMP"),
    }
    if original is not None:
        seeds["photo-jpeg"] = original  # a real camera JPEG as it is (320x240)
    return seeds


_INTERESTING = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x3FFF, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF,
                0x80000000, 0xFFFFFFFF]


def _chunks() -> st.SearchStrategy[bytes]:
    """Well-formed-looking pieces of image structure to insert: PNG chunks, JPEG segments, TIFF IFDs."""
    body = st.binary(max_size=40)
    png = st.builds(lambda kind, data: struct.pack(">I", len(data)) + kind + data
                    + struct.pack(">I", zlib.crc32(kind + data)),
                    st.sampled_from([b"IHDR", b"IDAT", b"IEND", b"PLTE", b"tRNS", b"acTL", b"fcTL", b"eXIf", b"zzZz"]),
                    body)
    jpeg = st.builds(lambda marker, data: b"\xff" + bytes([marker]) + struct.pack(">H", len(data) + 2) + data,
                     st.sampled_from([0xC0, 0xC2, 0xC4, 0xDA, 0xDB, 0xDD, 0xE1, 0xEE, 0xFE, 0xD9]), body)
    length_field = st.builds(lambda fmt, v: struct.pack(fmt, v & (0xFFFF if fmt[-1] == "H" else 0xFFFFFFFF)),
                             st.sampled_from([">H", "<H", ">I", "<I"]), st.sampled_from(_INTERESTING))
    return st.one_of(png, jpeg, length_field, st.binary(min_size=1, max_size=64))


@dataclass
class MutatedImage:
    seed: str
    mutations: list[str]
    data: bytes

    def __repr__(self) -> str:
        return f"MutatedImage(seed={self.seed!r}, mutations={self.mutations!r}, data=<{len(self.data)} bytes>)"


def _header_fields(data: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of the width/height/size fields of the file's header."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return [(16, ">I"), (20, ">I"), (24, ">B"), (25, ">B"), (8, ">I")]
    if data[:3] == b"GIF":
        return [(6, "<H"), (8, "<H"), (10, "<B")]
    if data[:2] == b"BM":
        return [(2, "<I"), (10, "<I"), (14, "<I"), (18, "<i"), (22, "<i"), (28, "<H"), (30, "<I"), (46, "<I")]
    if data[:4] == b"RIFF":
        return [(4, "<I"), (16, "<I"), (24, "<H"), (26, "<H"), (27, "<H")]
    if data[:2] in (b"II", b"MM"):
        order = "<" if data[:2] == b"II" else ">"
        return [(4, order + "I"), (8, order + "H"), (18, order + "I"), (30, order + "I")]
    fields = []
    for sof in (b"\xff\xc0", b"\xff\xc2", b"\xff\xda", b"\xff\xc4", b"\xff\xdb"):
        at = data.find(sof)
        if at >= 0:
            fields += [(at + 2, ">H"), (at + 5, ">H"), (at + 7, ">H"), (at + 9, ">B")]
    return fields or [(0, ">I")]


@st.composite
def mutated_images(draw: st.DrawFn, seeds: dict[str, bytes]) -> MutatedImage:
    name = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[name])
    done: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "byte", "truncate", "delete", "insert", "chunk", "field", "field"]))
        size = len(data)
        # half the edits land in the first 64 bytes, where the headers are
        at = draw(st.one_of(st.integers(0, min(63, size)), st.integers(0, size)))
        if op == "flip" and size:
            at = min(at, size - 1)
            bit = draw(st.integers(0, 7))
            data[at] ^= 1 << bit
            done.append(f"flip bit {bit} at {at}")
        elif op == "byte" and size:
            at = min(at, size - 1)
            value = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01]) | st.integers(0, 255))
            data[at] = value
            done.append(f"byte {value:#x} at {at}")
        elif op == "truncate":
            del data[at:]
            done.append(f"truncate at {at}")
        elif op == "delete":
            n = draw(st.integers(1, 64))
            del data[at:at + n]
            done.append(f"delete {n} at {at}")
        elif op in ("insert", "chunk"):
            piece = draw(_chunks() if op == "chunk" else st.binary(min_size=1, max_size=16))
            data[at:at] = piece
            done.append(f"{op} {piece[:24]!r} at {at}")
        else:  # a header size field rewritten
            offset, fmt = draw(st.sampled_from(_header_fields(bytes(data))))
            width = struct.calcsize(fmt)
            if offset + width <= len(data):
                bits = 8 * width
                signed = fmt[-1].islower()
                lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
                value = draw(st.sampled_from([v for v in _INTERESTING if lo <= v <= hi] + [lo, hi])
                             | st.integers(lo, hi))
                data[offset:offset + width] = struct.pack(fmt, value)
                done.append(f"field {fmt} at {offset} = {value}")
    return MutatedImage(name, done, bytes(data))


_SPECS = (Preprocess(), Preprocess(size=32, resize="crop", layout="NHWC", channels="BGR"))


def check_decode(data: bytes) -> str:
    """The decode property for one input: a usable RGB image within the limits, or ImageError."""
    outcome = "decoded"
    for draft in (None, 64):
        try:
            decoded = open_image(data, draft_size=draft)
        except ImageError as exc:
            assert str(exc).strip(), "ImageError without a message"
            outcome = "ImageError"
            continue
        img = decoded.image
        assert isinstance(img, Image.Image) and img.mode == "RGB", f"not an RGB image: {img.mode}"
        w, h = img.size
        assert w >= 1 and h >= 1, f"degenerate size {img.size}"
        assert w * h <= images.MAX_PIXELS, f"{w}x{h} is over the pixel limit {images.MAX_PIXELS}"
        recorded = (decoded.width, decoded.height)
        if draft is None:
            assert img.size in (recorded, recorded[::-1]), f"recorded {recorded}, decoded {img.size}"
        else:  # draft mode may decode at a reduced scale, never larger
            assert (w <= recorded[0] and h <= recorded[1]) or (w <= recorded[1] and h <= recorded[0]), \
                f"recorded {recorded}, drafted {img.size}"
        assert decoded.sha256 == hashlib.sha256(data).hexdigest()
        thumb = thumbnail_jpeg(img, size=64)
        with Image.open(io.BytesIO(thumb)) as t:
            assert t.format == "JPEG" and min(t.size) >= 1 and max(t.size) <= 64, f"bad thumbnail {t.size}"
        for spec in _SPECS:
            arr = to_array(img, spec)
            shape = (3, spec.size, spec.size) if spec.layout == "NCHW" else (spec.size, spec.size, 3)
            assert arr.shape == shape and arr.dtype == np.float32, f"{arr.shape} {arr.dtype}"
            assert np.isfinite(arr).all(), "non-finite model input"
    return outcome


def check_upload(data: bytes, max_pixels: int = 1_000_000, max_bytes: int = 256 * 1024) -> str:
    """The API's upload check for one input: a decoded image of the sniffed type, or 413/415/422."""
    from fastapi import HTTPException

    from imagefinder.api.uploads import EXTENSIONS, check_image
    from imagefinder.ingest.decode import sniff_image_type

    try:
        checked = check_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    except HTTPException as exc:
        assert exc.status_code in (413, 415, 422), f"status {exc.status_code}: {exc.detail}"
        assert isinstance(exc.detail, str) and len(exc.detail) > 10, f"unhelpful detail {exc.detail!r}"
        if data and len(data) <= max_bytes and sniff_image_type(data[:12]) is None:
            assert exc.status_code == 415, f"{exc.status_code} for an unknown type: {exc.detail}"
        return str(exc.status_code)
    assert checked.kind == sniff_image_type(data[:12]) and checked.extension == EXTENSIONS[checked.kind]
    img = checked.decoded.image
    assert img.mode == "RGB" and min(img.size) >= 1, f"{img.mode} {img.size}"
    assert img.width * img.height <= max_pixels, f"{img.size} over the upload limit {max_pixels}"
    return "accepted"


# --- api: schemathesis over the OpenAPI schema ------------------------------------------------------------

# Every operation, with each request body type it accepts. (schemathesis.pytest.from_fixture would
# generate this list itself, but its lazy loader does not work with pytest 9.)
OPERATIONS = [
    ("POST", "/search", "application/json"),
    ("POST", "/search", "multipart/form-data"),
    ("POST", "/search/batch", "application/json"),
    ("POST", "/search/batch", "multipart/form-data"),
    ("POST", "/search/matches", "application/json"),
    ("POST", "/search/matches", "multipart/form-data"),
    ("GET", "/images", None),
    ("POST", "/images", "application/json"),
    ("POST", "/images", "multipart/form-data"),
    ("GET", "/images/{image_id}", None),
    ("GET", "/images/{image_id}/thumbnail", None),
    ("GET", "/images/{image_id}/info", None),
    ("DELETE", "/images/{image_id}", None),
    ("GET", "/duplicates", None),
    ("GET", "/stats", None),
    ("GET", "/health", None),
]
# Negative (schema-violating) requests need something to violate: /stats and /health take no input.
API_CASES = [(m, p, t, mode) for m, p, t in OPERATIONS for mode in ("positive", "negative")
             if mode == "positive" or p not in ("/stats", "/health")]


def api_case_id(method: str, path: str, media_type: str | None, mode: str) -> str:
    return f"{method} {path} {media_type or ''} {mode}".replace("  ", " ")


def api_strategy(schema: Any, method: str, path: str, media_type: str | None, mode: str) -> st.SearchStrategy:
    from schemathesis import GenerationMode

    operation = schema[path][method]
    kwargs = {"media_type": media_type} if media_type else {}
    return operation.as_strategy(generation_mode=GenerationMode(mode), **kwargs)


def check_api_case(case: Any) -> str:
    """One generated request, sent for real: no 5xx, documented answers match schema and type."""
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

    response = case.call_and_validate(
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance], timeout=60)
    return str(response.status_code)


@contextlib.contextmanager
def offline_urls() -> Iterator[None]:
    """Generated URLs pass through the real SSRF checks, but nothing is resolved or contacted."""
    from imagefinder.net import client, policy
    from imagefinder.net.errors import FetchError

    def resolve(host: str, port: int) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]  # IP literals are checked as they are
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, "name lookups are disabled while fuzzing") from None

    def no_connection(*args: object, **kwargs: object) -> None:
        raise FetchError("connections are disabled while fuzzing")

    saved = policy.resolve_host, client._send
    policy.resolve_host, client._send = resolve, no_connection
    try:
        yield
    finally:
        policy.resolve_host, client._send = saved


def build_api_index(root: Path, embedder: Any = None) -> Path:
    """The built-in 45-image sample, indexed into `root`/index: a real index for the API to serve."""
    from imagefinder import build_index
    from imagefinder.sample import write_sample

    images_dir, _query = write_sample(root / "images")
    build_index([str(images_dir)], root / "index", embedder=embedder, workers=4)
    return root / "index"


def api_settings() -> Any:
    from imagefinder.api import Settings

    return Settings(max_upload_bytes=512 * 1024, max_pixels=1_000_000)
