"""The Ray Data runner: the same stages as the local runner, on a local Ray instance (num_cpus=2).

The same code joins a cluster with `RayRunner(address=...)` / `--ray-address`; here CLI
processes join the instance this module starts, by its address and by `--ray-address auto`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason='needs `pip install "ray[data]"`')

from imagefinder.index import Store, read_manifest
from imagefinder.pipeline import build_index
from imagefinder.runners.local import LocalRunner
from imagefinder.serve import stop_children

# end-to-end: `make test-fast` leaves these out, `make test` (CI) runs them
pytestmark = pytest.mark.slow

N = 24


# The head runs in its own single-threaded driver process and the Ray builds in CLI processes.
# Started from this pytest process, Ray forks its raylet with a Python pre-exec hook while other
# threads (gRPC from the Milvus tests, HTTP servers) may hold locks: the child then sometimes
# hangs and ray.init times out. (Ray also reads its auth settings at import, which a pytest
# process that imported it already cannot change.)
HEAD = """
import os, sys, time, ray

info = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(info.address_info["gcs_address"])
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
try:
    while True:
        time.sleep(1)
except KeyboardInterrupt:
    ray.shutdown()
"""


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory):
    address_file = tmp_path_factory.mktemp("ray-head") / "gcs_address"
    # Ray clusters authenticate drivers by token: the head, this process and the CLI's share one.
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    head = subprocess.Popen([sys.executable, "-c", HEAD, str(address_file)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not address_file.exists():
            assert head.poll() is None, f"the Ray head did not start: {head.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "the Ray head did not start within 180 s"
            time.sleep(0.2)
        yield address_file.read_text()
    finally:
        stop_children([head], grace_s=60, sig=signal.SIGINT)  # SIGINT: the head runs ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def images(ukbench_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ray-images")
    for n in range(N):
        shutil.copyfile(ukbench_dir / "images" / f"ukbench{n:05d}.jpg", folder / f"ukbench{n:05d}.jpg")
    (folder / "zz-broken.jpg").write_bytes(b"not a jpeg at all")
    return folder


def _contents(path: Path) -> tuple[dict, np.ndarray, dict]:
    store = Store(path)
    try:
        rows = store.records(list(range(N + 1)))
        return ({i: (r["source"], r["status"], r["width"], r["sha256"]) for i, r in rows.items()},
                np.asarray(store.embeddings, np.float32), read_manifest(path))
    finally:
        store.close()


def test_ray_and_local_runners_give_the_same_index(local_ray: str, images: Path, embedder, tmp_path: Path,
                                                   cli) -> None:
    local = build_index([str(images)], tmp_path / "local", embedder=embedder, runner=LocalRunner(workers=4))
    proc = cli("index", images, "--out", tmp_path / "ray", "--ray-address", local_ray, "--batch-size", "8", "--json",
               "-q", "--model", "efficientnet-lite0", timeout=240)  # the `embedder` fixture's model
    assert proc.returncode == 0, proc.stderr[-3000:]
    distributed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert local.items == distributed["items"] == N + 1
    assert local.indexed == distributed["indexed"] == N and distributed["failed"] == 1
    rows_l, emb_l, man_l = _contents(tmp_path / "local")
    rows_r, emb_r, man_r = _contents(tmp_path / "ray")
    assert rows_l == rows_r, "same ids, sources, statuses, sizes and hashes"
    assert rows_r[N][1] == "failed" and "broken" in rows_r[N][0]
    assert np.allclose(emb_l, emb_r, atol=1e-3)
    assert man_l.index_spec == man_r.index_spec == "Flat"
    assert {p.name for p in (tmp_path / "ray" / "thumbs").iterdir()} == {f"{i}.jpg" for i in range(N)}


def test_cli_index_on_a_running_ray_instance(local_ray, images: Path, tmp_path: Path, cli) -> None:
    proc = cli("index", images, "--out", tmp_path / "idx", "--ray-address", "auto", "--json", "-q", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["indexed"] == N and summary["failed"] == 1
