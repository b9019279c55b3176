"""The built-in sample collection: 9 public-domain photos, each with edited copies.

Edited copies (crop, mirror, colour change, rotation + heavy JPEG) give every photo a group
of look-alikes, so a search on the sample shows what the tool does; the query is one more
edit that is *not* indexed.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "original": lambda im: im,
    "crop": lambda im: im.crop(_box(im, 0.1, 0.1, 0.8)),
    "mirror": ImageOps.mirror,
    "colour": lambda im: ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(1.3)).enhance(0.7),
    "rotated": lambda im: im.rotate(12, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=(0, 0, 0)),
}
QUERY_PHOTO = "coffee"


def _box(im: Image.Image, left: float, top: float, size: float) -> tuple[int, int, int, int]:
    w, h = im.size
    return int(w * left), int(h * top), int(w * (left + size)), int(h * (top + size))


def photos() -> list[tuple[str, Image.Image]]:
    root = resources.files("imagefinder") / "sample_data"
    out = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".jpg"):
            with entry.open("rb") as f:
                out.append((entry.name[:-4], Image.open(io.BytesIO(f.read())).convert("RGB")))
    return out


def write_sample(images_dir: Path) -> tuple[Path, Path]:
    """Write the collection (once) and return (images folder, query image outside it)."""
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    for name, photo in photos():
        for edit, fn in EDITS.items():
            target = images_dir / f"{name}_{edit}.jpg"
            if not target.exists():
                fn(photo).save(target, quality=40 if edit == "rotated" else 90)
    query = images_dir.parent / f"query_{QUERY_PHOTO}.jpg"
    if not query.exists():
        photo = dict(photos())[QUERY_PHOTO]
        edited = ImageOps.mirror(photo.crop(_box(photo, 0.2, 0.15, 0.7))).resize((240, 240))
        edited.save(query, quality=75)
    return images_dir, query
