"""Presets: named, recorded bundles of every retrieval choice, from the fastest to the most accurate.

An index built with `--preset NAME` records the bundle in its manifest (`preset`); searches of
that index then use its query-time parts (query expansion, verification depth and budget)
unless a search names another preset or gives those options itself. The index-time parts
(backbone, input size, pooling, PCA, precision) are fixed by the index: a query can never be
embedded differently from the images it is compared with.

The figures behind each choice are in README "Retrieval quality" (benchmarks/resolution.py,
benchmarks/presets.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

from .errors import ImageFinderError

DEFAULT_MODEL = "efficientnet-lite0"  # = models.DEFAULT_MODEL (checked by a test; presets sit below models)


class PresetError(ImageFinderError, ValueError):
    """An unknown preset name; the message lists the known ones."""


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    model: str  # model spec: backbone @ pooling, input (see pooling.py)
    pca: int | None = None
    whiten: bool = False
    precision: str | None = None  # "fp32" | "int8"; None: each backbone's default (models.registry)
    qe: int = 0  # query time: alpha-QE with the top N results
    qe_alpha: float = 3.0
    rerank: int = 0  # query time: spatial verification depth
    rerank_budget: float | None = 2.0  # seconds per query at most
    local_features: bool = False  # index time: compute the verification's local features up front
    vqe: int = 0  # query time: verified query expansion with the first N verified results (needs rerank)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preset:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def query_options(self) -> dict[str, Any]:
        """The query-time parts, as `ImageFinder.search` takes them."""
        return {"qe": self.qe, "qe_alpha": self.qe_alpha, "rerank": self.rerank, "rerank_budget": self.rerank_budget,
                "vqe": self.vqe}


PRESETS: dict[str, Preset] = {p.name: p for p in (
    # The default model spec as it is (its input and pooling are the backbone's defaults, recorded per index).
    Preset("fast", "efficientnet-lite0, GeM 2, 224 px square: the earlier default's speed class", DEFAULT_MODEL),
    # upto384: photos are shrunk to a long side of 384, smaller images and crops are never enlarged
    Preset("balanced", "efficientnet-lite2, GeM 2, long side up to 384 (aspect ratio kept, never enlarged), "
           "alpha-QE 2 (the default)", "efficientnet-lite2@gem2,upto384", qe=2),
    # vqe 5: verified query expansion (Chum et al. 2007), N fixed a priori (README "Verification on scenes")
    Preset("accurate", "efficientnet-lite2, GeM 2, long side up to 512 (never enlarged), alpha-QE 2, spatial "
           "verification of the top 100 (local features computed at index time, 1.5 s budget), then verified "
           "query expansion with the first 5 verified results",
           "efficientnet-lite2@gem2,upto512", qe=2, rerank=100, rerank_budget=1.5, local_features=True, vqe=5),
)}
# balanced met the interactive budget on 2 cores, measured on a quiet machine (README "Retrieval
# quality": index >= 40 images/s, single query p50 <= 150 ms on a 1000-image index)
DEFAULT_PRESET = "balanced"
FromPreset = Literal["preset"]
FROM_PRESET: FromPreset = "preset"  # an option not given: the preset's value applies
PresetName = Literal["fast", "balanced", "accurate"]  # for schemas (the API's OpenAPI enum)
assert set(get_args(PresetName)) == set(PRESETS)


QE_METRICS = ("cosine", "fusion")  # the metrics query expansion works with (search.search checks it)
NO_RERANK_METRICS = ("euclidean",)  # re-ranking adds to similarities, not to distances
OFF: dict[str, Any] = Preset("off", "no query-time options", DEFAULT_MODEL).query_options()  # the field defaults


def resolve_query_options(bundle: Preset | None, metric: str, given: dict[str, Any]) -> dict[str, Any]:
    """qe, qe_alpha, rerank, rerank_budget, vqe: those `given` (not None), else the bundle's, else off.

    A bundle's expansion and verification are dropped for a metric they do not work with (a
    balanced index searched with --metric euclidean is a plain euclidean search); a `given`
    option is kept as it is, so the search refuses it with a message naming the metric.
    `rerank_budget` counts as given unless it is FROM_PRESET (its None means "no budget").
    """
    base = dict(bundle.query_options() if bundle else OFF)
    if metric not in QE_METRICS:
        base["qe"] = 0
    if metric in NO_RERANK_METRICS:
        base["rerank"] = base["vqe"] = 0

    def is_given(key: str) -> bool:
        value = given.get(key)
        return value != FROM_PRESET if key == "rerank_budget" and key in given else value is not None

    return {k: given[k] if is_given(k) else v for k, v in base.items()}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise PresetError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}") from None


def recorded_preset(data: dict[str, Any] | None) -> Preset | None:
    """The preset a manifest recorded (None: built without one)."""
    return Preset.from_dict(data) if data else None
