"""int8 backbones: calibrated static quantisation, its cache, and the manifest's `precision` at query time."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ukbench_image
from PIL import Image

from imagefinder import ImageFinder
from imagefinder.embed import Embedder
from imagefinder.index import IndexError_, Manifest
from imagefinder.models import ModelUnavailable, get_backbone, registry
from imagefinder.models.quantize import RECIPE, calibration_key
from imagefinder.pipeline import add_to_index

L0 = "efficientnet-lite0"


@pytest.fixture(scope="module")
def embedders(imagefinder_cache: Path) -> dict[str, Embedder]:
    return {p: Embedder(L0, threads=2, precision=p) for p in ("fp32", "int8")}


@pytest.fixture(scope="module")
def images(ukbench_dir: Path) -> list[Image.Image]:
    return [Image.open(ukbench_image(ukbench_dir, n)).convert("RGB") for n in range(0, 48, 3)]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))


def test_int8_features_are_close_to_fp32_but_come_from_a_quantised_graph(embedders, images) -> None:
    fp32, int8 = (embedders[p].embed_images(images) for p in ("fp32", "int8"))
    cos = _cosines(fp32, int8)
    assert np.median(cos) > 0.98 and cos.min() > 0.95, f"int8 drifted from fp32: {np.sort(cos)[:4]}"
    assert not np.allclose(fp32, int8, atol=1e-4), "int8 must not be the fp32 graph under another name"
    path, _ = registry.int8_path(get_backbone(L0))
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert embedders["int8"].precision == "int8" and embedders["fp32"].precision == "fp32"
    # calibrated at the backbone's input size, the graph keeps dynamic H/W: other shapes run too
    x = (np.asarray(images[0].resize((288, 224)), np.float32) - 127) / 128
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
    a, b = (embedders[p].members[0](x) for p in ("fp32", "int8"))
    assert embedders["int8"].members[0].raw(x).shape[2:] == (7, 9) and _cosines(a, b)[0] > 0.95


def test_int8_graph_is_cached_by_weights_recipe_and_calibration(embedders) -> None:
    backbone = get_backbone(L0)
    path, digest = registry.int8_path(backbone)
    mtime = path.stat().st_mtime_ns
    assert registry.int8_path(backbone) == (path, digest) and path.stat().st_mtime_ns == mtime, "built once"
    key = calibration_key(backbone.preprocess)
    assert digest[:16] in path.name and RECIPE in path.name and key[:12] in path.name
    # another input size (or any other preprocessing) is another calibration set, so another file
    assert calibration_key(replace(backbone.preprocess, size=320)) != key


def test_an_int8_index_is_queried_with_int8(ukbench_dir: Path, embedders, tmp_path: Path, cli) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for n in range(8):
        shutil.copyfile(ukbench_image(ukbench_dir, n), images / f"u{n}.jpg")
    index = tmp_path / "index"
    done = cli("index", images, "--out", index, "--model", L0, "--precision", "int8", "-q", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads((index / "manifest.json").read_text())["precision"] == "int8"

    finder = ImageFinder(index)
    query = images / "u3.jpg"
    vector = finder.embed(query)
    assert finder.embedder.precision == "int8"
    with Image.open(query) as img:
        image = img.convert("RGB")
    np.testing.assert_allclose(vector, embedders["int8"].embed_images([image])[0], rtol=1e-5, atol=1e-5)
    # An image queries its own stored (float16) vector: cosine 1 when embedded with the index's
    # graph; a query through the fp32 graph would score ~0.99 against int8 rows.
    top = finder.search(query, k=1)[0]
    assert top.source.endswith("u3.jpg") and top.score > 0.9999, top
    fp32_query = embedders["fp32"].embed_images([image])
    assert finder.search_vectors(fp32_query, k=1)[0][0].score < 0.9999, "the test must tell the graphs apart"

    shown = cli("info", index, "--json")
    assert json.loads(shown.stdout)["precision"] == "int8"
    with pytest.raises(IndexError_, match=r"\(int8\), not efficientnet-lite0 \(fp32\)"):
        add_to_index(index, [str(ukbench_image(ukbench_dir, 9))], embedder=embedders["fp32"])
    finder.close()


def test_old_manifests_are_fp32_whatever_the_default_is(small_index) -> None:
    data = json.loads((small_index.path / "manifest.json").read_text())
    data["format_version"] = 2  # before precision was recorded
    data.pop("precision")
    manifest = Manifest.from_dict(data)
    assert manifest.precision == "fp32" and manifest.format_version == 3
    assert Embedder.for_manifest(manifest).precision == "fp32"


def test_unknown_precisions_are_refused() -> None:
    with pytest.raises(ModelUnavailable, match="unknown precision 'int4'.*fp32, int8"):
        Embedder(L0, precision="int4")
    with pytest.raises(ModelUnavailable, match="names 2 members"):
        Embedder(L0, precision="int8+fp32")


def test_int8_is_the_default_only_where_it_was_measured_harmless(small_index) -> None:
    """README "Measured": int8 within 0.002 (UKBench) / 0.005 (paris266) mAP of fp32 except for resnet50-thin."""
    assert {name: get_backbone(name).default_precision for name in
            ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "resnet50-thin", "dinov2-s")} == {
        "efficientnet-lite0": "int8", "efficientnet-lite1": "int8", "efficientnet-lite2": "int8",
        "resnet50-thin": "fp32", "dinov2-s": "int8"}
    assert json.loads((small_index.path / "manifest.json").read_text())["precision"] == "int8", "built by default"
    assert Embedder("efficientnet-lite0+resnet50-thin").precision == "int8+fp32", "an ensemble records each member's"
