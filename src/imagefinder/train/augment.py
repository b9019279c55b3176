"""Random views of cached images for fine-tuning, on whole batches of uint8 tensors.

Every random draw comes from an explicit `torch.Generator`, never the global RNG, so a run is
reproducible from its seed and a resumed run draws exactly what an uninterrupted one would.
Images are cached as (N, 3, S, S) uint8, squashed like the `Preprocess(resize="squash")`
the EfficientNet-Lite backbones use at inference, so a view without crop is the inference input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..ingest.decode import Preprocess


@dataclass(frozen=True)
class Augment:
    """One kind of view. brightness/contrast b: a factor drawn from [1-b, 1+b] per image."""

    size: int = 224
    crop: bool = False  # random resized crop (area in crop_scale, aspect in crop_ratio) before resizing
    crop_scale: tuple[float, float] = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5  # probability of a horizontal flip
    brightness: float = 0.3
    contrast: float = 0.3


PLAIN = Augment(flip=0.0, brightness=0.0, contrast=0.0)  # the inference view


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _crops(images: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    """Random resized crops (the Inception/SimCLR recipe), each resized to aug.size."""
    n, _, height, width = images.shape
    area = _uniform(n, *aug.crop_scale, gen) * height * width
    log_ratio = _uniform(n, math.log(aug.crop_ratio[0]), math.log(aug.crop_ratio[1]), gen)
    offsets = torch.rand(n, 2, generator=gen)
    out = []
    for i in range(n):
        ratio = math.exp(float(log_ratio[i]))
        w = min(width, max(1, round(math.sqrt(float(area[i]) * ratio))))
        h = min(height, max(1, round(math.sqrt(float(area[i]) / ratio))))
        top = int(float(offsets[i, 0]) * (height - h + 1)) if h < height else 0
        left = int(float(offsets[i, 1]) * (width - w + 1)) if w < width else 0
        out.append(_resize(images[i : i + 1, :, top : top + h, left : left + w], aug.size))
    return torch.cat(out)


def views(images: torch.Tensor, aug: Augment, spec: Preprocess, gen: torch.Generator) -> torch.Tensor:
    """(N, 3, S, S) uint8 -> (N, 3, size, size) float32, augmented and normalised as `spec` says."""
    if spec.layout != "NCHW" or spec.channels != "RGB":
        raise ValueError(f"fine-tuning supports RGB NCHW backbones, not {spec.channels} {spec.layout}")
    x = images.float()
    n = len(x)
    x = _crops(x, aug, gen) if aug.crop else _resize(x, aug.size)
    if aug.flip:
        flip = torch.rand(n, generator=gen) < aug.flip
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if aug.brightness:
        x = x * _uniform(n, 1 - aug.brightness, 1 + aug.brightness, gen)[:, None, None, None]
    if aug.contrast:
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean(dim=(1, 2))[:, None, None, None]
        x = (x - gray) * _uniform(n, 1 - aug.contrast, 1 + aug.contrast, gen)[:, None, None, None] + gray
    if aug.brightness or aug.contrast:
        x = x.clamp(0, 255)
    mean = torch.tensor(spec.mean, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(spec.std, dtype=torch.float32)[None, :, None, None]
    return ((x - mean) / std).contiguous()
