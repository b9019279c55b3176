"""Embed: RGB images -> one feature vector each, for a single backbone or an ensemble `a+b`.

Each member runs its backbone (at one or several input scales), pools the feature map as its
spec says (`pooling`: avg / max / GeM, multi-scale, power normalisation), and for an ensemble
is L2-normalised and scaled by sqrt(weight) before concatenation: the cosine of two ensemble
vectors is then the weight-averaged cosine of the members, whatever the scale of their raw
features. The member slices are recorded so search can also rank by each member alone
(rank fusion).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from PIL import Image

from .ingest.decode import to_array
from .models import ModelUnavailable, OnnxModel, get_backbone
from .models.registry import parse_members
from .pooling import MemberSpec, Pooling, power_normalize


class RecordedModel(Protocol):
    """What `Embedder.for_manifest` reads of an `index.Manifest` (index imports embed: no import back)."""

    @property
    def model(self) -> str: ...

    @property
    def members(self) -> list[dict[str, Any]]: ...

    @property
    def precision(self) -> str: ...


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def split_precision(precision: str | None, members: int) -> list[str | None]:
    """'int8' / 'int8+fp32' / None -> one precision (or None: the default) per member."""
    if precision is None:
        return [None] * members
    parts: list[str | None] = list(precision.split("+"))
    if len(parts) == 1:
        return parts * members
    if len(parts) != members:
        raise ModelUnavailable(f"precision {precision!r} names {len(parts)} members, the model has {members}")
    return parts


@dataclass(frozen=True)
class MemberInfo:
    name: str
    dim: int
    weights_sha256: str
    preprocess: dict
    pooling: dict = field(default_factory=dict)
    weight: float = 1.0


class Embedder:
    """Loads the backbones of a model spec once; thread-safe to call (onnxruntime is)."""

    def __init__(self, model: str, threads: int | None = None, poolings: Sequence[Pooling] | None = None,
                 precision: str | None = None) -> None:
        """`poolings` (one per member) override what the spec resolves to: see `for_manifest`.

        `precision`: "fp32" or "int8" for every member, or one per member joined by '+' as in
        the manifest ("int8+fp32"); None: each backbone's default precision.
        """
        self.model = model
        specs: list[MemberSpec] = parse_members(model)
        precisions = split_precision(precision, len(specs))
        self.members = [OnnxModel(get_backbone(spec.name), threads, p) for spec, p in zip(specs, precisions)]
        if poolings is None:
            poolings = [spec.resolved(m.backbone.default_pooling) for spec, m in zip(specs, self.members)]
        elif len(poolings) != len(specs):
            raise ValueError(f"{model}: {len(specs)} members but {len(poolings)} poolings")
        self.specs = [MemberSpec(spec.name, pooling, spec.weight, True) for spec, pooling in zip(specs, poolings)]

    @classmethod
    def for_manifest(cls, manifest: RecordedModel, threads: int | None = None) -> Embedder:
        """The embedder an index was built with: its model spec, and the pooling and precision recorded.

        Every member of a manifest records its pooling, and every manifest its precision (older
        manifests get average pooling and fp32 by migration, see index/manifest.py), so a
        changed default never changes how an existing index is queried or extended: queries of
        an int8 index go through the same int8 graph as its images did.
        """
        poolings = [Pooling.from_dict(m["pooling"]) for m in manifest.members]
        return cls(manifest.model, threads, poolings or None, manifest.precision)

    @property
    def precision(self) -> str:
        """What the manifest records: one precision, or one per member joined by '+' when they differ."""
        values = [m.precision for m in self.members]
        return values[0] if len(set(values)) == 1 else "+".join(values)

    @property
    def dim(self) -> int:
        return sum(m.backbone.dim for m in self.members)

    @property
    def member_slices(self) -> list[tuple[int, int]]:
        """[start, stop) columns of each member inside the ensemble vector."""
        out, start = [], 0
        for m in self.members:
            out.append((start, start + m.backbone.dim))
            start += m.backbone.dim
        return out

    def info(self) -> list[MemberInfo]:
        return [
            MemberInfo(m.backbone.name, m.backbone.dim, m.weights_sha256, m.backbone.preprocess.to_dict(),
                       spec.pooling.to_dict(), spec.weight)
            for m, spec in zip(self.members, self.specs)
        ]

    def prepare(self, image: Image.Image) -> list[list[np.ndarray]]:
        """CPU-side preprocessing of one image for every member and scale (runs in decode threads)."""
        out = []
        for m, spec in zip(self.members, self.specs):
            pre = m.backbone.preprocess
            out.append([to_array(image, pre if s == 1 else replace(pre, size=max(32, round(pre.size * s))))
                        for s in spec.pooling.scales])
        return out

    def embed_prepared(self, batch: Sequence[list[list[np.ndarray]]]) -> np.ndarray:
        """A batch of `prepare` outputs -> (N, dim) float32, members pooled, normalised and joined."""
        if not batch:
            return np.zeros((0, self.dim), np.float32)
        parts = []
        for i, (member, spec) in enumerate(zip(self.members, self.specs)):
            pooling = spec.pooling
            per_scale = [member(np.stack([item[i][j] for item in batch]), pooling)
                         for j in range(len(pooling.scales))]
            # Multi-scale: each scale's descriptor counts the same, whatever its activation level.
            features = per_scale[0] if len(per_scale) == 1 else np.mean([l2_normalize(f) for f in per_scale], axis=0)
            features = power_normalize(features, pooling.power)
            if len(self.members) > 1:
                features = l2_normalize(features) * np.float32(math.sqrt(spec.weight))
            parts.append(features)
        return np.concatenate(parts, axis=1).astype(np.float32, copy=False)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_prepared([self.prepare(img) for img in images])
