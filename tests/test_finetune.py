"""Fine-tuning (imagefinder.train, `imagefinder train`): tiny runs on 16 UKBench images.

Training runs at 96 px to be quick (the export is always at the model's 224); runs are shared
through module fixtures so the whole file takes well under two minutes on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from imagefinder import ImageFinder, build_index
from imagefinder import train as ft
from imagefinder.index import IndexConfig
from imagefinder.ingest.decode import Preprocess
from imagefinder.models import ModelUnavailable, OnnxModel, get_backbone, parse_model_spec
from imagefinder.models.registry import model_provenance, read_model_json
from imagefinder.pooling import Pooling
from imagefinder.train.augment import PLAIN, Augment, views
from imagefinder.train.data import cache_size
from imagefinder.train.loop import FineTuner, seed_everything
from imagefinder.train.modules import build_modules, trained_pooling

# end-to-end: `make test-fast` leaves these out, `make test` (CI) runs them
pytestmark = pytest.mark.slow

N_IMAGES = 16
TINY = ft.TrainConfig(epochs=2, batch_size=8, image_size=96, lr=1e-4, val_split=0.125, seed=3, device="cpu")


@pytest.fixture(scope="module")
def images(ukbench_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ft-images")
    for n in range(N_IMAGES):
        shutil.copyfile(ukbench_dir / "images" / f"ukbench{n:05d}.jpg", folder / f"ukbench{n:05d}.jpg")
    return folder


@pytest.fixture(scope="module")
def runs(images: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One 2-epoch run per method; the contrastive one through `fine_tune`, which also indexes."""
    root = tmp_path_factory.mktemp("ft-runs")
    out = {"autoencoder": ft.train([str(images)], root / "autoencoder", replace(TINY, method="autoencoder"))}
    out["contrastive"] = ft.fine_tune([str(images)], root / "contrastive", replace(TINY, method="contrastive")).train
    return out


@pytest.mark.parametrize("method", ft.METHODS)
def test_each_method_trains_two_epochs_with_finite_losses(runs: dict, method: str) -> None:
    r = runs[method]
    assert [h["epoch"] for h in r.history] == [1, 2] and r.epochs_run == 2
    for h in r.history:
        assert math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"])
        assert len(h["step_losses"]) == 2 and all(math.isfinite(x) for x in h["step_losses"])
    assert (r.out / "checkpoints" / "epoch-1.pt").is_file() and (r.out / "checkpoints" / "epoch-2.pt").is_file()
    assert r.loss_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((r.out / "history.json").read_text())[1]["epoch"] == 2


@pytest.mark.parametrize("method", ft.METHODS)
def test_loss_decreases_on_the_train_set_over_a_few_steps(images: Path, method: str) -> None:
    config = ft.resolve(replace(TINY, method=method, lr=1e-3))
    seed_everything(0)
    tuner = FineTuner(config, "cpu")
    data = ft.load_images([str(images)], cache_size(config.image_size))
    batch = torch.from_numpy(data.pixels[:8])
    losses = [tuner.train_step(batch, torch.Generator().manual_seed(1)) for _ in range(6)]  # same views each step
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.9 * losses[0], losses


def test_model_json_records_base_method_data_and_hyperparameters(runs: dict, images: Path) -> None:
    r = runs["contrastive"]
    meta = read_model_json(r.model_dir)
    digests = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(images.iterdir()))
    assert meta["base_model"] == "efficientnet-lite0" and meta["method"] == "contrastive"
    assert meta["data"]["sha256"] == hashlib.sha256("\n".join(digests).encode()).hexdigest() == r.data_hash
    assert meta["data"]["images"] == N_IMAGES and meta["data"]["train"] + meta["data"]["val"] == N_IMAGES
    hp = meta["hyperparameters"]
    assert (hp["epochs"], hp["batch_size"], hp["lr"], hp["image_size"], hp["seed"]) == (2, 8, 1e-4, 96, 3)
    assert hp["freeze_until"] == 11 and hp["head_lr"] == pytest.approx(1e-3) and hp["device"] == "cpu"
    assert meta["dim"] == 1280 and Preprocess.from_dict(meta["preprocess"]) == Preprocess(size=224)
    assert meta["output"] == "map" and meta["default_pooling"] == trained_pooling("efficientnet-lite0")
    assert meta["epochs_run"] == 2 and meta["best_epoch"] in (1, 2) and math.isfinite(meta["best_val_loss"])
    assert meta["onnx_sha256"] == hashlib.sha256((r.model_dir / "model.onnx").read_bytes()).hexdigest()


def test_exported_onnx_matches_the_trained_torch_encoder(runs: dict) -> None:
    r = runs["autoencoder"]
    encoder, _ = build_modules(r.config)
    best = torch.load(r.out / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == r.best_epoch
    encoder.net.load_state_dict(best["encoder"])
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = encoder.eval()(x).numpy()
    tuned = get_backbone(str(r.model_dir))
    assert tuned.output == "map" and tuned.default_pooling == Pooling.from_dict(trained_pooling("efficientnet-lite0"))
    got = OnnxModel(tuned, threads=2)(x.numpy(), tuned.default_pooling)  # pooled as at search time
    assert got.shape == (3, 1280)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
    base = get_backbone("efficientnet-lite0")
    untrained = OnnxModel(base, threads=2)(x.numpy(), tuned.default_pooling)
    assert not np.allclose(got, untrained, atol=1e-3), "training changed nothing"


def test_seeded_resumed_run_repeats_an_uninterrupted_one(runs: dict, images: Path, tmp_path: Path) -> None:
    """Run 1 epoch, then --resume to 2: epoch 1 is not redone and every loss equals the 2-epoch run's."""
    a = runs["contrastive"]
    config = replace(TINY, method="contrastive", epochs=1)
    first = ft.train([str(images)], tmp_path, config)
    assert first.history[0]["step_losses"] == a.history[0]["step_losses"]  # same seed, same losses
    second = ft.train([str(images)], tmp_path, replace(config, epochs=2), resume=True)
    assert second.history[0] == first.history[0]  # loaded from the checkpoint, timings included: not rerun
    assert [h["step_losses"] for h in second.history] == [h["step_losses"] for h in a.history]
    assert [h["val_loss"] for h in second.history] == [h["val_loss"] for h in a.history]


def test_other_seed_gives_other_losses(runs: dict, images: Path, tmp_path: Path) -> None:
    other = ft.train([str(images)], tmp_path, replace(TINY, method="autoencoder", epochs=1, seed=4))
    assert other.history[0]["step_losses"] != runs["autoencoder"].history[0]["step_losses"]


def test_resume_refuses_a_checkpoint_of_other_settings(runs: dict, images: Path, tmp_path: Path) -> None:
    shutil.copytree(runs["autoencoder"].out / "checkpoints", tmp_path / "checkpoints")
    with pytest.raises(ft.TrainError, match="freeze_until: checkpoint 11, now 12"):
        ft.train([str(images)], tmp_path, replace(TINY, method="autoencoder", freeze_until=12), resume=True)


def test_early_stopping_exports_the_best_epoch(images: Path, tmp_path: Path) -> None:
    # An impossible min_delta: no epoch after the first counts as better.
    r = ft.train([str(images)], tmp_path, replace(TINY, method="autoencoder", epochs=5, patience=1, min_delta=10.0))
    assert r.epochs_run == 2 and r.stopped_early and r.best_epoch == 1
    assert read_model_json(r.model_dir)["stopped_early"] is True
    resumed = ft.train([str(images)], tmp_path, replace(TINY, method="autoencoder", epochs=5, patience=1,
                                                         min_delta=10.0), resume=True)
    assert resumed.epochs_run == 2, "a stopped run stays stopped on resume"


def test_tuned_model_directory_works_as_a_model_name(runs: dict, images: Path, tmp_path: Path) -> None:
    model_dir = runs["contrastive"].model_dir
    backbone = get_backbone(str(model_dir))
    assert backbone.dim == 1280 and backbone.name == "tuned-efficientnet-lite0-contrastive"
    assert parse_model_spec(f"efficientnet-lite0+{model_dir}") == ["efficientnet-lite0", str(model_dir)]
    # fine_tune rebuilt the index of the training images with the tuned model
    finder = ImageFinder(runs["contrastive"].out / "index")
    try:
        assert finder.manifest.model == str(model_dir.resolve())
        assert finder.manifest.members[0]["name"] == "tuned-efficientnet-lite0-contrastive"
        query = str((images / "ukbench00005.jpg").resolve())
        assert finder.search(query, k=3)[0].source == query
    finally:
        finder.close()
    report = build_index([str(images)], tmp_path / "index", IndexConfig(model=str(model_dir)))
    assert report.indexed == N_IMAGES


def test_model_provenance_is_ready_for_the_manifest(runs: dict) -> None:
    model_dir = str(runs["autoencoder"].model_dir)
    info = model_provenance(f"efficientnet-lite0+{model_dir}")
    assert list(info) == [model_dir] and info[model_dir]["method"] == "autoencoder"
    assert "history" not in info[model_dir] and info[model_dir]["data"]["images"] == N_IMAGES
    assert model_provenance("efficientnet-lite0") == {}


def test_missing_or_broken_model_directory_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="no model.json.*imagefinder train"):
        get_backbone(str(tmp_path))
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelUnavailable, match="unreadable"):
        get_backbone(str(tmp_path))
    with pytest.raises(ModelUnavailable, match="unknown model 'nope'"):
        get_backbone("nope")


def test_views_are_deterministic_and_normalised(images: Path) -> None:
    data = ft.load_images([str(images)], 110)
    batch = torch.from_numpy(data.pixels[:4])
    spec = Preprocess(size=224)
    aug = Augment(size=96, crop=True)
    a = views(batch, aug, spec, torch.Generator().manual_seed(5))
    b = views(batch, aug, spec, torch.Generator().manual_seed(5))
    c = views(batch, aug, spec, torch.Generator().manual_seed(6))
    assert a.shape == (4, 3, 96, 96) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -127 / 128 - 1e-6 and a.max() <= 128 / 128 + 1e-6
    plain = views(batch, replace(PLAIN, size=110), spec, torch.Generator())
    assert torch.allclose(plain, (batch.float() - 127) / 128)


def test_cli_trains_exports_and_reports(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from imagefinder.cli import main

    rc = main(["train", str(images), "--out", str(tmp_path), "--epochs", "1", "--batch-size", "8",
                         "--image-size", "96", "--method", "autoencoder", "--no-index", "--json", "-q"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs_run"] == 1 and summary["method"] == "autoencoder" and summary["index"] is None
    assert (tmp_path / "model" / "model.onnx").is_file() and Path(summary["loss_png"]).is_file()
    rc = main(["train", str(images), "--out", str(tmp_path / "x"), "--freeze-until", "99", "-q"])
    assert rc == 2
    assert "--freeze-until must be between 0" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is missing")
def test_cuda_requested_without_cuda_is_refused() -> None:
    with pytest.raises(ft.TrainError, match="no CUDA device"):
        ft.resolve(ft.TrainConfig(device="cuda"))
