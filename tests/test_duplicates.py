"""Duplicate finder: planted exact copies, re-encodes, resizes and crops land in separate tiers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from imagefinder.duplicates import UnionFind, find_duplicates, thresholds_for


@pytest.fixture(scope="module")
def planted(ukbench_dir: Path, embedder, tmp_path_factory: pytest.TempPathFactory):
    """ukbench00000 + exact copy + q30 re-encode + 50% resize + 80% crop; ukbench00001 (same object,
    another photo); ukbench00100 and ukbench00200 (other objects)."""
    from imagefinder import build_index
    from imagefinder.index import Store

    folder = tmp_path_factory.mktemp("dups")
    src = ukbench_dir / "images"
    for n in (0, 1, 100, 200):
        shutil.copyfile(src / f"ukbench{n:05d}.jpg", folder / f"ukbench{n:05d}.jpg")
    shutil.copyfile(src / "ukbench00000.jpg", folder / "copy.jpg")
    img = Image.open(src / "ukbench00000.jpg").convert("RGB")
    img.save(folder / "q30.jpg", "JPEG", quality=30)
    img.resize((img.width // 2, img.height // 2)).save(folder / "half.jpg", "JPEG", quality=90)
    img.crop((20, 16, 20 + round(img.width * 0.8), 16 + round(img.height * 0.8))).save(folder / "crop.jpg")
    report = build_index([str(folder)], tmp_path_factory.mktemp("dups-index") / "index", embedder=embedder, workers=2)
    store = Store(report.path)
    yield folder, report.path, store
    store.close()


def _names(group) -> set[str]:
    return {Path(s).name for s in group.sources}


def test_tiers_separate_exact_near_and_similar(planted) -> None:
    _, _, store = planted
    result = find_duplicates(store)
    assert [_names(g) for g in result["exact"]] == [{"ukbench00000.jpg", "copy.jpg"}]
    assert result["exact"][0].score == 1.0
    near = [_names(g) for g in result["near"]]
    assert {"ukbench00000.jpg", "copy.jpg", "q30.jpg", "half.jpg", "crop.jpg"} in near
    assert all("ukbench00001.jpg" not in g and "ukbench00100.jpg" not in g for g in near)
    similar = [_names(g) for g in result["similar"]]
    assert any({"ukbench00000.jpg", "ukbench00001.jpg"} <= g for g in similar), "same object, another photo"
    assert all("ukbench00100.jpg" not in g and "ukbench00200.jpg" not in g for g in similar)


def test_threshold_option_and_union_find() -> None:
    assert thresholds_for("efficientnet-lite0", near=0.99) == (0.99, thresholds_for("efficientnet-lite0")[1])
    assert thresholds_for("whatever", near=0.5, similar=0.7) == (0.5, 0.5), "similar never above near"
    uf = UnionFind()
    for a, b in [(1, 2), (3, 4), (2, 3), (7, 8)]:
        uf.union(a, b)
    assert sorted(uf.groups()) == [[1, 2, 3, 4], [7, 8]]


def test_a_strict_threshold_leaves_only_the_byte_copy(planted) -> None:
    _, _, store = planted
    result = find_duplicates(store, near=0.9999, similar=0.9999)
    assert [_names(g) for g in result["exact"]] == [{"ukbench00000.jpg", "copy.jpg"}]
    assert result["near"] == [] and result["similar"] == []


def test_cli_duplicates_json_on_an_index_and_on_a_folder(planted, cli) -> None:
    folder, index, _ = planted
    for target in (index, folder):
        proc = cli("duplicates", target, "--json", "-q")
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert set(out) >= {"exact", "near", "similar", "thresholds"}
        assert [{Path(s).name for s in g["sources"]} for g in out["exact"]] == [{"ukbench00000.jpg", "copy.jpg"}]
    proc = cli("duplicates", folder / "nope")
    assert proc.returncode == 2 and "not an index directory" in proc.stderr


# --- what people do to copies of real photos (paris266 landmarks) ---------------------------

PARIS = Path(__file__).resolve().parents[2] / "shared/data/paris266/images"


def _paris(name: str) -> Image.Image:
    if not (PARIS / name).is_file():
        pytest.skip(f"paris266 benchmark data not found at {PARIS}")
    return Image.open(PARIS / name).convert("RGB")


def _captioned(img: Image.Image) -> Image.Image:
    """A white box with text over 8% of the picture, as a watermark or caption stamps it."""
    from PIL import ImageDraw

    out = img.copy()
    w, h = out.size
    bw, bh = round(w * 0.45), round(h * 0.18)
    ImageDraw.Draw(out).rectangle((w // 3, h // 2, w // 3 + bw, h // 2 + bh), fill=(255, 255, 255))
    ImageDraw.Draw(out).text((w // 3 + 10, h // 2 + bh // 3), "(c) someone 2026", fill=(0, 0, 0))
    return out


def _index(folder: Path, embedder, tmp_path_factory: pytest.TempPathFactory):
    from imagefinder import build_index
    from imagefinder.index import Store

    report = build_index([str(folder)], tmp_path_factory.mktemp("paris-index") / "index", embedder=embedder, workers=2)
    return Store(report.path)


@pytest.fixture(scope="module")
def edited(embedder, tmp_path_factory: pytest.TempPathFactory):
    """A Louvre photo, its mirror image, a captioned copy and a 85% crop; a second Invalides photo
    and, turned by 90 degrees, it and a lookalike (another photo of the same building)."""
    folder = tmp_path_factory.mktemp("paris-edits")
    louvre = _paris("paris_louvre_000013.jpg")
    louvre.save(folder / "louvre.jpg", quality=92)
    louvre.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "louvre-mirror.jpg", quality=90)
    _captioned(louvre).save(folder / "louvre-caption.jpg", quality=90)
    w, h = louvre.size
    louvre.crop((w // 10, h // 20, w // 10 + round(w * 0.85), h // 20 + round(h * 0.85))).save(
        folder / "louvre-crop.jpg", quality=90)
    for n in ("85", "86"):
        img = _paris(f"paris_invalides_0000{n}.jpg")
        img.save(folder / f"invalides{n}.jpg", quality=92)
        img.transpose(Image.Transpose.ROTATE_90).save(folder / f"invalides{n}-turned.jpg", quality=90)
    store = _index(folder, embedder, tmp_path_factory)
    yield folder, store
    store.close()


def _ids(store) -> dict[str, int]:
    return {Path(s).name: i for s, i in store.ids_by_source().items()}


def test_mirrored_and_captioned_copies_are_near_duplicates(edited) -> None:
    _, store = edited
    near = [_names(g) for g in find_duplicates(store)["near"]]
    louvre = {"louvre.jpg", "louvre-mirror.jpg", "louvre-caption.jpg", "louvre-crop.jpg"}
    assert louvre in near, near
    assert any({"invalides85.jpg", "invalides85-turned.jpg"} <= g for g in near), "a copy turned by 90 degrees"


def test_a_lookalike_is_not_grouped_with_a_copy(edited) -> None:
    """invalides86 is another photo of the same front; turned like invalides85's copy, the old
    pixel check scored the two turned photos 0.91 (>= its 0.898 threshold) and grouped them."""
    _, store = edited
    for g in find_duplicates(store)["near"]:
        names = _names(g)
        assert not ({"invalides85.jpg", "invalides85-turned.jpg"} & names
                    and {"invalides86.jpg", "invalides86-turned.jpg"} & names), names


def test_pixel_check_is_symmetric_whatever_the_indexing_order(edited, embedder,
                                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    """An original and its crop indexed in both orders (so their ids swap) score the same."""
    from imagefinder import build_index
    from imagefinder.duplicates import PixelCheck
    from imagefinder.index import Store

    folder, _ = edited
    parts = {}
    for name in ("louvre.jpg", "louvre-crop.jpg"):
        parts[name] = tmp_path_factory.mktemp("part")
        shutil.copyfile(folder / name, parts[name] / name)
    scores, orders = [], []
    for names in (["louvre.jpg", "louvre-crop.jpg"], ["louvre-crop.jpg", "louvre.jpg"]):
        out = tmp_path_factory.mktemp("ordered") / "index"
        store = Store(build_index([str(parts[n]) for n in names], out, embedder=embedder, workers=1).path)
        try:
            ids = _ids(store)
            orders.append(ids["louvre.jpg"] < ids["louvre-crop.jpg"])
            scores.append(PixelCheck(store)(ids["louvre.jpg"], ids["louvre-crop.jpg"]))
        finally:
            store.close()
    assert orders == [True, False], "the two indexes should number the pair in opposite orders"
    assert scores[0] == pytest.approx(scores[1], abs=1e-6), scores
    assert scores[0] > 0.9


def test_anchored_links_do_not_chain_through_a_lookalike() -> None:
    """Copy C matches original O; lookalike L matches C but not O: L stays out of O's group."""
    from imagefinder.duplicates import Clusters

    scores = {(1, 2): 0.99, (2, 3): 0.95, (1, 3): 0.5}
    pair = lambda x, y: scores[(min(x, y), max(x, y))]
    size = {1: 4_000_000, 2: 1_000_000, 3: 2_000_000}.__getitem__
    clusters = Clusters({})
    for x, y in sorted(scores, key=lambda p: -scores[p]):
        clusters.link_anchored(x, y, 0.9, pair, size)
    assert clusters.groups() == [[1, 2]]


def test_tiny_images_do_not_break_the_pixel_check(embedder, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Thumbnails of a few pixels have no ORB points (its pyramid cannot shrink them: cv2.error
    before, a 500 from GET /duplicates in the API fuzzer); their exact copies are still exact."""
    folder = tmp_path_factory.mktemp("tiny")
    for size in (1, 3, 20):
        Image.new("RGB", (size, size), (30 * size % 255, 90, 160)).save(folder / f"px{size}.png")
        shutil.copyfile(folder / f"px{size}.png", folder / f"px{size}-copy.png")
    store = _index(folder, embedder, tmp_path_factory)
    try:
        exact = find_duplicates(store)["exact"]
        assert sorted(sorted(_names(g)) for g in exact) == [[f"px{s}-copy.png", f"px{s}.png"] for s in (1, 20, 3)]
    finally:
        store.close()
