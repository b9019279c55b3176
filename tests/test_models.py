"""Backbone registry, ONNX export cache, ensembles: on the weights that ship in packages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imagefinder.embed import Embedder
from imagefinder.ingest.decode import open_image
from imagefinder.models import BACKBONES, ModelUnavailable, OnnxModel, get_backbone, parse_model_spec, registry

SHIPPED = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "dinov2-s", "resnet50-thin"]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ukbench1000" / "images"


def _batch(name: str, n: int = 2) -> np.ndarray:
    p = get_backbone(name).preprocess
    shape = (n, 3, p.size, p.size) if p.layout == "NCHW" else (n, p.size, p.size, 3)
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_backbones_give_vectors_of_their_dimension(name: str) -> None:
    model = OnnxModel(get_backbone(name), threads=2)
    out = model(_batch(name, 3))
    assert out.shape == (3, get_backbone(name).dim)
    assert np.isfinite(out).all()
    assert not np.allclose(out[0], out[1]), "different inputs must give different features"


def test_export_is_cached_by_weights_hash() -> None:
    backbone = get_backbone("efficientnet-lite0")
    path, digest = registry.onnx_path(backbone)
    mtime = path.stat().st_mtime_ns
    again, digest2 = registry.onnx_path(backbone)
    assert again == path and digest2 == digest and again.stat().st_mtime_ns == mtime
    assert digest[:16] in path.name


def test_unknown_model_and_empty_spec_are_refused() -> None:
    with pytest.raises(ModelUnavailable, match="unknown model 'nope'.*efficientnet-lite0"):
        parse_model_spec("efficientnet-lite0+nope")
    with pytest.raises(ModelUnavailable):
        parse_model_spec(" + ")
    assert parse_model_spec("efficientnet-lite0+dinov2-s") == ["efficientnet-lite0", "dinov2-s"]


def test_torchvision_weights_missing_says_where_to_put_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("IMAGEFINDER_WEIGHTS_RESNET50", raising=False)
    with pytest.raises(ModelUnavailable) as err:
        get_backbone("resnet50").locate_weights()
    assert "resnet50-11ad3fa6.pth" in str(err.value) and "IMAGEFINDER_WEIGHTS_RESNET50" in str(err.value)


def test_torchvision_weights_found_in_hub_cache_or_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "vgg16-397923af.pth").write_bytes(b"x")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert get_backbone("vgg16").locate_weights() == hub / "vgg16-397923af.pth"
    own = tmp_path / "mine.pth"
    own.write_bytes(b"y")
    monkeypatch.setenv("IMAGEFINDER_WEIGHTS_INCEPTION_V3", str(own))
    assert get_backbone("inception-v3").locate_weights() == own


def test_every_registered_backbone_has_a_preprocessing_record() -> None:
    for name in BACKBONES:
        spec = get_backbone(name).preprocess.to_dict()
        assert spec["size"] >= 224 and spec["layout"] in ("NCHW", "NHWC")


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/ukbench1000")
def test_ensemble_members_are_normalised_and_concatenated() -> None:
    images = [open_image(DATA / f"ukbench0000{i}.jpg").image for i in range(2)]
    single = Embedder("efficientnet-lite0").embed_images(images)
    pair = Embedder("efficientnet-lite0+resnet50-thin")
    both = pair.embed_images(images)
    assert both.shape == (2, 1280 + 1024)
    assert pair.member_slices == [(0, 1280), (1280, 2304)]
    for start, stop in pair.member_slices:
        assert np.allclose(np.linalg.norm(both[:, start:stop], axis=1), 1.0, atol=1e-4)
    # the first member is the single model's features, normalised
    expected = single / np.linalg.norm(single, axis=1, keepdims=True)
    assert np.allclose(both[:, :1280], expected, atol=1e-4)


def test_the_optimised_graph_is_cached_and_a_damaged_copy_is_replaced() -> None:
    backbone = get_backbone("efficientnet-lite0")
    x = _batch("efficientnet-lite0")
    first = OnnxModel(backbone, threads=2, precision="fp32")(x)
    path, _ = registry.onnx_path(backbone)
    [optimised] = path.parent.glob(f"{path.stem}.opt-ort*.onnx")
    np.testing.assert_allclose(OnnxModel(backbone, threads=2, precision="fp32")(x), first, rtol=1e-5, atol=1e-5)
    optimised.write_bytes(b"not a graph")  # damaged (or from elsewhere): never stops a query
    np.testing.assert_allclose(OnnxModel(backbone, threads=2, precision="fp32")(x), first, rtol=1e-5, atol=1e-5)
    assert optimised.stat().st_size > 1_000_000, "re-optimised and saved again"


def test_weights_hash_is_memoised_on_disk_by_path_size_and_mtime(tmp_path: Path) -> None:
    import hashlib
    import os

    weights = tmp_path / "w.bin"
    weights.write_bytes(b"abc" * 1000)
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert registry.file_sha256(weights, {}) == expected
    assert expected in {p.read_text() for p in (registry.cache_dir() / "hashes").glob("*")}
    assert registry.file_sha256(weights, {}) == expected, "a new process (empty in-memory memo) reads it back"
    weights.write_bytes(b"abd" * 1000)  # same size, new content and mtime
    os.utime(weights, ns=(1, 2))
    assert registry.file_sha256(weights, {}) == hashlib.sha256(weights.read_bytes()).hexdigest()
