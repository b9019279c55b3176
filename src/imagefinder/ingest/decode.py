"""Decode and preprocess: any image file a user has -> a normalised model input.

Everything that can go wrong with an image file is turned into `ImageError` with a reason
a person understands, so the pipeline can record it per item and carry on.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageFinderError

# Pillow's decompression-bomb guard: refuse images with more pixels than this (raise, not warn).
MAX_PIXELS = 128_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# The formats those extensions name (and the downloader and API sniff): Pillow can open dozens
# more (PSD, ICO, TGA, EPS, ...), but each is more decoder code facing untrusted bytes, and a
# file of another format behind an image name is a mistake worth reporting.
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
THUMBNAIL_SIZE = 256
# A bounded decode (`open_image(draft_size=...)`) keeps at most this many times draft_size²
# pixels: a square image keeps its short side >= draft_size, a panorama is reduced further.
KEPT_PIXELS_FACTOR = 16
BAND_PIXELS = 1 << 20  # converted to RGB per band while reducing, so no full-size RGB copy exists
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


class ImageError(ImageFinderError, ValueError):
    """An input that is not a usable image; the message says why."""


@dataclass(frozen=True)
class Preprocess:
    """How a backbone wants its input: recorded in the manifest, so it is plain data."""

    size: int = 224
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)  # in 0..255 pixel units
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    # "squash": whole image to size x size (aspect ratio lost); "crop": short side, centre crop;
    # "long": aspect ratio kept, the long side to `size`, each side rounded to a multiple of
    # `multiple` (the backbone's stride: few distinct shapes to batch, no partial cells)
    resize: str = "squash"
    crop_ratio: float = 0.875  # for "crop": resize short side to size / crop_ratio first
    layout: str = "NCHW"  # or "NHWC"
    channels: str = "RGB"  # or "BGR"
    multiple: int = 32  # for "long"
    # for "long": False never enlarges (the long side is min(size, the image's own)), so a small
    # image or a crop keeps its pixels' scale instead of magnifying its JPEG artefacts
    enlarge: bool = True

    def to_dict(self) -> dict:
        # `enlarge` only when off: manifests and cache keys of every earlier build stay as they were
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()
                if not (k == "enlarge" and v)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fields)


@dataclass
class Decoded:
    """A decoded image: RGB pixels plus the facts the id table records."""

    image: Image.Image
    width: int
    height: int
    sha256: str


def open_image(data: bytes | Path, draft_size: int | None = None, max_pixels: int = MAX_PIXELS) -> Decoded:
    """Decode bytes or a file into an upright RGB image, once.

    Handles EXIF orientation, palette/alpha/CMYK/16-bit modes and animations (first frame).
    `draft_size` bounds the memory of the result: JPEG decodes at a reduced scale (DCT scaling),
    other formats are reduced by an integer factor band by band while converting to RGB, so
    only the decoder's own buffer is ever full size; the short side never goes below that size
    (see `reduction`). Images over `max_pixels` are refused from their header, before decoding.
    """
    raw = _read_bytes(data)
    if not raw:
        raise ImageError("empty file (0 bytes)")
    digest = hashlib.sha256(raw).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw), formats=SUPPORTED_FORMATS)
            width, height = img.size
            check_pixels(width, height, max_pixels)
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.seek(0)  # first frame of animations
            img.load()
            orientation = _orientation(img)
            factor = reduction(*img.size, draft_size) if draft_size else 1
            # _upright, not ImageOps.exif_transpose: that copies the whole image even when upright
            rgb = _upright(_reduced_rgb(img, factor) if factor > 1 else _to_rgb(img), orientation)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"decompression bomb refused: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(_unidentified(raw)) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from exc
    if min(rgb.size) < 1:
        raise ImageError(f"degenerate image size {rgb.size}")
    # Orientation may swap width/height: record the upright size the user sees.
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return Decoded(rgb, width, height, digest)


def too_many_pixels(limit: int, width: int = 0, height: int = 0) -> str:
    """The one wording of the pixel limit (the API's 413 quotes it; /stats reports the same limit)."""
    if width and height:
        return f"too many pixels: {width}x{height} = {width * height:,} pixels, the limit is {limit:,}"
    return f"too many pixels: its header declares more than the limit of {limit:,} pixels"


def check_pixels(width: int, height: int, limit: int) -> None:
    if width * height > limit:
        raise ImageError(too_many_pixels(limit, width, height))


def probe_size(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Width and height from the header alone (no pixel decoding), (0, 0) if unreadable.

    ImageError (`too_many_pixels`) when over `max_pixels`, also for headers so large that
    Pillow refuses to open them at all, so every refusal quotes the same limit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as probe:
                size = probe.size
    except Image.DecompressionBombError:
        raise ImageError(too_many_pixels(max_pixels)) from None
    except Exception:  # noqa: BLE001 - corrupt files get a proper message from open_image
        return 0, 0
    check_pixels(*size, max_pixels)
    return size


def reduction(width: int, height: int, size: int) -> int:
    """The integer factor a bounded decode reduces by: the short side stays >= `size` (what the
    model and the thumbnail resize from), and at most KEPT_PIXELS_FACTOR x size² pixels are kept."""
    by_side = max(1, min(width, height) // size)
    by_pixels = math.ceil(math.sqrt(width * height / (KEPT_PIXELS_FACTOR * size * size)))
    return max(by_side, by_pixels, 1)


def _reduced_rgb(img: Image.Image, factor: int) -> Image.Image:
    """`img` reduced by `factor` (box filter), as RGB, converted one band of rows at a time."""
    width, height = img.size
    out = Image.new("RGB", ((width + factor - 1) // factor, (height + factor - 1) // factor))
    band = factor * max(1, BAND_PIXELS // (width * factor))
    peak = _peak(img)
    for top in range(0, height, band):
        strip = _to_rgb(img.crop((0, top, width, min(top + band, height))), peak)
        out.paste(strip.reduce(factor), (0, top // factor))
    return out


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - corrupt EXIF raises anything; it is ignored, as exif_transpose does
        return 1


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    method = _ORIENTATION.get(orientation)
    return img.transpose(method) if method is not None else img


def _unidentified(raw: bytes) -> str:
    """Why bytes that no supported decoder accepts are refused: name what they are, if that is known."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(raw)) as other:  # reads the header only
                known = other.format
    except Exception:  # noqa: BLE001 - not an image Pillow knows either
        known = None
    if known:
        return f"unsupported image format {known} (supported: {', '.join(SUPPORTED_FORMATS)})"
    head = raw[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<body" in head:
        return "not a recognised image format (the file is an HTML page)"
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "not a recognised image format (the file is an SVG drawing; vector images are not supported)"
    return "not a recognised image format"


_ESCAPED_BYTE = re.compile(rb"\\x([89a-f][0-9a-f])")


def path_text(path: str | Path) -> str:
    """A local path as text any UTF-8 store (SQLite, JSON) can hold, and `open_image` can open.

    A file name that is not valid UTF-8 (Linux names are bytes) keeps its bad bytes as ``\\xNN``,
    as ``ls -b`` shows them; without this it could not be recorded in the index at all.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _unescaped(path: Path) -> Path:
    """The file `path_text` named: `path` itself if it exists, else with its ``\\xNN`` escapes undone."""
    raw = os.fsencode(path)
    if b"\\x" not in raw or path.exists():
        return path
    return Path(os.fsdecode(_ESCAPED_BYTE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)))


def _read_bytes(data: bytes | Path) -> bytes:
    if isinstance(data, bytes):
        return data
    try:
        return _unescaped(Path(data)).read_bytes()
    except IsADirectoryError as exc:
        raise ImageError("is a directory, not an image file") from exc
    except PermissionError as exc:
        raise ImageError("permission denied reading the file") from exc
    except FileNotFoundError as exc:
        raise ImageError("file not found") from exc
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from exc


def _peak(img: Image.Image) -> float | None:
    """The brightest value of a 16/32-bit image (its scale to 8 bits), None for other modes."""
    if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
        return None
    extrema = img.getextrema()
    return float(extrema[1]) if isinstance(extrema[1], (int, float)) else None


def _to_rgb(img: Image.Image, peak: float | None = None) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited on white, as a viewer shows it.

    `peak`: the brightest value of the whole image, when `img` is one band of a 16-bit image."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        if peak is None:
            peak = arr.max() if arr.size else 0
        scale = 255.0 / (65535.0 if peak > 255 else 255.0)
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" or img.mode == "PA" or "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def long_side_size(width: int, height: int, spec: Preprocess) -> tuple[int, int]:
    """(w, h) an image of `width` x `height` is resized to under `resize="long"`."""
    long = max(width, height)
    scale, m = (spec.size if spec.enlarge else min(spec.size, long)) / long, max(1, spec.multiple)
    return max(m, round(width * scale / m) * m), max(m, round(height * scale / m) * m)


def to_array(img: Image.Image, spec: Preprocess) -> np.ndarray:
    """Resize and normalise one RGB image to the backbone's float32 layout (no batch axis)."""
    if spec.resize == "long":
        img = img.resize(long_side_size(img.width, img.height, spec), Image.Resampling.BILINEAR, reducing_gap=2.0)
    elif spec.resize == "crop":
        short = round(spec.size / spec.crop_ratio)
        img = ImageOps.fit(img, (short, short), Image.Resampling.BILINEAR)
        offset = (short - spec.size) // 2
        img = img.crop((offset, offset, offset + spec.size, offset + spec.size))
    else:
        img = img.resize((spec.size, spec.size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    # Reorder while the pixels are still uint8 (a quarter of the bytes), convert once into a
    # contiguous float32 array, then scale and shift it in place: one float pass instead of four.
    pixels = np.asarray(img)
    if spec.channels == "BGR":
        pixels = pixels[:, :, ::-1]
    if spec.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    arr: np.ndarray = np.ascontiguousarray(pixels, dtype=np.float32)
    shape = (3, 1, 1) if spec.layout == "NCHW" else (1, 1, 3)
    arr -= np.asarray(spec.mean, np.float32).reshape(shape)  # mean and std are in the output's channel order
    arr /= np.asarray(spec.std, np.float32).reshape(shape)
    return arr


def thumbnail_jpeg(img: Image.Image, size: int = THUMBNAIL_SIZE) -> bytes:
    """A small JPEG for result grids; kept in the index so originals need not be reachable."""
    # resize() makes the one new image; thumbnail() would need a copy of the whole input first
    scale = size / max(img.size)
    thumb = img if scale >= 1 else img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                              Image.Resampling.BILINEAR, reducing_gap=2.0)
    buf = io.BytesIO()
    thumb.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def sniff_image_type(head: bytes) -> str | None:
    """The format of an image from its magic bytes (servers and file names lie), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    return None


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS
