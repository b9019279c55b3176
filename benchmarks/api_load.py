"""API load test: N concurrent clients posting searches to the API on 127.0.0.1 for a bounded time.

Starts the API in a subprocess (`python -m imagefinder.api`) on the built-in sample index
(built into a temp dir) unless --index or --url is given, warms it up, then runs --clients
concurrent clients (asyncio + httpx, one connection each) for --duration seconds and reports
requests/s, latency percentiles and errors. Every request goes to 127.0.0.1 (or --url).

    python benchmarks/api_load.py                          # 32 clients x 30 s, uploads
    python benchmarks/api_load.py --clients 8 --duration 10 --mode id
    python benchmarks/api_load.py --url http://127.0.0.1:8000 --json
    python benchmarks/api_load.py --clients 16 --duration 20 --mode mixed --writers 4 \
        --out benchmarks/results/api_load_mixed_writes.json  # searches while the index changes

Modes: upload (multipart JPEG query: decode + embed + search, the common case),
id ("more like this": search only), mixed (alternating). --writers N turns N of the clients
into writers that add images (POST /images, variants of the query image) and delete what they
added (DELETE /images/{id}), alternately, while the others search; searches by id use the
index's original ids, which no writer deletes, so every answer but a 2xx is an error.
Exit status 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from imagefinder.api.testing import free_port
from imagefinder.serve import stop_children, wait_ready


def build_sample(root: Path) -> tuple[Path, Path]:
    from imagefinder import build_index
    from imagefinder.sample import write_sample

    images, query = write_sample(root / "images")
    build_index([str(images)], root / "index")
    return root / "index", query


def start_api(index: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "imagefinder.api", "--index", str(index), "--port", str(port),
           "--log-level", "warning"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float = 120) -> None:
    state = wait_ready(f"{url}/health", proc, timeout, interval=0.2)
    if state == "exited":
        raise SystemExit(f"the API exited: {proc.stderr.read() if proc and proc.stderr else ''}")
    if state == "timeout":
        raise SystemExit(f"{url} did not become healthy within {timeout:.0f} s")


# One request of a client: (the response, whether it is a success). `i` counts the client's requests.
Request = Callable[[httpx.AsyncClient, int], Awaitable[tuple[httpx.Response, bool]]]


async def client_loop(client: httpx.AsyncClient, n: int, request: Request, deadline: float,
                      latencies: list[float], statuses: Counter, errors: list[str]) -> None:
    """Send `request` back to back until `deadline`; latencies of successes, statuses, errors."""
    i = n
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        try:
            r, ok = await request(client, i)
            elapsed = time.perf_counter() - start
            statuses[r.status_code] += 1
            if ok:
                latencies.append(elapsed)
            else:
                errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
        except httpx.HTTPError as exc:
            statuses["exception"] += 1
            errors.append(f"{type(exc).__name__}: {exc}")
        i += 1


def searcher(mode: str, query: bytes, ids: list[int], k: int) -> Request:
    async def search(client: httpx.AsyncClient, i: int) -> tuple[httpx.Response, bool]:
        if mode == "id" or (mode == "mixed" and i % 2 == 0):
            r = await client.post("/search", json={"id": ids[i % len(ids)], "k": k})
        else:
            r = await client.post(f"/search?k={k}", files={"file": ("query.jpg", query, "image/jpeg")})
        return r, r.status_code == 200 and bool(r.json()["results"])

    return search


def variants(query: bytes, n: int, first: int = 0) -> list[bytes]:
    """`n` different JPEGs made from the query (crops at different offsets): new images to add."""
    from PIL import Image

    image = Image.open(io.BytesIO(query)).convert("RGB")
    w, h = image.size
    out = []
    for v in range(first, first + n):
        dx, dy = 1 + v % 17, 1 + v // 17 % 17
        buf = io.BytesIO()
        image.crop((dx, dy, w - 18 + dx, h - 18 + dy)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class Writer:
    """Adds its own images and deletes them again, alternately: the index keeps changing."""

    def __init__(self, images: list[bytes]) -> None:
        self.images = images
        self.added: deque[int] = deque()
        self.counts: Counter = Counter()

    async def __call__(self, client: httpx.AsyncClient, i: int) -> tuple[httpx.Response, bool]:
        if self.added and i % 2:
            image_id = self.added.popleft()
            r = await client.delete(f"/images/{image_id}")
            ok = r.status_code == 200 and r.json().get("removed") is True
            self.counts["deletes" if ok else "failed deletes"] += 1
            return r, ok
        data = self.images[self.counts["adds"] % len(self.images)]  # never one still added: added has 1 at most
        r = await client.post("/images", files={"file": ("added.jpg", data, "image/jpeg")})
        ok = r.status_code == 201 and all(x["created"] for x in r.json()["images"])
        if ok:
            self.added.extend(x["id"] for x in r.json()["images"])
        self.counts["adds" if ok else "failed adds"] += 1
        return r, ok


async def run_load(url: str, clients: int, duration: float, mode: str, query: bytes, k: int,
                   writers: int = 0) -> dict:
    # keep-alive shorter than the server's, so the client never reuses a connection the server is closing
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120, trust_env=False) as client:
        stats = (await client.get("/stats")).json()
        ids = list(range(min(stats["items"], 500)))
        warm = [client.post(f"/search?k={k}", files={"file": ("q.jpg", query)}) for _ in range(4)]
        for r in await asyncio.gather(*warm):
            r.raise_for_status()
        writers = max(0, min(writers, clients - 1))
        search = searcher(mode, query, ids, k)
        writing = [Writer(variants(query, 4, first=4 * w)) for w in range(writers)]
        latencies: list[float] = []
        write_latencies: list[float] = []
        statuses: Counter = Counter()
        errors: list[str] = []
        load_before = round(os.getloadavg()[0], 2)  # other work on the machine skews every figure
        start = time.perf_counter()
        deadline = start + duration
        await asyncio.gather(
            *(client_loop(client, n, search, deadline, latencies, statuses, errors) for n in range(clients - writers)),
            *(client_loop(client, 0, w, deadline, write_latencies, statuses, errors) for w in writing))
        wall = time.perf_counter() - start
        final = (await client.get("/stats")).json()

    def pct(values: list[float], p: float) -> float:
        ordered = sorted(values)
        return round(1000 * ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 1) if ordered else 0.0

    ok = len(latencies) + len(write_latencies)
    server_errors = sum(n for s, n in statuses.items() if isinstance(s, int) and s >= 500)
    result = {
        "clients": clients, "duration_s": round(wall, 2), "mode": mode, "k": k, "indexed": stats["images"],
        "model": stats["model"], "requests": ok + len(errors), "ok": ok,
        "errors": len(errors), "errors_5xx": server_errors, "errors_other": len(errors) - server_errors,
        "requests_per_s": round(ok / wall, 1),
        "p50_ms": pct(latencies, 50), "p90_ms": pct(latencies, 90), "p99_ms": pct(latencies, 99),
        "max_ms": round(1000 * max(latencies), 1) if latencies else 0,
        "mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else 0,
        "statuses": {str(s): n for s, n in statuses.items()}, "first_errors": errors[:3],
        "cpus": os.cpu_count(), "load_average_before": load_before,
    }
    if writers:
        counts = sum((w.counts for w in writing), Counter())
        result.update({
            "writers": writers, "searchers": clients - writers, "searches": len(latencies),
            "searches_per_s": round(len(latencies) / wall, 1), "adds": counts["adds"], "deletes": counts["deletes"],
            "write_p50_ms": pct(write_latencies, 50), "write_p99_ms": pct(write_latencies, 99),
            "indexed_after": final["images"],
            "indexed_after_expected": stats["images"] + counts["adds"] - counts["deletes"],
        })
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30, at most 600)")
    p.add_argument("--mode", choices=["upload", "id", "mixed"], default="upload", help="how the searchers search")
    p.add_argument("--writers", type=int, default=0, metavar="N",
                   help="N of the clients add and delete images while the others search (default 0)")
    p.add_argument("--out", type=Path, help="also write the JSON result to this file")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--index", type=Path, help="index to serve (default: the sample, built in a temp dir)")
    p.add_argument("--url", help="an API that is already running (then nothing is started)")
    p.add_argument("--query", type=Path, help="query image (default: the sample's held-out query)")
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    args = p.parse_args(argv)
    duration = min(max(args.duration, 1.0), 600.0)

    with tempfile.TemporaryDirectory(prefix="api-load-") as tmp:
        index, query_path = args.index, args.query
        if args.url is None and index is None or query_path is None:
            built_index, sample_query = build_sample(Path(tmp))
            index = index or built_index
            query_path = query_path or sample_query
        proc = None
        url = args.url
        if url is None:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            proc = start_api(index, port)
        try:
            wait_healthy(url, proc)
            result = asyncio.run(run_load(url, args.clients, duration, args.mode, query_path.read_bytes(), args.k,
                                          args.writers))
        finally:
            if proc is not None:
                stop_children([proc], grace_s=15)

    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['clients']} clients x {result['duration_s']} s, mode={result['mode']}, k={result['k']}, "
              f"{result['indexed']} images, {result['model']}, {result['cpus']} CPUs")
        print(f"requests   {result['requests']}  ({result['ok']} ok, {result['errors']} errors: "
              f"{result['errors_5xx']} 5xx, {result['errors_other']} other)")
        if args.writers:
            print(f"writes     {result['adds']} adds, {result['deletes']} deletes by {result['writers']} writers "
                  f"(p50 {result['write_p50_ms']} ms, p99 {result['write_p99_ms']} ms); "
                  f"{result['searches']} searches by {result['searchers']} searchers; images "
                  f"{result['indexed']} -> {result['indexed_after']} (expected {result['indexed_after_expected']})")
        print(f"throughput {result['requests_per_s']} requests/s")
        print(f"search     p50 {result['p50_ms']} ms  p90 {result['p90_ms']} ms  p99 {result['p99_ms']} ms  "
              f"max {result['max_ms']} ms  mean {result['mean_ms']} ms")
        if result["errors"]:
            print("first errors:", *result["first_errors"], sep="\n  ")
    consistent = result.get("indexed_after", 0) == result.get("indexed_after_expected", 0)
    return 1 if result["errors"] or not consistent else 0


if __name__ == "__main__":
    sys.exit(main())
