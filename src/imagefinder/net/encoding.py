"""Content-Encoding decoded as it streams, in bounded pieces, so the byte cap sees every decoded byte.

httpx's own decoders turn each network chunk into all of its decoded output at once: a 2 KB
body with ``Content-Encoding: gzip, gzip`` (1 GiB of zeros) becomes one 1 GiB ``bytes`` before
any cap is checked. Here every layer inflates with zlib's ``max_length``, at most `PIECE`
bytes per step, and hands each piece to the next layer before producing another, so memory
per fetch is a few pieces plus zlib's 32 KiB windows whatever the ratio, and the reader can
stop at the cap after the piece that crossed it.

Only what zlib decodes is accepted (gzip, deflate; `ACCEPT_ENCODING` asks for no more), and at
most `MAX_LAYERS` of them stacked: anything else is refused, never passed on undecoded.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

from .errors import FetchError

__all__ = ["ACCEPT_ENCODING", "MAX_LAYERS", "PIECE", "Decoder"]

ACCEPT_ENCODING = "gzip, deflate"
MAX_LAYERS = 3  # "gzip, gzip" is legal, if odd; a longer stack is only ever an attack
PIECE = 64 * 1024  # decoded bytes per inflate step (the largest buffer a layer holds)
_GZIP_WBITS = zlib.MAX_WBITS | 16
_CODINGS = {"gzip": _GZIP_WBITS, "x-gzip": _GZIP_WBITS, "deflate": zlib.MAX_WBITS}


class _Inflate:
    """One gzip or deflate layer: pieces in, pieces of at most PIECE decoded bytes out."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self.z = zlib.decompressobj(_CODINGS[coding])
        self.fed = False
        # "deflate" should be zlib-wrapped, but servers send raw deflate too: the first bytes are
        # kept until zlib has checked its 2-byte header, to be replayed as raw deflate if it fails
        self.head: bytes | None = b"" if coding == "deflate" else None

    def feed(self, data: bytes) -> Iterator[bytes]:
        pending = True  # a full piece means zlib may hold more output even with no input left
        while not self.z.eof and (data or pending):
            try:
                out = self.z.decompress(data, PIECE)
            except zlib.error as exc:
                if self.head is not None:
                    self.z, data, self.head = zlib.decompressobj(-zlib.MAX_WBITS), self.head + data, None
                    continue
                raise FetchError(f"the {self.coding} body is corrupt: {exc}", f"corrupt response: {exc}") from None
            tail = self.z.unconsumed_tail
            if self.head is not None:
                self.head += data[:len(data) - len(tail)]
                self.head = self.head if len(self.head) < 2 else None
            self.fed = self.fed or bool(data)
            data, pending = tail, len(out) == PIECE
            if out:
                yield out
        # bytes after the end of the stream are ignored (as browsers and httpx do)

    def finish(self) -> bytes:
        if self.fed and not self.z.eof:
            raise FetchError(f"the {self.coding} body ends early", "corrupt response: compressed body ends early")
        return self.z.flush()


class Decoder:
    """The layers a ``Content-Encoding`` header names, undone in reverse order, piece by piece."""

    def __init__(self, header: str | None) -> None:
        codings = [c.strip().lower() for c in (header or "").split(",")]
        codings = [c for c in codings if c and c != "identity"]
        unknown = [c for c in codings if c not in _CODINGS]
        if unknown:
            raise FetchError(f"unsupported Content-Encoding {unknown[0]!r} (only gzip and deflate are decoded)",
                             f"unsupported content-encoding: {unknown[0][:40]}")
        if len(codings) > MAX_LAYERS:
            raise FetchError(f"Content-Encoding stacks {len(codings)} layers; at most {MAX_LAYERS} are decoded",
                             f"unsupported content-encoding: {len(codings)} layers")
        self.layers = [_Inflate(c) for c in reversed(codings)]  # the last applied is undone first

    def decode(self, chunk: bytes) -> Iterator[bytes]:
        """The decoded pieces of one raw chunk (lazily: stop iterating and nothing more is inflated)."""
        return self._through(0, (chunk,))

    def finish(self) -> Iterator[bytes]:
        """What the layers still hold once the raw body has ended; FetchError if a stream was cut short."""
        for i, layer in enumerate(self.layers):
            yield from self._through(i + 1, (layer.finish(),))

    def _through(self, first: int, pieces: Iterable[bytes]) -> Iterator[bytes]:
        if first == len(self.layers):
            yield from (p for p in pieces if p)
            return
        layer = self.layers[first]
        for piece in pieces:
            yield from self._through(first + 1, layer.feed(piece))
