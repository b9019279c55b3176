"""The manifest: what an index is (model, spec, search parameters, counts), typed and versioned.

`manifest.json` keeps the JSON keys it always had; `Manifest` is its typed, read-only view.
Each format version bump comes with a migration from the version before, applied on read, so
code past `Manifest.from_dict` only ever sees the current format:

    1 -> 2   members without a recorded pooling get average pooling: indexes written before
             pooling was recorded were embedded with it, and must be queried and extended with
             it whatever the backbone's default is today.
    2 -> 3   `precision` ("fp32" | "int8", or one per member joined by '+') is recorded; indexes
             written before it existed were embedded with fp32 graphs, and are queried with them.

A manifest from a newer ImageFinder (a format this version does not know) is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..pooling import Pooling
from .layout import MANIFEST, IndexError_, restore_interrupted_swap
from .spec import IndexConfig

FORMAT_VERSION = 3


def _members_record_pooling(data: dict[str, Any]) -> dict[str, Any]:
    members = [dict(m, pooling=m.get("pooling") or Pooling().to_dict()) for m in data.get("members") or []]
    return {**data, "members": members}


def _records_precision(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "precision": data.get("precision") or "fp32"}


# from version N to N+1
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _members_record_pooling, 2: _records_precision}


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """The manifest dict `data` brought to FORMAT_VERSION, one migration at a time."""
    version = data.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise IndexError_(f"index format {version} is not supported (this version reads 1 to {FORMAT_VERSION}); "
                          "rebuild it with `imagefinder index`")
    while version < FORMAT_VERSION:
        data = {**MIGRATIONS[version](data), "format_version": version + 1}
        version += 1
    return data


@dataclass(frozen=True)
class Counts:
    items: int = 0
    indexed: int = 0
    failed: int = 0
    removed: int = 0


def utc_now() -> str:
    """The manifest's timestamps: UTC, to the second, ISO 8601."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# Optional entries written even when empty (null), as builds always have; other None fields are left out.
_ALWAYS_WRITTEN = frozenset({"nprobe", "rerank", "cluster_source"})


@dataclass(frozen=True)
class Manifest:
    """One index's manifest.json at FORMAT_VERSION; `extra` keeps entries this version does not model."""

    model: str
    embedding_dim: int
    index_spec: str
    config: IndexConfig = field(default_factory=IndexConfig)
    members: list[dict[str, Any]] = field(default_factory=list)  # MemberInfo dicts: name, dim, weights, pooling, ...
    member_slices: list[list[int]] = field(default_factory=list)  # [start, stop) columns of each member
    precision: str = "fp32"  # of the graphs that embedded the images, and so of every query: see embed.Embedder
    counts: Counts = field(default_factory=Counts)
    format_version: int = FORMAT_VERSION
    created_at: str = field(default_factory=utc_now)
    updated_at: str | None = None
    rebuilt_at: str | None = None
    generation: int = 0
    rows: int = 0  # rows of embeddings.f16 (= ids handed out) in this generation
    versions: dict[str, str] = field(default_factory=dict)
    clusters: int | None = None
    cluster_source: str | None = None  # "ivf" | "kmeans"
    centroids: str | None = None  # K-Means centroids file beside a flat index (None: centroids.npy)
    nprobe: int | None = None
    ef_search: int | None = None
    metric: str | None = None  # "ip" | "l2"
    rerank: int | None = None  # exact re-ranking depth; None: off
    tuning: dict[str, Any] | None = None  # what `tune` measured (recall, curve)
    training: dict[str, Any] | None = None  # the baseline drift is measured against
    store: dict[str, Any] | None = None  # the Milvus collection holding the vectors, if not FAISS
    labels_stale: bool = False  # a rebuild committed but has not rewritten the cluster labels yet
    build_seconds: float | None = None
    failure_reasons: dict[str, int] = field(default_factory=dict)
    folders: list[str] | None = None  # the folders it was built from (absolute): what `sync` re-scans
    synced_at: float | None = None  # when `sync` last scanned them (Unix time); files changed since are re-checked
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Parse (and migrate) a manifest.json dict; unknown entries go to `extra` and are written back."""
        data = migrate(dict(data))
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        values["config"] = IndexConfig.from_dict(data.get("config") or {})
        values["counts"] = Counts(**{k: int(v) for k, v in (data.get("counts") or {}).items()})
        values["labels_stale"] = bool(data.get("labels_stale"))
        values["extra"] = {k: v for k, v in data.items() if k not in known}
        try:
            return cls(**values)
        except TypeError as exc:  # a required entry is missing
            raise IndexError_(f"incomplete manifest: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The manifest.json form: the same keys and values as always."""
        out: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.name not in _ALWAYS_WRITTEN):
                continue
            out[f.name] = dataclasses.asdict(value) if isinstance(value, (IndexConfig, Counts)) else value
        if not self.labels_stale:
            out.pop("labels_stale")
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise IndexError_(f"unreadable manifest: {exc}") from exc
        if not isinstance(data, dict):
            raise IndexError_("unreadable manifest: not a JSON object")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> Manifest:
        """A copy with `changes` (field names only: a misspelt one is a TypeError)."""
        return dataclasses.replace(self, **changes)

    def stamped(self, **changes: Any) -> Manifest:
        """`replace`, recording the time of the update."""
        return self.replace(updated_at=utc_now(), **changes)


def library_versions() -> dict[str, str]:
    names = ["imagefinder", "faiss-cpu", "onnxruntime", "numpy", "pillow", "ray", "pymilvus", "milvus-lite"]
    out = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def make_manifest(config: IndexConfig, members: list, spec: str, dim: int, counts: Counts,
                  fields: Mapping[str, Any]) -> Manifest:
    """A new build's manifest; `fields`: the vector side's entries (BuiltVectors.fields) and the like."""
    return Manifest(model=config.model, embedding_dim=dim, index_spec=spec, config=dataclasses.replace(config),
                    members=[m if isinstance(m, dict) else dataclasses.asdict(m) for m in members],
                    counts=counts, versions=library_versions(), **fields)


def read_manifest(path: Path | str) -> Manifest:
    restore_interrupted_swap(Path(path).absolute())
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise IndexError_(f"{path}: not an ImageFinder index (no {MANIFEST}); build one with `imagefinder index`")
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise IndexError_(f"{file}: unreadable manifest: {exc}") from exc
    try:
        return Manifest.from_json(text)
    except IndexError_ as exc:
        raise IndexError_(f"{path if 'format' in str(exc) else file}: {exc}") from exc.__cause__


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Commit a manifest: written durably and atomically (temp file + rename)."""
    write_json(Path(path) / MANIFEST, manifest.to_dict())
