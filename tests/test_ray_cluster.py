"""A real two-node Ray cluster on this machine: `ray start --head` + `ray start --address=...`.

Each node has its own raylet and object store (2 and 1 CPUs, 150 MB stores, a temp dir of
this test's). A driver process indexes with `RayRunner(address=head)`: two model replicas,
spread over the nodes; the runner records which node embedded which batch, and the index is
identical to the local runner's. Everything started here is stopped, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason='needs `pip install "ray[data]"`')
psutil = pytest.importorskip("psutil")

from test_ray import N, _contents
from test_ray import images as images  # noqa: PLC0414 - the `images` fixture, shared

from imagefinder.pipeline import build_index
from imagefinder.runners.local import LocalRunner

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = 120
STORE_BYTES = 150 * 1024 * 1024

# The driver runs in its own process (see test_ray.py: Ray and the pytest process do not mix).
DRIVER = """
import json, sys
import ray
from imagefinder.index import IndexConfig
from imagefinder.pipeline import build_index
from imagefinder.runners.ray import RayRunner

address, images, out, result = sys.argv[1:]
runner = RayRunner(address=address, embed_actors=2, load_concurrency=1)
# the model of the local build it is compared with (the `embedder` fixture)
report = build_index([images], out, IndexConfig(model="efficientnet-lite0"), runner=runner, batch_size=4,
                     progress=False)
nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
with open(result, "w") as f:
    json.dump({"indexed": report.indexed, "failed": report.failed, "nodes": nodes, "batches": runner.batches}, f)
"""


def _ray_start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """`ray start --block`: the node's processes live as long as this one (SIGTERM stops them)."""
    with open(log, "ab") as out:
        return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen], temp_dir: Path) -> None:
    for p in reversed(procs):  # the worker node first, then the head
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        with contextlib.suppress(ProcessLookupError):  # its session: raylet, plasma store, workers
            os.killpg(p.pid, signal.SIGKILL)
    # anything that outlived its `ray start` (raylet, plasma, workers) names our temp dir
    for proc in psutil.process_iter(["cmdline"]):
        if str(temp_dir) in " ".join(proc.info["cmdline"] or []):
            proc.kill()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _nodes_alive(env: dict, address: str) -> int:
    code = "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
    proc = subprocess.run([sys.executable, "-c", code, address], check=False, env=env, capture_output=True, text=True,
                          timeout=60)
    return int(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else 0


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict]]:
    root = tmp_path_factory.mktemp("ray-cluster")
    temp_dir = Path("/tmp") / f"rc{secrets.token_hex(3)}"  # short: Ray's socket paths have a length limit
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    try:
        t0 = time.monotonic()
        procs.append(_ray_start(["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                                 f"--object-store-memory={STORE_BYTES}", "--include-dashboard=false",
                                 f"--temp-dir={temp_dir}"], env, root / "head.log"))
        procs.append(_ray_start([f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                                 f"--object-store-memory={STORE_BYTES}"], env, root / "worker.log"))
        while _nodes_alive(env, address) < 2:
            dead = [p for p in procs if p.poll() is not None]
            if dead or time.monotonic() - t0 > START_TIMEOUT_S:
                logs = "".join((root / f).read_text(errors="replace")[-1500:] for f in ("head.log", "worker.log"))
                pytest.fail(f"the two-node Ray cluster did not start: {logs}")
            time.sleep(1)
        print(f"\ntwo-node Ray cluster up in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        yield address, env
    finally:
        t1 = time.monotonic()
        _stop(procs, temp_dir)
        print(f"\nRay cluster stopped in {time.monotonic() - t1:.1f} s", file=sys.stderr)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_embedding_is_spread_over_two_nodes_and_matches_the_local_runner(
        ray_cluster: tuple[str, dict], images: Path, embedder, tmp_path: Path) -> None:
    address, env = ray_cluster
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", DRIVER, address, str(images), str(tmp_path / "ray"),
                           str(tmp_path / "result.json")], check=False, env=env, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    took = time.monotonic() - t0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["indexed"] == N and result["failed"] == 1
    assert len(result["nodes"]) == 2
    per_node: dict[str, list[int]] = {}
    for tag, count in result["batches"].items():
        node = tag.split("/")[0]
        assert node in result["nodes"]
        per_node.setdefault(node, []).append(count)
    print(f"\n{N + 1} items embedded by the cluster in {took:.1f} s (driver process, incl. ray.init):", file=sys.stderr)
    for node, counts in per_node.items():
        print(f"  node {node[:12]}: {len(counts)} batches, {sum(counts)} items {counts}", file=sys.stderr)
    assert sum(sum(c) for c in per_node.values()) == N + 1

    local = build_index([str(images)], tmp_path / "local", embedder=embedder, runner=LocalRunner(workers=2))
    assert local.indexed == N
    rows_l, emb_l, man_l = _contents(tmp_path / "local")
    rows_r, emb_r, man_r = _contents(tmp_path / "ray")
    assert rows_l == rows_r, "same ids, sources, statuses, sizes and hashes"
    assert np.allclose(emb_l, emb_r, atol=1e-3)
    print(f"  max feature difference vs the local runner: {np.abs(emb_l - emb_r).max():.2e}", file=sys.stderr)
    assert man_l.index_spec == man_r.index_spec
    if set(per_node) != set(result["nodes"]):
        # Known: on a loaded machine one replica sometimes takes every batch (2 of 3 full-suite runs here)
        pytest.xfail(f"the embedding ran on {len(per_node)} of 2 nodes this time (SPREAD is best effort)")
