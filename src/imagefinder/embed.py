"""Embed: RGB images -> one feature vector each, for a single backbone or an ensemble `a+b`.

Ensemble members are L2-normalised before concatenation so that each member weighs the
same whatever the scale of its raw features; the member slices are recorded so that search
can also rank by each member alone (rank fusion).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .images import to_array
from .models import OnnxModel, get_backbone, parse_model_spec


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


class Embedder:
    """Loads the backbones of a model spec once; thread-safe to call (onnxruntime is)."""

    def __init__(self, model: str, threads: int | None = None) -> None:
        self.model = model
        self.members = [OnnxModel(get_backbone(name), threads) for name in parse_model_spec(model)]

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
            MemberInfo(m.backbone.name, m.backbone.dim, m.weights_sha256, m.backbone.preprocess.to_dict())
            for m in self.members
        ]

    def prepare(self, image: Image.Image) -> list[np.ndarray]:
        """CPU-side preprocessing of one image for every member (runs in decode threads)."""
        return [to_array(image, m.backbone.preprocess) for m in self.members]

    def embed_prepared(self, batch: Sequence[list[np.ndarray]]) -> np.ndarray:
        """A batch of `prepare` outputs -> (N, dim) float32, members normalised and joined."""
        if not batch:
            return np.zeros((0, self.dim), np.float32)
        parts = []
        for i, member in enumerate(self.members):
            features = member(np.stack([item[i] for item in batch]))
            parts.append(l2_normalize(features) if len(self.members) > 1 else features)
        return np.concatenate(parts, axis=1).astype(np.float32, copy=False)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_prepared([self.prepare(img) for img in images])
