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
