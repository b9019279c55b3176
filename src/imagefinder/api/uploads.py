"""Request bodies and images from strangers: size caps while reading, magic bytes, pixel caps.

Every check raises HTTPException with the status a client can act on:
413 (too big: bytes or pixels), 415 (not an image type we read), 422 (a broken image or
a bad field). Messages say what to fix and never echo server paths.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from fastapi import HTTPException, Request
from starlette.datastructures import FormData
from starlette.requests import ClientDisconnect
from starlette.types import Message

from ..ingest.decode import Decoded, ImageError, open_image, probe_size, sniff_image_type, too_many_pixels

FORMATS = "JPEG, PNG, GIF, WebP, BMP or TIFF"
EXTENSIONS = {"jpeg": "jpg", "png": "png", "gif": "gif", "webp": "webp", "bmp": "bmp", "tiff": "tif"}
DRAFT_SIZE = 512  # images decode at reduced scale, short side >= this (>= every backbone's input and the thumbnail)


MAX_FILENAME = 255


def client_filename(name: str | None) -> str | None:
    """The name a client gave its upload, made safe to store and show back: a label, never a path.

    Uploads are saved under the SHA-256 of their contents; the client's name is only metadata.
    It keeps its last part (after any '/' or '\\'), printable characters only, at most
    MAX_FILENAME characters (the extension kept); None when nothing is left.
    """
    if not name:
        return None
    name = re.split(r"[/\\]", "".join(ch for ch in name if ch.isprintable()))[-1].strip()
    if name in ("", ".", ".."):
        return None
    if len(name) > MAX_FILENAME:
        _stem, dot, ext = name.rpartition(".")
        ext = dot + ext if dot and len(ext) <= 16 else ""
        name = name[:MAX_FILENAME - len(ext)] + ext
    return name


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n:,} bytes"


def too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"the upload is too large: the limit is {_mb(limit)}; send a smaller image")


async def read_body(request: Request, limit: int, shown_limit: int | None = None, timeout: float = 60.0) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes.

    `shown_limit` is the size the error message quotes (the image cap, without the room
    allowed for multipart headers).

    A declared Content-Length over the limit is refused before reading; a chunked body is
    counted while it streams, so no more than `limit` bytes are ever held. A body still not
    complete after `timeout` seconds is answered 408 (a slow client must not hold a request open).
    """
    try:
        async with asyncio.timeout(timeout):
            return await _read_body(request, limit, shown_limit)
    except TimeoutError:
        raise HTTPException(408, f"the request body did not arrive within {timeout:g} s; send it faster or "
                                 "send a smaller image", headers={"Connection": "close"}) from None


async def _read_body(request: Request, limit: int, shown_limit: int | None) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPException(400, "invalid Content-Length header") from None
        if size > limit:
            raise too_large(shown_limit or limit)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large(shown_limit or limit)
    except ClientDisconnect:
        raise HTTPException(400, "the client disconnected before sending the whole request") from None
    return bytes(body)


async def parse_form(request: Request, body: bytes, max_files: int) -> FormData:
    """Multipart form from an already size-checked body (Starlette re-reads it from memory)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=max_files, max_fields=20)
    except HTTPException as exc:
        raise HTTPException(422, f"malformed multipart/form-data body: {exc.detail}") from None
    except Exception as exc:  # noqa: BLE001 - the multipart parser's own errors, whatever their type
        raise HTTPException(422, f"malformed multipart/form-data body: {exc}") from None


@dataclass
class CheckedImage:
    data: bytes
    kind: str  # jpeg, png, ...
    decoded: Decoded

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.kind]


def check_image(data: bytes, *, max_bytes: int, max_pixels: int, draft_size: int = DRAFT_SIZE,
                what: str = "the file") -> CheckedImage:
    """Bytes -> a decoded image, or the HTTP error that tells the client what to fix.

    The image is decoded once, at a bounded size (`open_image(draft_size=...)`): what is kept is
    what the model and the thumbnail need, never a full-size RGB copy of a big image. Callers
    run this in a CPU slot (`Service.cpu`), so the decodes in progress are bounded too."""
    if not data:
        raise HTTPException(422, f"{what} is empty (0 bytes); choose an image file")
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    kind = sniff_image_type(data[:12])
    if kind is None:
        raise HTTPException(415, f"{what} is not a supported image: its contents are not {FORMATS} "
                                 "(the type is checked from the file's first bytes, not its name)")
    try:
        probe_size(data, max_pixels)  # a header-only bomb is refused before any pixel is decoded
        decoded = open_image(data, draft_size=draft_size, max_pixels=max_pixels)
    except ImageError as exc:
        message = str(exc)
        if message.startswith("decompression bomb"):  # Pillow's own guard: quote our limit, not Pillow's
            message = too_many_pixels(max_pixels)
        if message.startswith("too many pixels"):
            raise HTTPException(413, f"the image is too large: {message}; resize it and try again") from None
        raise HTTPException(422, f"cannot read {what} as a {kind.upper()} image: {message}") from None
    return CheckedImage(data, kind, decoded)
