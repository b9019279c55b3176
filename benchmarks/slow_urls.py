"""Slow URLs in an ingest: 300 good URLs, then the same plus one trickling and one silent URL.

All on 127.0.0.1: the good images (UKBench) from a threaded HTTP server, and a raw server
whose /trickle.jpg sends its headers and then one byte every 2 s, and whose /silent.jpg sends
its headers and then nothing (both for up to 10 minutes). Each run is `build_index` over a
list file, with a fresh download cache, a warm model and `DownloadConfig(timeout=T)`; a slow
URL ends after about one timeout T: the trickle is given up once it has streamed for T below
1 KB/s (it never lets a read time out), the silent one at its read timeout (a body that stalls is
not retried). The run's floor is therefore max(the good work, T).

    python benchmarks/slow_urls.py --timeout 20 --timeout 5     # prints one JSON object per run
    python benchmarks/slow_urls.py --spread                     # trickle first, silent one in the middle
    PYTHONPATH=../main/src python benchmarks/slow_urls.py ...    # the same against another tree

The figures depend on the machine's load (say `uptime` with them); compare the runs of one call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import socketserver
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

UKBENCH = Path(__file__).resolve().parents[2] / "shared/data/ukbench1000/images"


def good_server(images: list[bytes]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = images[int(self.path.strip("/").split(".")[0]) % len(images)]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


class _Slow(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        with contextlib.suppress(OSError):
            sock.recv(65536)  # the request (one server per behaviour: its path does not matter)
            # a real JPEG start, so the downloader's signature check passes and only time can end it
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
                         b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00")
            end = time.monotonic() + 600
            while time.monotonic() < end:
                readable, _, _ = select.select([sock], [], [], 2.0)
                if readable and not sock.recv(4096):
                    return  # the client gave up
                if self.server.trickle:  # type: ignore[attr-defined]
                    sock.sendall(b"\x00")


def slow_server(trickle: bool) -> socketserver.ThreadingTCPServer:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Slow)
    server.daemon_threads = True
    server.trickle = trickle  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run(urls: list[str], timeout: float, embedder) -> dict:
    from imagefinder import build_index
    from imagefinder.ingest.download import DownloadConfig

    with tempfile.TemporaryDirectory(prefix="slow-urls-") as tmp:
        listing = Path(tmp) / "urls.txt"
        listing.write_text("\n".join(urls) + "\n")
        config = DownloadConfig(cache_dir=Path(tmp) / "cache", timeout=timeout)
        start = time.perf_counter()
        report = build_index([str(listing)], Path(tmp) / "index", embedder=embedder, download=config)
        seconds = time.perf_counter() - start
    return {"urls": len(urls), "timeout": timeout, "seconds": round(seconds, 1), "indexed": report.indexed,
            "failed": report.failed, "failure_reasons": report.failure_reasons}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--good", type=int, default=300)
    parser.add_argument("--timeout", type=float, action="append", help="fetch timeout T (repeatable; default 20)")
    parser.add_argument("--spread", action="store_true",
                        help="the trickle first and the silent URL in the middle (default: both first)")
    args = parser.parse_args()
    from PIL import Image

    from imagefinder.embed import Embedder

    images = [p.read_bytes() for p in sorted(UKBENCH.glob("*.jpg"))[:args.good]]
    good = good_server(images)
    trickle, silent = slow_server(True), slow_server(False)
    base = f"http://127.0.0.1:{good.server_address[1]}"
    urls = [f"{base}/{n}.jpg" for n in range(args.good)]
    slow = [f"http://127.0.0.1:{trickle.server_address[1]}/trickle.jpg",
            f"http://127.0.0.1:{silent.server_address[1]}/silent.jpg"]
    embedder = Embedder("efficientnet-lite0")
    embedder.embed_prepared([embedder.prepare(Image.new("RGB", (64, 64)))])  # warm: session made before timing
    import imagefinder

    print(json.dumps({"load": os.getloadavg(), "src": imagefinder.__file__}), flush=True)
    for timeout in args.timeout or [20.0]:
        baseline = run(urls, timeout, embedder)
        print(json.dumps({"run": "good only", **baseline}), flush=True)
        half = len(urls) // 2
        mixed = [slow[0], *urls[:half], slow[1], *urls[half:]] if args.spread else slow + urls
        with_slow = run(mixed, timeout, embedder)
        print(json.dumps({"run": "good + trickle + silent", "spread": args.spread, **with_slow,
                          "ratio": round(with_slow["seconds"] / baseline["seconds"], 2)}), flush=True)
    print(json.dumps({"load": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
