"""The Ray Data runner: the same stages as the local runner, on a local Ray instance (num_cpus=2).

The same code joins a cluster with `RayRunner(address=...)` / `--ray-address`; here the CLI
test joins the instance this module started (`--ray-address auto`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason='needs `pip install "ray[data]"`')

from imagefinder.index import Store, read_manifest
from imagefinder.pipeline import build_index
from imagefinder.runners import LocalRunner, RayRunner

N = 24


@pytest.fixture(scope="module")
def local_ray():
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


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


def test_ray_and_local_runners_give_the_same_index(local_ray, images: Path, embedder, tmp_path: Path) -> None:
    local = build_index([str(images)], tmp_path / "local", embedder=embedder, runner=LocalRunner(workers=4))
    distributed = build_index([str(images)], tmp_path / "ray", embedder=embedder, runner=RayRunner(), batch_size=8)
    assert local.items == distributed.items == N + 1
    assert local.indexed == distributed.indexed == N and distributed.failed == 1
    rows_l, emb_l, man_l = _contents(tmp_path / "local")
    rows_r, emb_r, man_r = _contents(tmp_path / "ray")
    assert rows_l == rows_r, "same ids, sources, statuses, sizes and hashes"
    assert rows_r[N][1] == "failed" and "broken" in rows_r[N][0]
    assert np.allclose(emb_l, emb_r, atol=1e-3)
    assert man_l["index_spec"] == man_r["index_spec"] == "Flat"
    assert {p.name for p in (tmp_path / "ray" / "thumbs").iterdir()} == {f"{i}.jpg" for i in range(N)}


def test_cli_index_on_a_running_ray_instance(local_ray, images: Path, tmp_path: Path, cli) -> None:
    proc = cli("index", images, "--out", tmp_path / "idx", "--ray-address", "auto", "--json", "-q", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["indexed"] == N and summary["failed"] == 1
