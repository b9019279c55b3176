"""Pooling: a backbone's feature map (or ViT tokens) -> one global descriptor, and the model spec.

Backbones are exported to output their last *feature map* (N,C,h,w) rather than a pooled
vector, so that the pooling is a recorded option applied in numpy, not baked into the graph:

- ``avg``: global average pooling (the classic, and the default);
- ``max``: global max pooling (MAC);
- ``rmac``: regional MAC (Tolias, Sicre & Jegou, ICLR 2016): max pooling over square regions at
  three scales (about 40% overlap) and over the whole map, each L2-normalised, then summed, so
  a landmark that fills only part of the photo still gets regions of its own;
- ``gem`` / ``gemP``: generalised mean, (mean x^p)^(1/p); p=1 is avg, p->inf is max. p=3 is
  the usual choice for retrieval: it weighs the strongest activations (the object) above the
  background without throwing everything else away as max pooling does;
- ``ms`` / ``msA_B_C``: multi-scale: the image is fed at several sizes (default 1, 1/sqrt2, 1/2
  of the model's input size), each pooled vector is L2-normalised and their mean is taken;
- ``powA``: signed power normalisation x -> sign(x)|x|^A after pooling (A=0.5: square root),
  which damps bursty dimensions;
- ``longN`` / ``uptoN`` / ``squareN`` (input, not pooling): the image resized keeping its aspect
  ratio to a long side of N px; the same but never enlarged (a smaller image keeps its own size);
  or squashed to N x N. Without one a backbone uses its default input
  (`Backbone.default_input`); the resolved input is recorded in the manifest as `preprocess`.

Without a pooling method in the spec a backbone uses its own default (efficientnet-lite0:
GeM p=2, measured best in benchmarks/quality.py; `@avg` asks for average pooling). The spec
string and the resolved pooling of each member are recorded in the manifest, and `ImageFinder`
embeds queries with the recorded pooling (`Embedder.for_manifest`), so index and query
features can never be computed differently - not even for an index built before a default
changed (no recorded pooling = average pooling, the only one there was):

    efficientnet-lite0                      its default pooling (GeM p=2) at 224
    efficientnet-lite0@avg                  plain average pooling
    efficientnet-lite0@gem3,ms              GeM p=3, scales 1, 0.707, 0.5
    efficientnet-lite0@gem3:1+dinov2-s:0.5  an ensemble with per-member weights
    efficientnet-lite2@gem2,long512         aspect ratio kept, long side 512 px
    efficientnet-lite2@gem2,upto384         long side 384 px at most, small images not enlarged
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from .errors import ImageFinderError

DEFAULT_SCALES: tuple[float, ...] = (1.0, round(1 / math.sqrt(2), 3), 0.5)
GEM_EPS = 1e-6


class SpecError(ImageFinderError, ValueError):
    """A model spec string that cannot be parsed; the message says which part and why."""


@dataclass(frozen=True)
class Pooling:
    method: str = "avg"  # avg | max | gem | rmac
    p: float = 3.0  # GeM exponent (method "gem" only)
    scales: tuple[float, ...] = (1.0,)
    power: float | None = None  # signed power normalisation after pooling

    @property
    def is_default(self) -> bool:
        return self == Pooling()

    def to_dict(self) -> dict:
        return {"method": self.method, "p": self.p if self.method == "gem" else None,
                "scales": list(self.scales), "power": self.power}

    @classmethod
    def from_dict(cls, data: dict) -> Pooling:
        """Inverse of `to_dict` (as recorded in a manifest's members)."""
        p = data.get("p")
        return cls(data.get("method", "avg"), 3.0 if p is None else float(p),
                   tuple(float(s) for s in data.get("scales") or (1.0,)), data.get("power"))

    def token(self) -> str:
        """Canonical option string (the part after '@'), '' for the default."""
        parts = []
        if self.method == "gem":
            parts.append(f"gem{_num(self.p)}")
        elif self.method in ("max", "rmac"):
            parts.append(self.method)
        if self.scales != (1.0,):
            parts.append("ms" if self.scales == DEFAULT_SCALES else "ms" + "_".join(_num(s) for s in self.scales))
        if self.power is not None:
            parts.append(f"pow{_num(self.power)}")
        return ",".join(parts)


@dataclass(frozen=True)
class MemberSpec:
    """One backbone of a model spec: its name, pooling options and ensemble weight."""

    name: str
    pooling: Pooling = field(default_factory=Pooling)
    weight: float = 1.0
    method_given: bool = False  # False: the backbone's own default pooling method applies
    input: tuple[str, int] | None = None  # ("long" | "upto" | "square", N); None: the backbone's default input

    def resolved(self, default: Pooling) -> Pooling:
        """The pooling to use: the spec's, with the backbone's default method unless one was given."""
        if self.method_given:
            return self.pooling
        return Pooling(default.method, default.p, self.pooling.scales, self.pooling.power)


def _num(x: float) -> str:
    return f"{x:g}"


_WEIGHT = re.compile(r"^(?P<body>.*?):(?P<w>\d+(\.\d*)?|\.\d+)$")


def parse_member(text: str) -> MemberSpec:
    """'name[@opt,opt...][:weight]' -> MemberSpec (see the module docstring for the options)."""
    text = text.strip()
    weight = 1.0
    m = _WEIGHT.match(text)
    if m:
        text, weight = m.group("body"), float(m.group("w"))
        if weight <= 0:
            raise SpecError(f"{text}: ensemble weight must be positive, got {weight:g}")
    name, _, opts = text.partition("@")
    name = name.strip()
    if not name:
        raise SpecError("empty model name")
    method, p, power, given = "avg", 3.0, None, False
    scales: tuple[float, ...] = (1.0,)
    input_: tuple[str, int] | None = None
    for opt in filter(None, (o.strip().lower() for o in opts.split(","))):
        try:
            if opt in ("avg", "mean", "gap"):
                method, given = "avg", True
            elif opt in ("max", "mac"):
                method, given = "max", True
            elif opt == "rmac":
                method, given = "rmac", True
            elif opt.startswith("gem"):
                method, p, given = "gem", float(opt[3:].lstrip(":=") or 3.0), True
                if p <= 0:
                    raise ValueError("p must be positive")
            elif opt.startswith("ms"):
                rest = opt[2:].lstrip(":=")
                scales = DEFAULT_SCALES if not rest else tuple(float(s) for s in rest.split("_"))
                if not scales or any(not 0.1 <= s <= 4 for s in scales):
                    raise ValueError("scales must lie in 0.1..4")
            elif opt.startswith(("long", "square", "upto")):
                kind = next(k for k in ("long", "square", "upto") if opt.startswith(k))
                size = int(opt[len(kind):].lstrip(":="))
                if not 32 <= size <= 2048:
                    raise ValueError("the input size must lie in 32..2048 px")
                input_ = (kind, size)
            elif opt.startswith("pow"):
                power = float(opt[3:].lstrip(":="))
                if not 0 < power <= 1:
                    raise ValueError("power must lie in (0, 1]")
            else:
                raise ValueError("unknown option")
        except ValueError as exc:
            raise SpecError(f"{name}@{opts}: bad pooling option {opt!r} ({exc}); options are avg, max, "
                            "gem or gemP (e.g. gem3), rmac, ms or msA_B (scales, e.g. ms1_0.707), powA (e.g. pow0.5), "
                            "longN, uptoN or squareN (input size, e.g. long512)") from None
    return MemberSpec(name, Pooling(method, p, scales, power), weight, given, input_)


def parse_spec(spec: str) -> list[MemberSpec]:
    """'a@gem3+b:0.5' -> [MemberSpec(a, gem3), MemberSpec(b, weight 0.5)]."""
    members = [parse_member(part) for part in spec.split("+") if part.strip()]
    if not members:
        raise SpecError("empty model name")
    return members


# --- pooling --------------------------------------------------------------------------------


def pool_map(fmap: np.ndarray, pooling: Pooling, layout: str = "NCHW") -> np.ndarray:
    """(N,C,h,w) (or NHWC) feature map -> (N,C) by avg / max / GeM / R-MAC."""
    x = np.asarray(fmap, dtype=np.float32)
    axes = (2, 3) if layout == "NCHW" else (1, 2)
    if pooling.method == "avg":
        return x.mean(axis=axes)
    if pooling.method == "max":
        return x.max(axis=axes)
    if pooling.method == "rmac":
        return rmac(x if layout == "NCHW" else x.transpose(0, 3, 1, 2))
    return gem(x, pooling.p, axes)


RMAC_LEVELS = 3
RMAC_OVERLAP = 0.4  # the paper's target overlap of neighbouring regions


def rmac_regions(height: int, width: int, levels: int = RMAC_LEVELS) -> list[tuple[int, int, int]]:
    """(top, left, side) of R-MAC's square regions on a height x width map.

    Level l has regions of side 2*min/(l+1), l of them across the short side and l + m across
    the long one, where m (0-6) gives neighbouring level-1 regions the overlap closest to 40%.
    """
    short, long = min(height, width), max(height, width)
    extra = 0
    if long > short:
        extra = min(range(1, 7), key=lambda m: abs(1 - (long - short) / m / short - RMAC_OVERLAP))
    regions = []
    for level in range(1, levels + 1):
        side = 2 * short // (level + 1)
        if side == 0:
            continue
        across_h = level + (extra if height > width else 0)
        across_w = level + (extra if width > height else 0)
        for top in _starts(height, side, across_h):
            regions += [(top, left, side) for left in _starts(width, side, across_w)]
    return regions


def _starts(size: int, side: int, count: int) -> list[int]:
    """`count` evenly spaced starts of a window of `side` on an axis of `size` (first and last flush)."""
    if count == 1:
        return [(size - side) // 2]
    step = (size - side) / (count - 1)
    return sorted({min(size - side, round(i * step)) for i in range(count)})


def rmac(x: np.ndarray, levels: int = RMAC_LEVELS) -> np.ndarray:
    """(N,C,h,w) -> (N,C): the sum of the L2-normalised max-pooled whole map and regions."""
    def unit(v: np.ndarray) -> np.ndarray:
        return v / (np.linalg.norm(v, axis=1, keepdims=True) + GEM_EPS)

    total = unit(x.max(axis=(2, 3)))
    for top, left, side in rmac_regions(x.shape[2], x.shape[3], levels):
        total += unit(x[:, :, top:top + side, left:left + side].max(axis=(2, 3)))
    return total


def gem(x: np.ndarray, p: float, axes: tuple[int, ...]) -> np.ndarray:
    """Generalised mean over `axes`: (mean clamp(x, eps)^p)^(1/p)."""
    x = np.maximum(x, GEM_EPS, dtype=np.float32)
    if p == 1:
        return x.mean(axis=axes)
    # Scaled by the maximum so that large p cannot overflow float32: m * mean((x/m)^p)^(1/p).
    m = x.max(axis=axes, keepdims=True)
    out = np.power(np.power(x / m, p).mean(axis=axes, keepdims=True), 1.0 / p) * m
    return np.squeeze(out, axis=axes).astype(np.float32, copy=False)


def pool_tokens(tokens: np.ndarray, pooling: Pooling) -> np.ndarray:
    """ViT tokens (N, 1+P, D) -> (N, D): layer-norm each patch token, then average (or max) them.

    Layer-normed tokens are signed, so GeM (which needs non-negative inputs) does not apply.
    """
    patches = tokens[:, 1:, :].astype(np.float32)
    patches = patches - patches.mean(axis=-1, keepdims=True)
    patches /= np.sqrt((patches**2).mean(axis=-1, keepdims=True) + 1e-6)
    return patches.max(axis=1) if pooling.method == "max" else patches.mean(axis=1)


def power_normalize(x: np.ndarray, power: float | None) -> np.ndarray:
    if power is None or power == 1:
        return x
    return (np.sign(x) * np.power(np.abs(x), power)).astype(np.float32, copy=False)
