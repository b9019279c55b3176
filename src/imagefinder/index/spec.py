"""Choosing the FAISS index: factory strings, and what each kind of string implies.

The seed's PCA -> K-Means -> similarity chain is one FAISS factory string here:
`PCAW256,L2norm,IVF1024,Flat` whitens to 256 dims, normalises, and files every image under
its nearest of 1024 K-Means centroids (the IVF lists *are* the clusters). The string is
stored in the manifest, so an index is reproducible from its manifest alone.

Index chosen by size (`choose_spec`, overridable with a spec, recorded in the manifest):
exact (`Flat`) below EXACT_LIMIT images; above it `PCA256,IVF{4 sqrt n},PQ32np`: 40 bytes
of memory per image, whose candidates are re-ranked by exact cosine on the raw features of
`embeddings.f16` (memory-mapped, on disk). Why this default: benchmarks/scale.py (1M vectors
on 2 cores).

Cosine space: what "exact" means for an index. A chain ending in `L2norm` (`PCAW256,L2norm,`
from `--pca`) defines a new space, and cosine is measured there. A PCA *without* a following
L2norm is compression only: the index ranks candidates by L2 in the centred PCA space (on unit
vectors that approximates cosine, where inner products of centred vectors would not), and
re-ranking restores exact cosine on the input features.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import faiss

from ..models import DEFAULT_MODEL

if TYPE_CHECKING:
    from .manifest import Manifest

log = logging.getLogger(__name__)

EXACT_LIMIT = 50_000  # below this many images an exact (flat) index is fast enough
ANN_PCA = 256  # dims the auto ANN index compresses to before its coarse quantiser and PQ
PQ_DIMS_PER_BYTE = 8  # PQ sub-quantiser width: 256 dims -> PQ32 (32 bytes per image)
DEFAULT_RERANK = 100  # candidates re-scored exactly per query (tuning may raise it)
TARGET_RECALL = 0.95


@dataclass
class IndexConfig:
    """What the user chose; everything here is recorded in the manifest."""

    model: str = DEFAULT_MODEL
    precision: str | None = None  # "fp32" | "int8"; None: each backbone's default (models.registry)
    pca: int | None = None
    whiten: bool = False
    clusters: int | None = None
    spec: str | None = None
    nprobe: int | None = None
    target_recall: float = TARGET_RECALL  # tuning goal for nprobe / efSearch / re-rank depth
    rerank: int | None = None  # candidates re-scored exactly; None: auto (on for compressed indexes), 0: off
    store: str | None = None  # vector store: None = FAISS in the artifact; "x.db" / "milvus://host:19530"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexConfig:
        """The manifest's `config` entry; keys this version does not know are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> IndexConfig:
        """A copy of the choices an index was built with (callers may change it for a rebuild)."""
        return dataclasses.replace(manifest.config)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def choose_spec(n: int, dim: int, config: IndexConfig) -> str:
    """The factory string for `n` vectors: exact below EXACT_LIMIT, compressed IVF-PQ above."""
    if config.spec:
        return config.spec
    parts = []
    if config.pca:
        pca = min(config.pca, dim, max(n - 1, 1))
        if pca != config.pca:
            log.warning("--pca %d reduced to %d (needs fewer dims than images)", config.pca, pca)
        parts += [f"PCA{'W' if config.whiten else ''}{pca}", "L2norm"]
        dim = pca
    if config.clusters:
        return ",".join(parts + [f"IVF{min(config.clusters, max(n, 1))},Flat"])
    if n < EXACT_LIMIT or config.store:
        return ",".join(parts + ["Flat"])
    if not parts and dim > ANN_PCA:
        parts, dim = [f"PCA{ANN_PCA}"], ANN_PCA
    return ",".join(parts + [f"IVF{auto_clusters(n)}", f"PQ{pq_subquantizers(dim)}np"])


def auto_clusters(n: int) -> int:
    """About 4*sqrt(n) IVF lists, FAISS's guideline (1M images -> 4000 clusters)."""
    return max(1, int(4 * math.sqrt(n)))


def pq_subquantizers(dim: int) -> int:
    """One byte per PQ_DIMS_PER_BYTE dims, rounded to a divisor of dim (FAISS needs one)."""
    target = max(1, dim // PQ_DIMS_PER_BYTE)
    return min((m for m in range(1, dim + 1) if dim % m == 0), key=lambda m: (abs(m - target), -m))


def is_exact(spec: str) -> bool:
    """True for brute-force specs (optional PCA/normalisation, then Flat)."""
    return re.fullmatch(r"((PCAW?\d+|PCAR?\d+|L2norm|IDMap2?),)*Flat", spec) is not None


def kind(spec: str) -> str:
    """'exact', or the spec without its sizes: a rebuild is due when the kind a size calls for changes."""
    return "exact" if is_exact(spec) else re.sub(r"\d+", "", spec)


_TRANSFORM = re.compile(r"(PCAW?R?\d+|L2norm|OPQ\d+(_\d+)?|RR\d+|ITQ\d*(_\d+)?)")


def transforms(spec: str) -> list[str]:
    """The leading vector transforms of a spec (PCA, L2norm, OPQ, ...)."""
    out = []
    for token in spec.split(","):
        if not _TRANSFORM.fullmatch(token):
            break
        out.append(token)
    return out


def compresses(spec: str) -> bool:
    """A PCA not followed by L2norm: compression of the input space, not a new cosine space."""
    chain = transforms(spec)
    return any(t.startswith("PCA") for t in chain) and chain[-1] != "L2norm"


def spec_metric(spec: str) -> int:
    """L2 for compressing chains (centred vectors), inner product (= cosine on unit vectors) else."""
    return int(faiss.METRIC_L2 if compresses(spec) else faiss.METRIC_INNER_PRODUCT)


def rerank_space(spec: str) -> str:
    """'index': cosine after the spec's own chain (it ends in L2norm); 'input': on the raw features."""
    chain = transforms(spec)
    return "index" if chain and chain[-1] == "L2norm" else "input"


def is_lossy(spec: str) -> bool:
    """Codes (PQ, SQ, ...) or compression whose scores are not exact cosine: re-rank them."""
    return compresses(spec) or re.search(r"(^|,)(IVF\d+(_HNSW\d+)?,)?(PQ|SQ|RQ|LSH|PRQ|ZnLattice)", spec) is not None


def default_nprobe(nlist: int) -> int:
    return min(nlist, max(16, nlist // 32))
