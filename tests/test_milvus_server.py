"""The Milvus store against a REAL Milvus standalone server (PyPI `milvus==2.3.5`), not Milvus Lite.

The module's fixture starts `scripts/milvus_local.py` (Milvus in its own network namespace,
reachable only on 127.0.0.1:PORT), data in a temp dir, and always stops it. Same results
contract as FAISS Flat: build, search, add, remove, filtered search, and a server restart
that keeps the data. Milvus Lite (tests/test_milvus.py) stays the embedded option.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="needs `pip install pymilvus==3.0.2`")
pytest.importorskip("milvus", reason="needs `pip install milvus==2.3.5` (the standalone server)")
psutil = pytest.importorskip("psutil")

import faiss
from test_milvus import assert_add_and_remove, assert_ranks_like_faiss_flat

from imagefinder import ImageFinder, IndexConfig, build_index
from imagefinder.index import Store, read_manifest, recover
from imagefinder.stores import open_vector_store

# ~40 s of server start-ups (two: the restart) plus the builds: end-to-end, `make test` runs it
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "milvus_local.py"
START_TIMEOUT_S = 240


@dataclass
class MilvusServer:
    data: Path
    port: int
    proc: subprocess.Popen | None = None
    started_s: float = 0.0  # how long the last start took

    @property
    def uri(self) -> str:
        return f"milvus://127.0.0.1:{self.port}"

    def start(self) -> None:
        ready = self.data.parent / "ready"
        ready.unlink(missing_ok=True)
        log = open(self.data.parent / "server.log", "ab")  # noqa: SIM115 - kept open by the child
        t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), "--data", str(self.data), "--port", str(self.port),
                                      "--ready-file", str(ready), "--timeout", str(START_TIMEOUT_S)],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() - t0 > START_TIMEOUT_S + 10:
                self.stop()
                tail = (self.data.parent / "server.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"the Milvus server did not start: {tail}")
            time.sleep(0.2)
        self.port = int(ready.read_text())
        self.started_s = time.monotonic() - t0

    def stop(self) -> None:
        """SIGTERM: the script stops Milvus gracefully (up to 60 s), then exits."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    child.kill()
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    root = tmp_path_factory.mktemp("milvus-server")
    server = MilvusServer(root / "data", port=0)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server_index(milvus_server: MilvusServer, small_index, embedder, tmp_path_factory) -> Path:
    """The session's 40 UKBench images again, vectors in a collection on the Milvus server."""
    out = tmp_path_factory.mktemp("milvus-server-index") / "index"
    folder = str(Path(small_index.sources[0]).parent)
    report = build_index([folder], out, IndexConfig(store=milvus_server.uri), embedder=embedder)
    assert report.indexed == 40
    return out


def _listening(pids: set[int]) -> list[tuple[str, int]]:
    return [(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]


def test_server_is_reachable_only_on_loopback(milvus_server: MilvusServer) -> None:
    assert milvus_server.proc is not None
    tree = psutil.Process(milvus_server.proc.pid)
    pids = {tree.pid} | {c.pid for c in tree.children(recursive=True)}
    assert any(c.name() == "milvus" for c in tree.children(recursive=True)), "the real Milvus binary runs"
    assert _listening(pids) == [("127.0.0.1", milvus_server.port)], "one socket, on 127.0.0.1 only"
    everything = [(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    assert not [a for a in everything if a[1] in (19530, 2379, 9091, 53100) and a[0] not in ("127.0.0.1", "::1")], \
        "no Milvus default port open on another interface"


def test_manifest_names_the_server_collection(server_index: Path, milvus_server: MilvusServer) -> None:
    store = read_manifest(server_index).store
    assert store["kind"] == "milvus" and store["uri"] == f"http://127.0.0.1:{milvus_server.port}"
    assert store["index_type"] == "FLAT" and store["dim"] == 1280
    assert not list(server_index.glob("vectors.*.faiss"))


def test_server_and_faiss_flat_give_the_same_ranking(server_index: Path, small_index) -> None:
    assert_ranks_like_faiss_flat(server_index, small_index)


def _unit_features(index: Path, rows: int) -> np.ndarray:
    store = Store(index)
    try:
        x = np.asarray(store.embeddings[:rows], np.float32)
    finally:
        store.close()
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_filtered_search_matches_faiss_with_an_id_selector(server_index: Path) -> None:
    m = read_manifest(server_index)
    x = _unit_features(server_index, 40)
    allowed = [i for i in range(40) if i % 3 != 0]
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.asarray(allowed, np.int64)))
    f_scores, f_ids = flat.search(x[:12], 8, params=params)
    vs = open_vector_store(m.store)
    found = vs.client.search(vs.collection, data=x[:12].tolist(), limit=8, filter=f"id in {allowed}",
                             search_params={"metric_type": "IP", "params": {}}, consistency_level="Strong")
    for q, hits in enumerate(found):
        m_ids = [int(h["id"]) for h in hits]
        assert set(m_ids) <= set(allowed)
        assert m_ids == f_ids[q].tolist() or sorted(np.round(f_scores[q], 5)) == sorted(
            round(float(h["distance"]), 5) for h in hits), (q, m_ids, f_ids[q])
        assert np.allclose([h["distance"] for h in hits], f_scores[q], atol=1e-4)


def test_uncommitted_inserts_are_filtered_out_and_recover_deletes_them(server_index: Path) -> None:
    m = read_manifest(server_index)
    rows = int(m.rows)
    stray = np.random.default_rng(0).random((3, 1280)).astype(np.float32)
    stray /= np.linalg.norm(stray, axis=1, keepdims=True)
    open_vector_store(m.store).insert(np.arange(rows, rows + 3), stray)  # a crash before the commit
    assert set(open_vector_store(m.store).search(stray, 3)[1].ravel()) >= {rows}, "the server has them"
    _, hidden = open_vector_store(m.store, rows=rows).search(stray, 5)
    assert hidden.max() < rows, "readers never see ids past `rows`"
    recover(server_index, m)
    _, ids = open_vector_store(m.store).search(stray, 3)
    assert not set(ids.ravel()) & {rows, rows + 1, rows + 2}


def test_add_and_remove_update_the_server_collection(server_index: Path, ukbench_dir: Path, embedder,
                                                     tmp_path: Path) -> None:
    assert_add_and_remove(server_index, ukbench_dir, embedder, tmp_path)


def test_a_restarted_server_keeps_the_data(server_index: Path, milvus_server: MilvusServer) -> None:
    def snapshot() -> tuple[int, list[list[int]]]:
        f = ImageFinder(server_index)
        try:
            return f.store.ntotal, [[r.id for r in f.search_id(i, k=5)] for i in (0, 1, 2, 10, 20)]
        finally:
            f.close()

    before = snapshot()
    port = milvus_server.port
    milvus_server.stop()
    milvus_server.start()  # same data directory, same port (the manifest records the URI)
    assert milvus_server.port == port
    from imagefinder.stores import milvus as store_module

    store_module._clients.clear()  # a new connection, as a new process would make
    store_module._loaded.clear()
    assert snapshot() == before
    print(f"\nMilvus server restart: ready again in {milvus_server.started_s:.1f} s", file=sys.stderr)

