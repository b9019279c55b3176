"""Content-Encoding decoded in bounded pieces: a stacked gzip bomb stops at the byte cap, in little memory.

The bomb is real (1 GiB of zeros, gzip'ed twice: about 2 KB on the wire), served by the
session's HTTP server on 127.0.0.1 with ``Content-Encoding: gzip, gzip``; each fetch runs in a
fresh subprocess that reports its own peak RSS (VmHWM) before and after, so the figure is the
fetch's alone. Before the streaming decoder, httpx inflated the whole first network chunk
(1 GiB) before the cap was checked.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from imagefinder.net.encoding import PIECE, Decoder
from imagefinder.net.errors import FetchError

GIB = 1 << 30
MAX_GROWTH = 100 * 1024 * 1024  # the goal for one bombed fetch


def gzip_stream(chunks) -> bytes:
    """gzip of the concatenated chunks, compressed as they come (never the whole input in memory)."""
    z = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    return b"".join([*(z.compress(c) for c in chunks), z.flush()])


@pytest.fixture(scope="module")
def bomb() -> bytes:
    zeros = bytes(1 << 20)
    jpeg_start = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"  # so the crawl's signature check lets it through
    once = gzip_stream([jpeg_start, *(zeros for _ in range(GIB // len(zeros)))])
    twice = gzip.compress(once, 9)
    assert len(twice) < 4096, len(twice)
    return twice


# -- the decoder itself --------------------------------------------------------------------------


def decode_all(header: str | None, body: bytes, step: int) -> bytes:
    d = Decoder(header)
    out = [p for i in range(0, len(body), step) for p in d.decode(body[i:i + step])]
    return b"".join(out + list(d.finish()))


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20])
def test_decoder_round_trips_every_supported_coding_whatever_the_chunking(step: int) -> None:
    data = os.urandom(50_000) + bytes(300_000) + b"tail"
    raw_deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    cases = {
        None: data,
        "identity": data,
        "gzip": gzip.compress(data),
        "x-gzip": gzip.compress(data),
        "deflate": zlib.compress(data),  # zlib-wrapped, as the RFC says
        "Deflate": raw_deflate.compress(data) + raw_deflate.flush(),  # raw, as some servers send it
        "gzip, gzip": gzip.compress(gzip.compress(data)),
        "deflate, identity, gzip": gzip.compress(zlib.compress(data)),
    }
    for header, body in cases.items():
        assert decode_all(header, body, step) == data, header


def test_decoder_hands_out_bounded_pieces_and_stops_when_the_reader_stops(bomb: bytes) -> None:
    d = Decoder("gzip, gzip")
    seen = 0
    for piece in d.decode(bomb):
        assert len(piece) <= PIECE
        seen += len(piece)
        if seen > 10 * PIECE:
            break  # what read_into does at the cap: nothing more is inflated
    assert seen == 11 * PIECE


@pytest.mark.parametrize(("header", "body", "reason"), [
    ("br", b"x", "unsupported content-encoding: br"),
    ("gzip, gzip, gzip, gzip", b"x", "unsupported content-encoding: 4 layers"),
    ("gzip", b"not gzip at all", "corrupt response"),
    ("gzip", gzip.compress(b"x" * 10_000)[:-12], "compressed body ends early"),
])
def test_decoder_refuses_what_it_cannot_decode(header: str, body: bytes, reason: str) -> None:
    with pytest.raises(FetchError) as caught:
        decode_all(header, body, 1024)
    assert reason in caught.value.reason


# -- the bomb over a real socket, both fetch paths -----------------------------------------------

PROBE = r"""
import json, sys
from pathlib import Path
from imagefinder.net.client import safe_fetch
from imagefinder.ingest.download import DownloadConfig, Downloader
from imagefinder.net.errors import FetchError

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

kind, url, cache = sys.argv[1:4]
before = hwm()
if kind == "api":
    try:
        safe_fetch(url, allow_private=True)
        error = None
    except FetchError as exc:
        error = [type(exc).__name__, str(exc), exc.reason]
else:
    with Downloader(DownloadConfig(cache_dir=Path(cache), retries=0)) as d:
        result = d.fetch(url)
    error = None if result.ok else ["FetchResult", result.error, result.error]
print(json.dumps({"before": before, "after": hwm(), "error": error}))
"""


def run_probe(kind: str, url: str, cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-c", PROBE, kind, url, str(cache)], capture_output=True, text=True,
                          timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["api", "crawl"])
def test_stacked_gzip_bomb_is_refused_at_the_cap_in_little_memory(kind: str, bomb: bytes, http_server,
                                                                   tmp_path: Path) -> None:
    path = f"/bomb-{kind}.jpg"
    url = http_server.route(path, bomb, "image/jpeg", headers={"Content-Encoding": "gzip, gzip"})
    probe = run_probe(kind, url, tmp_path / "cache")
    growth = probe["after"] - probe["before"]
    print(f"{kind}: peak RSS {probe['before'] / 2**20:.0f} MB -> {probe['after'] / 2**20:.0f} MB "
          f"(+{growth / 2**20:.1f} MB) for a {len(bomb)}-byte gzip,gzip body of 1 GiB")
    assert probe["error"] is not None, "the bomb was accepted"
    cls, message, reason = probe["error"]
    cap = 20 * 1024 * 1024 if kind == "api" else 50 * 1024 * 1024
    assert f"too large: more than {cap} bytes" in reason
    if kind == "api":  # the person who sent the URL is told which URL and which cap
        assert cls == "FetchTooLarge" and url in message and str(cap) in message, message
    assert growth < MAX_GROWTH, f"peak RSS grew by {growth / 2**20:.0f} MB"
    assert not list((tmp_path / "cache").glob("*")), "a partial download was left in the cache"
