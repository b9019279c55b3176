"""Fine-tune a pretrained backbone on the user's own images, then export it like any backbone.

Two self-supervised objectives on the encoder = EfficientNet-Lite up to its last conv map +
global pooling (the 1280-d vector `efficientnet-lite*` indexes with):

The pooling is the base model's default (efficientnet-lite0: GeM p=2), the one it is searched with.

- ``autoencoder``: the original design. A small decoder rebuilds the normalised input image from
  the pooled vector; MSE loss; random flip, brightness and contrast. Reconstruction rewards
  features that keep colour and layout, not identity, so it can make retrieval *worse*: it is
  never on by default (see benchmarks/finetune.py for the measured effect).
- ``contrastive``: SimCLR / NT-Xent. Two augmented views of each image (random resized crop +
  the same flip/brightness/contrast) are positives, the other images of the batch negatives; a
  projection head is trained with it and dropped afterwards (retrieval uses the pooled vector).

The early blocks are frozen (run without autograd) so that a CPU can train the rest in minutes;
BatchNorm keeps its pretrained statistics, so training sees what the exported model computes. Every epoch writes ``DIR/checkpoints/epoch-N.pt`` (model, optimiser,
RNG states, history), so ``resume=True`` continues where a run stopped and ends with exactly
the weights an uninterrupted run would have. The best epoch (lowest validation loss) is exported
to ``DIR/model/`` (``model.onnx`` + ``model.json``), which `get_backbone` accepts as a model name.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import itertools
import json
import logging
import math
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..ingest.decode import ImageError, open_image
from ..ingest.sources import SourceError, expand_sources
from . import export, registry

log = logging.getLogger(__name__)

METHODS = ("autoencoder", "contrastive")
BASES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
DEVICES = ("auto", "cpu", "cuda")
CHECKPOINTS, MODEL_DIR, LOSS_PNG, HISTORY = "checkpoints", "model", "loss.png", "history.json"
CHECKPOINT_FORMAT = 1
# Settings a checkpoint must share with the run that resumes it (epochs and patience may grow).
RESUME_KEYS = ("method", "base", "freeze_until", "image_size", "val_split", "seed", "batch_size", "temperature")


class TrainError(ValueError):
    """Fine-tuning cannot run with these settings or files; the message says what to change."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run; recorded in model.json and checked on resume."""

    method: str = "contrastive"
    base: str = "efficientnet-lite0"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4  # the backbone's; the new head (decoder / projection) learns at head_lr
    head_lr: float | None = None  # default 10 x lr
    weight_decay: float = 1e-4
    freeze_until: int | None = None  # stem + blocks < this are frozen; default: all but the last two stages
    val_split: float = 0.1
    patience: int = 3  # epochs without a better validation loss before stopping
    min_delta: float = 1e-4  # relative improvement that counts as better
    seed: int = 0
    image_size: int | None = None  # training resolution; default the base model's (export is always at it)
    temperature: float = 0.1  # NT-Xent
    device: str = "auto"
    keep_checkpoints: int = 2  # epoch-N.pt files kept (the newest); best.pt is always kept

    def validate(self) -> None:
        if self.method not in METHODS:
            raise TrainError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.base not in BASES:
            raise TrainError(f"fine-tuning supports {', '.join(BASES)}, not {self.base!r}")
        if self.device not in DEVICES:
            raise TrainError(f"unknown device {self.device!r}; choose from {', '.join(DEVICES)}")
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 2, f"batch size must be at least 2, got {self.batch_size}"),
            (self.lr > 0 and (self.head_lr is None or self.head_lr > 0), "learning rates must be positive"),
            (0 <= self.val_split < 0.9, f"val split must be in [0, 0.9), got {self.val_split}"),
            (self.patience >= 1, f"patience must be at least 1, got {self.patience}"),
            (self.image_size is None or self.image_size >= 32, f"image size must be at least 32, got {self.image_size}"),
            (self.temperature > 0, f"temperature must be positive, got {self.temperature}"),
            (self.keep_checkpoints >= 1, "keep at least one checkpoint"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainError(message)


@dataclass
class ImageSet:
    """Decoded training images, squashed to S x S uint8 once (decoding is the slow part)."""

    pixels: np.ndarray  # (N, 3, S, S) uint8
    sources: list[str]
    sha256: list[str]
    failed: dict[str, str] = field(default_factory=dict)  # source -> reason

    @property
    def data_hash(self) -> str:
        """sha256 of the sorted image sha256s: the same images give the same hash in any order."""
        return hashlib.sha256("\n".join(sorted(self.sha256)).encode()).hexdigest()

    def subset(self, indices: Sequence[int]) -> ImageSet:
        idx = list(indices)
        return ImageSet(self.pixels[idx], [self.sources[i] for i in idx], [self.sha256[i] for i in idx])


@dataclass
class TrainResult:
    out: Path
    model_dir: Path
    config: TrainConfig  # resolved: freeze_until, image_size, head_lr, device filled in
    history: list[dict]
    best_epoch: int
    best_loss: float
    epochs_run: int
    stopped_early: bool
    images: int
    data_hash: str
    seconds_per_epoch: float  # mean training time of the epochs run in this call (excl. validation)

    @property
    def loss_png(self) -> Path:
        return self.out / LOSS_PNG


@dataclass
class FineTuneReport:
    train: TrainResult
    index: object | None = None  # pipeline.BuildReport when the index was rebuilt


# --- data ------------------------------------------------------------------------------------


def cache_size(image_size: int) -> int:
    """Cached side: the usual 256/224 margin, so crops and resizes start from more pixels."""
    return round(image_size * 256 / 224)


def load_images(sources: Sequence[str], size: int, *, workers: int | None = None, progress: bool = False) -> ImageSet:
    """All images of `sources` (folders, CSVs, lists, URLs) decoded once to (N, 3, size, size) uint8.

    Uses the pipeline's own source expansion, downloader and decoder; unreadable images are
    skipped and reported, as `build_index` records them.
    """
    items = expand_sources(sources)
    if not items:
        raise SourceError(f"no images found in {', '.join(map(str, sources))}")
    downloader = None
    if any(item.is_url for item in items):
        from ..ingest.download import Downloader
        from ..pipeline import default_download_config

        downloader = Downloader(default_download_config())

    def load(item) -> tuple[np.ndarray, str] | str:
        try:
            path: Path | str = item.source
            if item.is_url:
                result = downloader.fetch(item.source)
                if not result.ok:
                    return result.error or "download failed"
                path = result.path
            decoded = open_image(Path(path), draft_size=size)
            img = decoded.image.resize((size, size), Image.BILINEAR, reducing_gap=2.0)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1), decoded.sha256
        except ImageError as exc:
            return str(exc)

    pixels, kept, hashes, failed = [], [], [], {}
    try:
        with ThreadPoolExecutor(max_workers=workers or max(4, 2 * (os.cpu_count() or 2))) as pool:
            for item, out in tqdm(zip(items, pool.map(load, items)), total=len(items), unit="img",
                                  desc="decoding", disable=not progress):
                if isinstance(out, str):
                    failed[item.source] = out
                else:
                    pixels.append(out[0])
                    hashes.append(out[1])
                    kept.append(item.source)
    finally:
        if downloader is not None:
            downloader.close()
    if failed:
        log.warning("%d of %d images could not be read and are left out of training (first: %s: %s)",
                    len(failed), len(items), *next(iter(failed.items())))
    if not pixels:
        raise SourceError(f"none of the {len(items)} images of {', '.join(map(str, sources))} could be read")
    return ImageSet(np.stack(pixels), kept, hashes, failed)


def split(n: int, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split of range(n); validation gets round(n * val_split), at least 1."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = 0 if val_split <= 0 else max(1, round(n * val_split))
    if n - n_val < 2:
        raise TrainError(f"{n} images leave fewer than 2 to train on with val split {val_split}: add images")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


# --- model -------------------------------------------------------------------------------------


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        raise TrainError("fine-tuning needs torch: pip install torch") from exc
    return torch


def trained_pooling(base: str) -> dict:
    """The pooling the encoder trains with: the base backbone's default (efficientnet-lite0: GeM p=2),
    so the tuned model is pooled at search time exactly as it was during training."""
    default = getattr(registry.get_backbone(base), "default_pooling", None)
    if default is None or default.method not in ("avg", "max", "gem"):
        return {"method": "avg", "p": None, "scales": [1.0], "power": None}
    return {**default.to_dict(), "scales": [1.0]}  # one scale: training sees one input size


def pool_torch(fmap, pooling: dict):
    """(N,C,h,w) -> (N,C): avg / max / GeM as `pooling.pool_map` computes them in numpy."""
    if pooling["method"] == "max":
        return fmap.amax(dim=(2, 3))
    if pooling["method"] == "gem":
        p = float(pooling["p"])
        return fmap.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
    return fmap.mean(dim=(2, 3))


def stage_starts(net) -> list[int]:
    """Index of the first block of each EfficientNet stage (where the channel count changes)."""
    return [i for i, b in enumerate(net._blocks) if b._block_args.input_filters != b._block_args.output_filters]


def default_freeze_until(net) -> int:
    """Train the last two stages + head conv (lite0: blocks 11-15): ~5x cheaper than the whole net."""
    return stage_starts(net)[-2]


def build_modules(config: TrainConfig):
    """(encoder, objective) for a resolved config, with the base model's pretrained weights."""
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional
    from .augment import PLAIN, Augment, views

    backbone = registry.get_backbone(config.base)
    spec = backbone.preprocess
    pooling = trained_pooling(config.base)
    net = export.efficientnet_lite(config.base, backbone.locate_weights()).net

    class Encoder(nn.Module):
        """Image -> pooled feature vector. The frozen prefix runs without autograd, in eval mode."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.freeze_until = int(config.freeze_until)
            self.frozen = ([net._conv_stem, net._bn0, *net._blocks[: self.freeze_until]]
                           if self.freeze_until > 0 else [])
            for module in self.frozen:
                module.requires_grad_(False)
            net._fc.requires_grad_(False)  # the classifier is not part of the encoder

        def train(self, mode: bool = True):
            # BatchNorm keeps its pretrained running statistics throughout (its scale and shift
            # still learn where unfrozen): with batches of 32 on a few hundred images, batch
            # statistics would differ from what the exported model computes at inference, and
            # the EfficientNet BN momentum of 0.01 would leave the running ones stale anyway.
            super().train(mode)
            for module in self.frozen:
                module.eval()
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
            return self

        def feature_map(self, x):
            grad = torch.is_grad_enabled()
            blocks = net._blocks
            rate = net._global_params.drop_connect_rate
            with torch.set_grad_enabled(grad and self.freeze_until == 0):
                x = net._swish(net._bn0(net._conv_stem(x)))
            for idx, block in enumerate(blocks):
                with torch.set_grad_enabled(grad and idx >= self.freeze_until):
                    x = block(x, drop_connect_rate=rate * idx / len(blocks) if rate else None)
            return net._swish(net._bn1(net._conv_head(x)))

        def forward(self, x):
            return pool_torch(self.feature_map(x), pooling)

    class Decoder(nn.Module):
        """Pooled vector -> image: linear to 128x7x7, five x2 transposed-conv stages to 224."""

        def __init__(self, dim: int, channels: tuple[int, ...] = (128, 128, 64, 32, 16, 16)) -> None:
            super().__init__()
            self.c0 = channels[0]
            self.fc = nn.Linear(dim, self.c0 * 7 * 7)
            layers: list[nn.Module] = []
            for cin, cout in itertools.pairwise(channels):
                layers += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.BatchNorm2d(cout),
                           nn.ReLU(inplace=True)]
            layers.append(nn.Conv2d(channels[-1], 3, 3, padding=1))
            self.up = nn.Sequential(*layers)

        def forward(self, z):
            return self.up(F.relu(self.fc(z)).view(len(z), self.c0, 7, 7))

    class Autoencoder(nn.Module):
        """MSE between the normalised (augmented) input and its reconstruction."""

        def __init__(self) -> None:
            super().__init__()
            self.decoder = Decoder(backbone.dim)
            self.augment = Augment(size=config.image_size, crop=False)

        def loss(self, encoder, images, gen, device, augment: bool = True):
            x = views(images, self.augment if augment else replace(PLAIN, size=config.image_size), spec, gen)
            x = x.to(device)
            recon = self.decoder(encoder(x))
            if recon.shape[-2:] != x.shape[-2:]:
                recon = F.interpolate(recon, size=x.shape[-2:], mode="bilinear", align_corners=False)
            return F.mse_loss(recon, x)

    class Contrastive(nn.Module):
        """NT-Xent over two cropped + jittered views per image; the projection head is dropped later."""

        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Sequential(nn.Linear(backbone.dim, 512), nn.ReLU(inplace=True), nn.Linear(512, 128))
            self.augment = Augment(size=config.image_size, crop=True)

        def loss(self, encoder, images, gen, device, augment: bool = True):
            del augment  # both views are always augmented: the loss is defined by them
            n = len(images)
            x = torch.cat([views(images, self.augment, spec, gen), views(images, self.augment, spec, gen)])
            z = self.head(encoder(x.to(device)))
            return nt_xent(z[:n], z[n:], config.temperature)

    encoder = Encoder()
    objective = Autoencoder() if config.method == "autoencoder" else Contrastive()
    return encoder, objective


def nt_xent(z1, z2, temperature: float):
    """SimCLR's normalised-temperature cross entropy: view i's positive is view i of the other set."""
    torch = _torch()
    n = len(z1)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return torch.nn.functional.cross_entropy(sim, targets)


class FineTuner:
    """Encoder + objective + optimiser for one resolved config: steps, validation, state."""

    def __init__(self, config: TrainConfig, device: str) -> None:
        torch = _torch()
        self.config, self.device = config, device
        self.encoder, self.objective = build_modules(config)
        self.encoder.to(device)
        self.objective.to(device)
        backbone_params = [p for p in self.encoder.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            [{"params": backbone_params, "lr": config.lr},
             {"params": list(self.objective.parameters()), "lr": config.head_lr}],
            weight_decay=config.weight_decay,
        )

    def train_step(self, images, gen) -> float:
        """One optimiser step on a (B, 3, S, S) uint8 batch; returns its loss."""
        self.encoder.train()
        self.objective.train()
        loss = self.objective.loss(self.encoder, images, gen, self.device)
        if not math.isfinite(loss.item()):
            raise TrainError(f"the loss became {loss.item()}: lower --lr (now {self.config.lr})")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.item())

    def eval_loss(self, images, seed: int) -> float:
        """Mean loss over `images` in eval mode, with the same random views every epoch (comparable)."""
        torch = _torch()
        self.encoder.eval()
        self.objective.eval()
        gen = torch.Generator().manual_seed(seed)
        total, count = 0.0, 0
        with torch.no_grad():
            for chunk in torch.tensor_split(images, max(1, math.ceil(len(images) / self.config.batch_size))):
                if len(chunk) < 2 and count:  # a lone image has no negatives: leave it out
                    continue
                total += float(self.objective.loss(self.encoder, chunk, gen, self.device, augment=False)) * len(chunk)
                count += len(chunk)
        return total / max(count, 1)

    def state(self) -> dict:
        return {"encoder": self.encoder.net.state_dict(), "objective": self.objective.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: dict) -> None:
        self.encoder.net.load_state_dict(state["encoder"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])


# --- the run -----------------------------------------------------------------------------------


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill in the defaults that depend on the base model and the machine."""
    torch = _torch()
    config.validate()
    backbone = registry.get_backbone(config.base)
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: torch sees no CUDA device here (CPU build or no driver); use --device cpu")
    n_blocks, default_freeze = _block_layout(config.base)
    freeze = default_freeze if config.freeze_until is None else config.freeze_until
    if not 0 <= freeze <= n_blocks:
        raise TrainError(f"--freeze-until must be between 0 (train everything) and {n_blocks} (head only) "
                         f"for {config.base}, got {freeze}")
    return replace(config, device=device, freeze_until=freeze,
                   image_size=config.image_size or backbone.preprocess.size,
                   head_lr=config.head_lr or 10 * config.lr)


def _block_layout(base: str, _memo: dict = {}) -> tuple[int, int]:  # noqa: B006 - deliberate memo
    if base not in _memo:
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(base)
        _memo[base] = (len(net._blocks), default_freeze_until(net))
    return _memo[base]


def seed_everything(seed: int) -> None:
    torch = _torch()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Deterministic:
    """torch.use_deterministic_algorithms for the run only (it is process-wide state)."""

    def __enter__(self) -> None:
        torch = _torch()
        self.before = torch.are_deterministic_algorithms_enabled()
        self.bench = torch.backends.cudnn.benchmark
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by cuBLAS in deterministic mode
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False

    def __exit__(self, *exc: object) -> None:
        torch = _torch()
        torch.use_deterministic_algorithms(self.before)
        torch.backends.cudnn.benchmark = self.bench


def train(sources: Sequence[str] | ImageSet, out: Path | str, config: TrainConfig | None = None, *,
          resume: bool = False, progress: bool = False) -> TrainResult:
    """Fine-tune on the images of `sources`; write checkpoints, loss.png and DIR/model/ under `out`."""
    torch = _torch()
    out = Path(out)
    config = resolve(config or TrainConfig())
    data = sources if isinstance(sources, ImageSet) else load_images(
        sources, cache_size(config.image_size), progress=progress)
    train_idx, val_idx = split(len(data.sources), config.val_split, config.seed)
    ckpt_dir = out / CHECKPOINTS
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    signature = {**{k: getattr(config, k) for k in RESUME_KEYS}, "data_hash": data.data_hash,
                 "pooling": trained_pooling(config.base)}

    with _Deterministic():
        seed_everything(config.seed)
        tuner = FineTuner(config, config.device)
        history: list[dict] = []
        best = {"epoch": 0, "loss": math.inf}
        bad_epochs, stopped, start_epoch = 0, False, 1
        latest = latest_checkpoint(out) if resume else None
        if latest is not None:
            ckpt = torch.load(latest, map_location=config.device, weights_only=True)
            _check_signature(ckpt.get("signature", {}), signature, latest)
            tuner.load_state(ckpt["state"])
            _set_rng(ckpt["rng"])
            history, best, bad_epochs, stopped = ckpt["history"], ckpt["best"], ckpt["bad_epochs"], ckpt["stopped"]
            start_epoch = ckpt["epoch"] + 1
            log.info("resuming from %s (epoch %d done)", latest, ckpt["epoch"])
        else:
            if resume:
                log.warning("--resume: no checkpoint in %s; starting from epoch 1", ckpt_dir)
            for old in ckpt_dir.glob("*.pt"):  # a fresh run must not leave stale checkpoints to resume from
                old.unlink()

        pixels = torch.from_numpy(data.pixels)
        train_px, val_px = pixels[train_idx], pixels[val_idx]
        # Equal batches (450 images at 32 -> 15 x 30, not 14 x 32 + 2): a tiny last batch would
        # give NT-Xent almost no negatives and a noisy step.
        steps = math.ceil(len(train_idx) / config.batch_size)
        seconds: list[float] = []
        if stopped and start_epoch <= config.epochs:
            log.info("early stopping had already ended this run at epoch %d; exporting", start_epoch - 1)
        for epoch in range(start_epoch, config.epochs + 1):
            if stopped:
                break
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
            order = torch.randperm(len(train_idx), generator=gen)
            bar = tqdm(total=steps, desc=f"epoch {epoch}/{config.epochs}", unit="batch", disable=not progress)
            losses: list[float] = []
            t0, cpu0 = time.perf_counter(), time.process_time()
            for chunk in torch.tensor_split(order, steps):
                if len(chunk) < 2:  # one image has no negatives (only when batch size is 2 and n is odd)
                    continue
                losses.append(tuner.train_step(train_px[chunk], gen))
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses):.4f}", refresh=False)
            train_seconds = time.perf_counter() - t0
            train_cpu_seconds = time.process_time() - cpu0  # all threads: wall time x busy cores if unshared
            seconds.append(train_seconds)
            val_loss = tuner.eval_loss(val_px, config.seed + 7919) if len(val_idx) else None
            bar.set_postfix(loss=f"{np.mean(losses):.4f}", val=f"{val_loss:.4f}" if val_loss is not None else "-")
            bar.close()
            record = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
                      "step_losses": losses, "train_seconds": round(train_seconds, 3),
                      "train_cpu_seconds": round(train_cpu_seconds, 3),
                      "seconds": round(time.perf_counter() - t0, 3), "images": len(train_idx)}
            history.append(record)
            monitored = val_loss if val_loss is not None else record["train_loss"]
            if monitored < best["loss"] - config.min_delta * abs(best["loss"] if math.isfinite(best["loss"]) else 0):
                best, bad_epochs = {"epoch": epoch, "loss": monitored}, 0
                _atomic_save({"epoch": epoch, "encoder": tuner.encoder.net.state_dict()}, ckpt_dir / "best.pt")
            else:
                bad_epochs += 1
            stopped = bad_epochs >= config.patience and epoch < config.epochs
            log.info("epoch %d/%d: train loss %.4f, val loss %s, %.1f s%s", epoch, config.epochs,
                     record["train_loss"], "-" if val_loss is None else f"{val_loss:.4f}", train_seconds,
                     f"; no better val loss for {bad_epochs} epochs: stopping early" if stopped else "")
            _atomic_save({"format": CHECKPOINT_FORMAT, "epoch": epoch, "signature": signature,
                          "config": asdict(config), "state": tuner.state(), "rng": _get_rng(),
                          "history": history, "best": best, "bad_epochs": bad_epochs, "stopped": stopped},
                         ckpt_dir / f"epoch-{epoch}.pt")
            _prune(ckpt_dir, config.keep_checkpoints)
            plot_losses(history, out / LOSS_PNG, f"{config.method} fine-tuning of {config.base}")
            (out / HISTORY).write_text(json.dumps(history, indent=1))

        if not history:
            raise TrainError(f"no epoch was run: --epochs {config.epochs} is not beyond the checkpoint's epoch")
        best_file = ckpt_dir / "best.pt"
        if best_file.is_file():
            tuner.encoder.net.load_state_dict(torch.load(best_file, map_location=config.device,
                                                         weights_only=True)["encoder"])
    if not (out / LOSS_PNG).is_file():
        plot_losses(history, out / LOSS_PNG, f"{config.method} fine-tuning of {config.base}")
    result = TrainResult(
        out=out, model_dir=out / MODEL_DIR, config=config, history=history, best_epoch=int(best["epoch"]),
        best_loss=float(best["loss"]), epochs_run=int(history[-1]["epoch"]), stopped_early=bool(stopped),
        images=len(data.sources), data_hash=data.data_hash,
        seconds_per_epoch=float(np.mean(seconds)) if seconds else float(np.mean([h["train_seconds"] for h in history])),
    )
    export_model(tuner.encoder.net, result, n_train=len(train_idx), n_val=len(val_idx), failed=len(data.failed))
    return result


def fine_tune(sources: Sequence[str], out: Path | str, config: TrainConfig | None = None, *, resume: bool = False,
              index: bool = True, index_config=None, progress: bool = False) -> FineTuneReport:
    """Train, export DIR/model, then rebuild the index of `sources` with it into DIR/index."""
    from ..index import IndexConfig
    from ..pipeline import build_index

    result = train(sources, out, config, resume=resume, progress=progress)
    report = None
    if index:
        cfg = replace(index_config or IndexConfig(), model=str(result.model_dir.resolve()))
        report = build_index(list(sources), Path(out) / "index", cfg, progress=progress)
    return FineTuneReport(result, report)


# --- files ------------------------------------------------------------------------------------


def latest_checkpoint(out: Path | str) -> Path | None:
    found = []
    for path in (Path(out) / CHECKPOINTS).glob("epoch-*.pt"):
        match = re.fullmatch(r"epoch-(\d+)\.pt", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def _check_signature(saved: dict, now: dict, path: Path) -> None:
    diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
    if diff:
        details = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise TrainError(f"{path} was made by a different run ({details}): "
                         "use the same images and settings, or drop --resume to start over")


def _get_rng() -> dict:
    torch = _torch()
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict) -> None:
    torch = _torch()
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _atomic_save(obj: dict, path: Path) -> None:
    torch = _torch()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _prune(ckpt_dir: Path, keep: int) -> None:
    epochs = sorted((int(m.group(1)), p) for p in ckpt_dir.glob("epoch-*.pt")
                    if (m := re.fullmatch(r"epoch-(\d+)\.pt", p.name)))
    for _, path in epochs[:-keep]:
        path.unlink(missing_ok=True)


def plot_losses(history: list[dict], path: Path, title: str) -> None:
    """Train (per step and per epoch) and validation loss curves as a PNG (no pyplot state touched)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed: no %s (pip install matplotlib); %s has the numbers",
                    path, path.with_name(HISTORY))
        return

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    ax = fig.add_subplot()
    steps = [(h["epoch"] - 1 + (i + 1) / len(h["step_losses"]), loss)
             for h in history for i, loss in enumerate(h["step_losses"])]
    if steps:
        ax.plot(*zip(*steps), color="tab:blue", alpha=0.3, linewidth=0.8, label="train (per step)")
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", color="tab:blue", label="train (epoch mean)")
    val = [(h["epoch"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val), "s-", color="tab:orange", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


def export_model(net, result: TrainResult, *, n_train: int, n_val: int, failed: int) -> Path:
    """Write DIR/model/model.onnx (the last conv map, dynamic batch/height/width) + model.json."""
    torch = _torch()
    config = result.config
    backbone = registry.get_backbone(config.base)
    model_dir = result.model_dir
    tmp_dir = model_dir.with_name(f".{model_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)

    class ConvMap(torch.nn.Module):
        def __init__(self, body) -> None:
            super().__init__()
            self.body = body

        def forward(self, x):
            return self.body.extract_features(x)

    try:
        cpu_net = copy.deepcopy(net).cpu().eval()
        with warnings.catch_warnings():  # torch's exporter notes it cannot fold the same-padding slices
            warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
            export.export_torch_map(ConvMap(cpu_net).eval(), backbone.preprocess.size, tmp_dir / "model.onnx")
        meta = {
            "format": "imagefinder-tuned-model",
            "format_version": 1,
            "name": f"tuned-{config.base}-{config.method}",
            "base_model": config.base,
            "base_weights_sha256": registry.file_sha256(backbone.locate_weights()),
            "method": config.method,
            "onnx": "model.onnx",
            "onnx_sha256": registry.file_sha256(tmp_dir / "model.onnx"),
            "output": "map",  # the last conv map, pooled in numpy like the shipped backbones
            "map_layout": "NCHW",
            "fixed_size": False,  # dynamic height/width: multi-scale pooling applies
            "default_pooling": trained_pooling(config.base),
            "dim": backbone.dim,
            "preprocess": backbone.preprocess.to_dict(),
            "licence": f"{backbone.licence} (fine-tuned from {config.base})",
            "data": {"sha256": result.data_hash, "images": result.images, "train": n_train, "val": n_val,
                     "unreadable": failed},
            "hyperparameters": asdict(config),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_loss,
            "stopped_early": result.stopped_early,
            "seconds_per_epoch": round(result.seconds_per_epoch, 3),
            "history": [{k: v for k, v in h.items() if k != "step_losses"} for h in result.history],
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"torch": torch.__version__, "imagefinder": _version()},
        }
        (tmp_dir / registry.TUNED_MODEL_FILE).write_text(json.dumps(meta, indent=2))
        shutil.rmtree(model_dir, ignore_errors=True)
        os.replace(tmp_dir, model_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    log.info("exported the tuned encoder to %s", model_dir)
    return model_dir


def _version() -> str:
    from .. import __version__

    return __version__


def read_model_json(model_dir: Path | str) -> dict:
    return json.loads((Path(model_dir) / registry.TUNED_MODEL_FILE).read_text(encoding="utf-8"))


def model_provenance(model_spec: str) -> dict[str, dict]:
    """{member: its model.json less the per-epoch history} for the tuned-directory members of a spec.

    For the index manifest: which base model, method, data hash and hyper-parameters made the
    features an index holds. Built-in backbone names are left out (the manifest has their hash).
    """
    out = {}
    for name in registry.parse_model_spec(model_spec):
        if name not in registry.BACKBONES and registry.is_model_dir(name):
            meta = read_model_json(Path(name).expanduser())
            out[name] = {k: v for k, v in meta.items() if k != "history"}
    return out


__all__ = [
    "BASES", "METHODS", "FineTuneReport", "FineTuner", "ImageSet", "TrainConfig", "TrainError", "TrainResult",
    "fine_tune", "latest_checkpoint", "load_images", "model_provenance", "nt_xent", "plot_losses", "read_model_json",
    "train",
]
