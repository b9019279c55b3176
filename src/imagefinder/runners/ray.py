"""The Ray runner: the same ingest stages as a Ray Data pipeline, on this machine or a cluster.

`from_items -> map(LoadStage: load_item) -> map_batches(EmbedStage actors: embed_prepared)`,
streamed back to the driver with the ids kept. Started on a local Ray instance by default
(`--ray`), or joined to a cluster (`--ray-address ray://head:10001`, or `auto` on a node of
it): the same code, only the address changes. Every worker needs imagefinder installed and
the image paths readable (URLs work anywhere); each node exports the ONNX model once into
its own cache ($IMAGEFINDER_CACHE is passed on).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..embed import Embedder
from ..index import Record
from ..ingest.download import DownloadConfig, Downloader
from ..ingest.sources import Item
from ..ingest.stages import Loaded, load_item

log = logging.getLogger(__name__)


def embedder_factory(embedder: Embedder, threads: int | None = None) -> Callable[[], Embedder]:
    """A picklable recipe for the same embedder in another process (model, per-member pooling, precision)."""
    specs = getattr(embedder, "specs", None)
    precision = getattr(embedder, "precision", None)
    if specs is not None:
        return functools.partial(Embedder, embedder.model, threads, [s.pooling for s in specs], precision)
    return functools.partial(Embedder, embedder.model, threads, None, precision)


class LoadStage:
    """Ray Data `map` UDF: one item -> its record, thumbnail and pickled `prepare` output (`load_item`)."""

    def __init__(self, make_embedder: Callable[[], Embedder], download: DownloadConfig) -> None:
        self.embedder = make_embedder()  # only its preprocessing is used here
        self.download = download
        self.downloader: Downloader | None = None

    def __call__(self, row: dict) -> dict:
        item = Item(row["source"], json.loads(row["meta"]), row["error"] or None)
        if item.is_url and self.downloader is None:
            self.downloader = Downloader(self.download)
        loaded = load_item(int(row["id"]), item, self.embedder, self.downloader)
        return {
            "id": int(row["id"]),
            "record": json.dumps(asdict(loaded.record)),
            "thumbnail": loaded.thumbnail or b"",
            "prepared": pickle.dumps(loaded.prepared, protocol=5) if loaded.prepared is not None else b"",
        }


class EmbedStage:
    """Ray Data `map_batches` actor: one model replica; a batch of prepared inputs -> features."""

    def __init__(self, make_embedder: Callable[[], Embedder]) -> None:
        import ray

        self.embedder = make_embedder()
        self.where = f"{ray.get_runtime_context().get_node_id()}/{os.getpid()}"  # node id / actor process
        self.batches = 0

    def __call__(self, batch: dict) -> dict:
        ok = [len(p) > 0 for p in batch["prepared"]]
        vectors = np.zeros((len(ok), self.embedder.dim), np.float32)
        good = [pickle.loads(p) for p, g in zip(batch["prepared"], ok) if g]
        if good:
            vectors[np.flatnonzero(ok)] = self.embedder.embed_prepared(good)
        self.batches += 1
        return {"id": batch["id"], "record": batch["record"], "thumbnail": batch["thumbnail"], "vector": vectors,
                "batch": np.array([f"{self.where}/{self.batches}"] * len(ok))}


@dataclass
class RayRunner:
    """Ray Data: the same stages on a local Ray instance (address None) or a cluster.

    embed_actors: model replicas (default: one per 4 CPUs of the cluster, at least 1);
    actor_threads: onnxruntime threads (and CPUs reserved) per replica;
    load_concurrency: decode workers (default: the CPUs left over, at least 1).
    After `run`, `batches` maps each embedding batch ("node id/actor pid/n") to its item count:
    which node did what (logged too).
    """

    address: str | None = None
    num_cpus: int | None = None  # for a local instance started here
    embed_actors: int | None = None
    actor_threads: int = 1
    load_concurrency: int | None = None
    batches: dict[str, int] = field(default_factory=dict, repr=False)

    def _ray(self):
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError('the Ray runner needs `pip install "ray[data]==2.60.0"`') from exc
        if not ray.is_initialized():
            env = {k: os.environ[k] for k in ("IMAGEFINDER_CACHE",) if k in os.environ}
            kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "include_dashboard": False, "log_to_driver": False,
                      "logging_level": logging.WARNING}
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(num_cpus=self.num_cpus, **kwargs)
        return ray

    def run(self, items: Sequence[Item], first_id: int, embedder: Embedder, download: DownloadConfig,
            batch_size: int, on_loaded: Callable[[Loaded], None], progress: bool) -> np.ndarray:
        ray = self._ray()
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress
        if ctx.wait_for_min_actors_s <= 0:  # Ray's default: actors start asynchronously, and the first
            ctx.wait_for_min_actors_s = 600  # one ready may take every batch; wait for all replicas
        if not progress:
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        actors = self.embed_actors or max(1, cpus // 4)
        loaders = self.load_concurrency or max(1, cpus - actors * self.actor_threads)
        rows = [{"id": first_id + i, "source": it.source, "meta": json.dumps(it.meta), "error": it.error or ""}
                for i, it in enumerate(items)]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // max(batch_size, 1), 4 * cpus)))
        pool = ray.data.ActorPoolStrategy
        ds = ds.map(LoadStage, fn_constructor_args=(embedder_factory(embedder, 1), download),
                    compute=pool(size=loaders), num_cpus=0.5)
        # SPREAD: model replicas on different nodes rather than packed onto the first one
        ds = ds.map_batches(EmbedStage, fn_constructor_args=(embedder_factory(embedder, self.actor_threads),),
                            compute=pool(size=actors), batch_size=batch_size, num_cpus=self.actor_threads,
                            batch_format="numpy", scheduling_strategy="SPREAD")
        out = np.zeros((len(items), embedder.dim), np.float32)
        self.batches = {}
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
            for tag in batch["batch"]:
                self.batches[str(tag)] = self.batches.get(str(tag), 0) + 1
            for rid, record, thumb, vector in zip(batch["id"], batch["record"], batch["thumbnail"], batch["vector"]):
                rec = Record(**json.loads(record))
                ok = rec.status == "ok"
                if ok:
                    out[int(rid) - first_id] = vector
                on_loaded(Loaded(rec, None, bytes(thumb) or None, vector if ok else None))
        per_node: dict[str, int] = {}
        for tag, count in self.batches.items():
            per_node[tag.split("/")[0]] = per_node.get(tag.split("/")[0], 0) + count
        log.info("embedded %d batches on %d node(s): %s", len(self.batches), len(per_node),
                 ", ".join(f"{node[:12]} {count} items" for node, count in per_node.items()))
        return out
