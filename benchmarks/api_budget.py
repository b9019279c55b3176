"""What one request may cost the API: peak memory for decode bombs, /health while peers are slow.

Each case starts a fresh API process (`python -m imagefinder.api`, 127.0.0.1 only) on the
built-in sample index and reads the server's own peak RSS (VmHWM in /proc/PID/status):

    bomb-search   one POST /search of a 7999x7999 1-bit PNG (~8 KB)
    bomb-add      one POST /images of ten such PNGs
    bomb-add-8    8 such POST /images at once
    bomb-url-16   16 URL searches at once of such a PNG served on 127.0.0.1
    slow-45       45 URL searches at once against a 127.0.0.1 server trickling 1 byte / 2 s,
                  while /health is timed (8 probes, 0.5 s apart)

    python benchmarks/api_budget.py                      # every case, results as JSON
    python benchmarks/api_budget.py --cases bomb-add slow-45 --out benchmarks/results/api_budget.json

Run it against another checkout with PYTHONPATH=OTHER/src to compare. Memory figures do not
depend on the machine's load; the /health latency does (say the load with it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

from imagefinder.api.testing import free_port
from imagefinder.serve import wait_ready

SIDE = 7999
TIMEOUT = 600.0


def bomb_png(variant: int) -> bytes:
    img = Image.new("1", (SIDE, SIDE))
    ImageDraw.Draw(img).line((variant * 97 % SIDE, 0, SIDE - 1, SIDE - 1), fill=1, width=9)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


@contextmanager
def api(index: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "imagefinder.api", "--index", str(index), "--port", str(port),
                             "--log-level", "warning", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        if wait_ready(f"{url}/health", proc, timeout=180) != "ready":
            raise RuntimeError("the API did not start")
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def files(images: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (f"b{n}.png", data, "image/png")) for n, data in enumerate(images)]


def at_once(n: int, fn: Callable[[int], httpx.Response]) -> dict[int, int]:
    with ThreadPoolExecutor(n) as pool:
        return dict(Counter(r.status_code for r in pool.map(fn, range(n))))


@contextmanager
def png_server(body: bytes) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def trickling_server(interval: float = 2.0) -> Iterator[str]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
                while not stop.wait(interval):
                    conn.sendall(b"\x89")
            except OSError:
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed: the case is over
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def run_case(case: str, index: Path, bombs: list[bytes]) -> dict:
    start = time.monotonic()
    if case == "slow-45":
        with trickling_server() as slow, api(index, "--allow-private-urls") as (url, pid), \
                ThreadPoolExecutor(45) as pool:
            futures = [pool.submit(httpx.post, f"{url}/search", json={"url": f"{slow}/i{n}.png"}, timeout=TIMEOUT)
                       for n in range(45)]
            time.sleep(1.0)
            latencies = []
            for _ in range(8):
                t = time.monotonic()
                httpx.get(f"{url}/health", timeout=TIMEOUT)
                latencies.append(round(time.monotonic() - t, 3))
                time.sleep(0.5)
            codes = dict(Counter(f.result().status_code for f in futures))
        return {"case": case, "health_s": latencies, "health_max_s": max(latencies), "answers": codes,
                "seconds": round(time.monotonic() - start, 1)}
    extra = ("--allow-private-urls",) if case == "bomb-url-16" else ()
    with api(index, *extra) as (url, pid), httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        before = peak_rss_mb(pid)
        if case == "bomb-search":
            codes = {client.post("/search", files={"file": ("b.png", bombs[0])}).status_code: 1}
        elif case == "bomb-add":
            codes = {client.post("/images", files=files(bombs)).status_code: 1}
        elif case == "bomb-add-8":
            codes = at_once(8, lambda n: client.post("/images", files=files(bombs)))
        elif case == "bomb-url-16":
            with png_server(bombs[0]) as origin:
                codes = at_once(16, lambda n: client.post("/search", json={"url": f"{origin}/b{n}.png"}))
        else:
            raise SystemExit(f"unknown case {case}")
        after = peak_rss_mb(pid)
    return {"case": case, "peak_rss_mb_at_start": round(before), "peak_rss_mb": round(after), "answers": codes,
            "seconds": round(time.monotonic() - start, 1)}


def main() -> int:
    cases = ["bomb-search", "bomb-add", "bomb-add-8", "bomb-url-16", "slow-45"]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=cases, choices=cases)
    p.add_argument("--out", type=Path, help="also write the results here (JSON)")
    args = p.parse_args()
    from imagefinder import build_index
    from imagefinder.sample import write_sample

    with tempfile.TemporaryDirectory() as tmp:
        images, _query = write_sample(Path(tmp) / "images")
        build_index([str(images)], Path(tmp) / "pristine")
        bombs = [bomb_png(n) for n in range(10)]
        results = []
        for n, case in enumerate(args.cases):
            index = Path(tmp) / f"index-{n}"
            subprocess.run(["cp", "-a", str(Path(tmp) / "pristine"), str(index)], check=True)
            results.append(run_case(case, index, bombs))
            print(json.dumps(results[-1]), flush=True)
    report = {"load": os.getloadavg(), "results": results}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
