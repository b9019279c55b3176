"""Derived benchmark data sets, written deterministically from a labelled image set (e.g. UKBench).

- `make_copydetect`: a harder retrieval benchmark in the evaluate format with a query/db split
  (`role` column). Each group contributes one heavily transformed query - random crop of
  40-70% of the area, rotation up to +-30 degrees, an occluding box, rescaling, colour jitter and
  JPEG at quality 20-40 - ranked against the untouched images. Its relevant images are the
  original it was made from *and* the group's other photos of the same object, so the set
  measures copy detection (the original) and instance retrieval under damage (the others).

- `make_duplicate_set`: a labelled set for the duplicate finder: originals, exact byte copies,
  re-encodes (JPEG q=30), resizes (50%), 80% crops, other photos of the same object, and
  unrelated images. `labels.csv` says for each file which original it derives from and how.

- `make_edit_set`: the same for what people do to copies of real photos (e.g. paris266): exact
  copy, re-encode, resize, crop, 90 degree turn, small rotation, mirror, brightness/contrast,
  a white text box, a corner logo; unrelated photos (lookalikes of the same landmarks) besides.

    python -m imagefinder.benchdata copydetect ../shared/data/ukbench1000 /tmp/ukbench-hard
    python -m imagefinder.benchdata duplicates ../shared/data/ukbench1000 /tmp/dupset
    python -m imagefinder.benchdata edits ../shared/data/paris266 /tmp/editset --half 1
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from .evaluate import read_groundtruth


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)  # rerunning into the same directory rewrites it
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _groups(data_dir: Path) -> dict[str, list[str]]:
    truth = read_groundtruth(data_dir)
    groups: dict[str, list[str]] = defaultdict(list)
    for name, g in zip(truth.filenames, truth.groups):
        if g is not None:
            groups[g].append(name)
    return dict(groups)


def damage(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One heavy, random copy-detection transform of an RGB image (see the module docstring)."""
    img = image.convert("RGB")
    w, h = img.size
    # crop: 40-70% of the area, aspect ratio jittered by up to 1.3x
    area = rng.uniform(0.4, 0.7)
    aspect = math.exp(rng.uniform(-math.log(1.3), math.log(1.3)))
    cw = min(w, max(16, round(w * math.sqrt(area) * math.sqrt(aspect))))
    ch = min(h, max(16, round(h * math.sqrt(area) / math.sqrt(aspect))))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    # rotation +-30 degrees, canvas expanded, corners filled with a random grey
    fill = int(rng.integers(0, 256))
    img = img.rotate(float(rng.uniform(-30, 30)), resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(fill,) * 3)
    # scale 0.6-1.4
    s = rng.uniform(0.6, 1.4)
    img = img.resize((max(16, round(img.width * s)), max(16, round(img.height * s))), Image.Resampling.BILINEAR)
    # occlusion: a random-colour box over 8-20% of the image
    ow = max(4, round(img.width * math.sqrt(rng.uniform(0.08, 0.2))))
    oh = max(4, round(img.height * math.sqrt(rng.uniform(0.08, 0.2))))
    ox, oy = int(rng.integers(0, img.width - ow + 1)), int(rng.integers(0, img.height - oh + 1))
    img.paste(tuple(int(c) for c in rng.integers(0, 256, 3)), (ox, oy, ox + ow, oy + oh))
    # colour jitter: brightness, contrast, saturation x0.6-1.4, hue rotated by up to +-18 degrees
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.6, 1.4))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.6, 1.4))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
    hsv = np.asarray(img.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.integers(-13, 14))) % 256
    img = Image.fromarray(hsv, "HSV").convert("RGB")
    # JPEG at quality 20-40
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(20, 41)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def make_copydetect(src: Path | str, out: Path | str, *, seed: int = 0, groups: int | None = None) -> Path:
    """Write OUT/images + OUT/groundtruth.csv (filename,group_id,role): transformed queries + untouched db."""
    src, out = Path(src), Path(out)
    by_group = _groups(src)
    names = sorted(by_group, key=lambda g: (len(g), g))[:groups] if groups else sorted(by_group, key=lambda g: (len(g), g))
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for g in names:
        members = sorted(by_group[g])
        for name in members:
            _link_or_copy(src / "images" / name, out / "images" / name)
            rows.append((name, g, "db"))
        original = members[int(rng.integers(0, len(members)))]
        query = f"query-{Path(original).stem}.jpg"
        img = damage(Image.open(src / "images" / original), rng)
        img.save(out / "images" / query, "JPEG", quality=95)
        rows.append((query, g, "query"))
    with open(out / "groundtruth.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "group_id", "role"])
        writer.writerows(rows)
    return out


DUPLICATE_KINDS = ("original", "exact", "reencode", "resize", "crop", "same_object", "unrelated")


def make_duplicate_set(src: Path | str, out: Path | str, *, originals: int = 100, unrelated: int = 100,
                       seed: int = 0, groups: list[str] | None = None) -> Path:
    """Write OUT/images + OUT/labels.csv (filename,original,kind) for duplicate-finder evaluation.

    For each of `originals` groups: its first image (original) plus an exact byte copy, a JPEG
    q=30 re-encode, a 50% resize and an 80% centre-offset crop of it (near-duplicates), and
    another photo of the same object (similar, not a duplicate). `unrelated` further images
    come from other groups, one per group, and duplicate nothing. `groups` restricts the draw to
    those group ids (e.g. disjoint halves for calibrating and for measuring).
    """
    src, out = Path(src), Path(out)
    by_group = _groups(src)
    order = sorted(groups if groups is not None else by_group, key=lambda g: (len(g), g))
    rng = np.random.default_rng(seed)
    picked = [order[i] for i in rng.permutation(len(order))]
    dup_groups, other_groups = picked[:originals], picked[originals:originals + unrelated]
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for g in dup_groups:
        members = sorted(by_group[g])
        name = members[0]
        stem = Path(name).stem
        raw = (src / "images" / name).read_bytes()
        (out / "images" / name).write_bytes(raw)
        (out / "images" / f"{stem}-exact.jpg").write_bytes(raw)
        img = Image.open(io.BytesIO(raw)).convert("RGB")
        img.save(out / "images" / f"{stem}-q30.jpg", "JPEG", quality=30)
        img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.Resampling.BILINEAR).save(
            out / "images" / f"{stem}-half.jpg", "JPEG", quality=90)
        cw, ch = round(img.width * 0.8), round(img.height * 0.8)
        x0, y0 = int(rng.integers(0, img.width - cw + 1)), int(rng.integers(0, img.height - ch + 1))
        img.crop((x0, y0, x0 + cw, y0 + ch)).save(out / "images" / f"{stem}-crop80.jpg", "JPEG", quality=90)
        rows += [(name, name, "original"), (f"{stem}-exact.jpg", name, "exact"), (f"{stem}-q30.jpg", name, "reencode"),
                 (f"{stem}-half.jpg", name, "resize"), (f"{stem}-crop80.jpg", name, "crop")]
        if len(members) > 1:
            other = members[1 + int(rng.integers(0, len(members) - 1))]
            _link_or_copy(src / "images" / other, out / "images" / other)
            rows.append((other, name, "same_object"))
    for g in other_groups:
        name = sorted(by_group[g])[int(rng.integers(0, len(by_group[g])))]
        _link_or_copy(src / "images" / name, out / "images" / name)
        rows.append((name, "", "unrelated"))
    _write_labels(out, rows)
    return out


def _write_labels(out: Path, rows: list[tuple[str, str, str]]) -> None:
    """labels.csv of a made set: each file, the original it was made from ('' if unrelated), the kind."""
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "original", "kind"])
        writer.writerows(rows)


EDIT_KINDS = ("exact", "reencode", "resize", "crop", "rot90", "rotate", "mirror", "brightness", "watermark", "logo")


def _jpeg(img: Image.Image, path: Path, quality: int = 90) -> None:
    img.convert("RGB").save(path, "JPEG", quality=quality)


def _watermark(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A white box with dark text over ~8% of the image, somewhere random (a caption, a stamp)."""
    from PIL import ImageDraw, ImageFont

    out = img.copy()
    w, h = out.size
    bw, bh = round(w * math.sqrt(0.08) * 1.6), round(h * math.sqrt(0.08) / 1.6)
    x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
    draw = ImageDraw.Draw(out)
    draw.rectangle((x0, y0, x0 + bw, y0 + bh), fill=(255, 255, 255))
    font = ImageFont.load_default(size=max(8, bh // 3))
    draw.text((x0 + bw // 20, y0 + bh // 3), "(c) ImageFinder 2026", fill=(20, 20, 20), font=font)
    return out


def _logo(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A half-transparent coloured disc with initials in a corner, ~5% of the image (a channel logo)."""
    from PIL import ImageDraw, ImageFont

    base = img.convert("RGBA")
    w, h = base.size
    d = round(math.sqrt(0.05 * w * h))
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    margin = max(2, d // 8)
    corner = int(rng.integers(0, 4))
    x0 = margin if corner % 2 == 0 else w - d - margin
    y0 = margin if corner < 2 else h - d - margin
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    draw.ellipse((x0, y0, x0 + d, y0 + d), fill=(*colour, 170))
    draw.text((x0 + d // 5, y0 + d // 3), "IF", fill=(255, 255, 255, 230), font=ImageFont.load_default(size=d // 3))
    return Image.alpha_composite(base, layer).convert("RGB")


def _rotate_small(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Straightened by 2-5 degrees either way, then cropped to the rectangle without blank corners."""
    angle = float(rng.uniform(2, 5)) * (1 if rng.integers(0, 2) else -1)
    w, h = img.size
    out = img.rotate(angle, resample=Image.Resampling.BICUBIC)
    a = math.radians(abs(angle))
    # the largest centred rectangle of the same aspect inside the rotated image
    scale = 1 / (math.cos(a) + max(w / h, h / w) * math.sin(a))
    cw, ch = round(w * scale), round(h * scale)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return out.crop((x0, y0, x0 + cw, y0 + ch))


def edit(img: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """(edited image, JPEG quality to save it at) for one of EDIT_KINDS other than 'exact'."""
    w, h = img.size
    if kind == "reencode":
        return img, int(rng.integers(30, 51))
    if kind == "resize":
        return img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BILINEAR), 90
    if kind == "crop":
        f = rng.uniform(0.8, 0.9)
        cw, ch = round(w * f), round(h * f)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((x0, y0, x0 + cw, y0 + ch)), 90
    if kind == "rot90":
        return img.transpose(Image.Transpose.ROTATE_90 if rng.integers(0, 2) else Image.Transpose.ROTATE_270), 90
    if kind == "rotate":
        return _rotate_small(img, rng), 90
    if kind == "mirror":
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 90
    if kind == "brightness":
        out = ImageEnhance.Brightness(img).enhance(rng.choice([rng.uniform(0.65, 0.8), rng.uniform(1.2, 1.35)]))
        return ImageEnhance.Contrast(out).enhance(rng.uniform(0.75, 1.3)), 90
    if kind == "watermark":
        return _watermark(img, rng), 90
    if kind == "logo":
        return _logo(img, rng), 90
    raise ValueError(f"unknown edit kind: {kind}")


def make_edit_set(src: Path | str, out: Path | str, *, half: int = 0, originals: int = 40, unrelated: int = 45,
                  seed: int = 0) -> Path:
    """Write OUT/images + OUT/labels.csv (filename,original,kind) from real photos (e.g. paris266).

    The source's photos (query crops `*_qcrop*` left out: they are crops of other photos there)
    are shuffled once with `seed`; half 0 takes the first `originals + unrelated` of them, half 1
    the next as many, so a calibration half and a measurement half share no photo. Each
    original gets one copy per EDIT_KINDS (exact bytes, JPEG q30-50, 0.5x, 80-90% crop, 90 degree
    turn, 2-5 degree straightening, mirror, brightness/contrast, white text box on ~8%, corner
    logo); the unrelated photos - many of the same landmarks, so lookalikes - copy nothing.
    """
    src, out = Path(src), Path(out)
    photos = sorted(p.name for p in (src / "images").iterdir()
                    if p.suffix.lower() in (".jpg", ".jpeg", ".png") and "_qcrop" not in p.name)
    photos = [photos[i] for i in np.random.default_rng(seed).permutation(len(photos))]
    per_half = originals + unrelated
    chosen = photos[half * per_half:(half + 1) * per_half]
    if len(chosen) < per_half:
        raise ValueError(f"{src} has {len(photos)} photos, too few for half {half} of {per_half}")
    rng = np.random.default_rng([seed, half])
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for name in chosen[:originals]:
        stem = Path(name).stem
        raw = (src / "images" / name).read_bytes()
        (out / "images" / name).write_bytes(raw)
        (out / "images" / f"{stem}-exact.jpg").write_bytes(raw)
        rows += [(name, name, "original"), (f"{stem}-exact.jpg", name, "exact")]
        img = Image.open(io.BytesIO(raw)).convert("RGB")
        for kind in EDIT_KINDS[1:]:
            copy, quality = edit(img, kind, rng)
            _jpeg(copy, out / "images" / f"{stem}-{kind}.jpg", quality)
            rows.append((f"{stem}-{kind}.jpg", name, kind))
    for name in chosen[originals:]:
        _link_or_copy(src / "images" / name, out / "images" / name)
        rows.append((name, "", "unrelated"))
    _write_labels(out, rows)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m imagefinder.benchdata", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["copydetect", "duplicates", "edits"])
    p.add_argument("src", type=Path, help="a labelled set: SRC/images + SRC/groundtruth.csv")
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--groups", type=int, help="copydetect: use only the first N groups")
    p.add_argument("--half", type=int, choices=[0, 1], default=0, help="edits: calibration (0) or measurement (1) half")
    args = p.parse_args(argv)
    if args.kind == "copydetect":
        make_copydetect(args.src, args.out, seed=args.seed, groups=args.groups)
    elif args.kind == "edits":
        make_edit_set(args.src, args.out, seed=args.seed, half=args.half)
    else:
        make_duplicate_set(args.src, args.out, seed=args.seed)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
