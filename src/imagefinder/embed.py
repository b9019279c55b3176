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
from .models import OnnxModel, get_backbone
from .models.registry import parse_members
from .pooling import MemberSpec, Pooling, power_normalize


class RecordedModel(Protocol):
    """What `Embedder.for_manifest` reads of an `index.Manifest` (index imports embed: no import back)."""

    @property
    def model(self) -> str: ...

    @property
    def members(self) -> list[dict[str, Any]]: ...


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


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

    def __init__(self, model: str, threads: int | None = None, poolings: Sequence[Pooling] | None = None) -> None:
        """`poolings` (one per member) override what the spec resolves to: see `for_manifest`."""
        self.model = model
        specs: list[MemberSpec] = parse_members(model)
        self.members = [OnnxModel(get_backbone(spec.name), threads) for spec in specs]
        if poolings is None:
            poolings = [spec.resolved(m.backbone.default_pooling) for spec, m in zip(specs, self.members)]
        elif len(poolings) != len(specs):
            raise ValueError(f"{model}: {len(specs)} members but {len(poolings)} poolings")
        self.specs = [MemberSpec(spec.name, pooling, spec.weight, True) for spec, pooling in zip(specs, poolings)]

    @classmethod
    def for_manifest(cls, manifest: RecordedModel, threads: int | None = None) -> Embedder:
        """The embedder an index was built with: its model spec and the pooling recorded per member.

        Every member of a manifest records its pooling (older manifests get theirs by migration,
        see index/manifest.py), so a changed default pooling never changes how an existing
        index is queried or extended.
        """
        poolings = [Pooling.from_dict(m["pooling"]) for m in manifest.members]
        return cls(manifest.model, threads, poolings or None)

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
