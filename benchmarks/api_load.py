"""API load test: N concurrent clients posting searches to the API on 127.0.0.1 for a bounded time.

Starts the API in a subprocess (`python -m imagefinder.api`) on the built-in sample index
(built into a temp dir) unless --index or --url is given, warms it up, then runs --clients
concurrent clients (asyncio + httpx, one connection each) for --duration seconds and reports
requests/s, latency percentiles and errors. Every request goes to 127.0.0.1 (or --url).

    python benchmarks/api_load.py                          # 32 clients x 30 s, uploads
    python benchmarks/api_load.py --clients 8 --duration 10 --mode id
    python benchmarks/api_load.py --url http://127.0.0.1:8000 --json

Modes: upload (multipart JPEG query: decode + embed + search, the common case),
id ("more like this": search only), mixed (alternating). Exit status 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from imagefinder.serve import wait_ready


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


async def client_loop(client: httpx.AsyncClient, n: int, mode: str, query: bytes, ids: list[int], k: int,
                      deadline: float, latencies: list[float], statuses: Counter, errors: list[str]) -> None:
    i = n
    while time.perf_counter() < deadline:
        use_id = mode == "id" or (mode == "mixed" and i % 2 == 0)
        start = time.perf_counter()
        try:
            if use_id:
                r = await client.post("/search", json={"id": ids[i % len(ids)], "k": k})
            else:
                r = await client.post(f"/search?k={k}", files={"file": ("query.jpg", query, "image/jpeg")})
            elapsed = time.perf_counter() - start
            statuses[r.status_code] += 1
            if r.status_code == 200 and r.json()["results"]:
                latencies.append(elapsed)
            else:
                errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
        except httpx.HTTPError as exc:
            statuses["exception"] += 1
            errors.append(f"{type(exc).__name__}: {exc}")
        i += 1


async def run_load(url: str, clients: int, duration: float, mode: str, query: bytes, k: int) -> dict:
    # keep-alive shorter than the server's, so the client never reuses a connection the server is closing
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120, trust_env=False) as client:
        stats = (await client.get("/stats")).json()
        ids = list(range(min(stats["items"], 500)))
        warm = [client.post(f"/search?k={k}", files={"file": ("q.jpg", query)}) for _ in range(4)]
        for r in await asyncio.gather(*warm):
            r.raise_for_status()
        latencies: list[float] = []
        statuses: Counter = Counter()
        errors: list[str] = []
        start = time.perf_counter()
        deadline = start + duration
        await asyncio.gather(*(client_loop(client, n, mode, query, ids, k, deadline, latencies, statuses, errors)
                               for n in range(clients)))
        wall = time.perf_counter() - start
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 1) if ordered else 0.0

    return {
        "clients": clients, "duration_s": round(wall, 2), "mode": mode, "k": k, "indexed": stats["images"],
        "model": stats["model"], "requests": len(latencies) + len(errors), "ok": len(latencies),
        "errors": len(errors), "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": round(1000 * ordered[-1], 1) if ordered else 0,
        "mean_ms": round(1000 * statistics.fmean(ordered), 1) if ordered else 0,
        "statuses": {str(s): n for s, n in statuses.items()}, "first_errors": errors[:3],
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30, at most 600)")
    p.add_argument("--mode", choices=["upload", "id", "mixed"], default="upload")
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
            result = asyncio.run(run_load(url, args.clients, duration, args.mode, query_path.read_bytes(), args.k))
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)

    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['clients']} clients x {result['duration_s']} s, mode={result['mode']}, k={result['k']}, "
              f"{result['indexed']} images, {result['model']}, {result['cpus']} CPUs")
        print(f"requests   {result['requests']}  ({result['ok']} ok, {result['errors']} errors)")
        print(f"throughput {result['requests_per_s']} requests/s")
        print(f"latency    p50 {result['p50_ms']} ms  p90 {result['p90_ms']} ms  p99 {result['p99_ms']} ms  "
              f"max {result['max_ms']} ms  mean {result['mean_ms']} ms")
        if result["errors"]:
            print("first errors:", *result["first_errors"], sep="\n  ")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
