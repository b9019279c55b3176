"""Fine-tune a pretrained backbone on the user's own images, then export it like any backbone.

Self-supervised (no labels): the objectives are in modules.py. The early blocks are frozen
(run without autograd) so that a CPU can train the rest in minutes; BatchNorm keeps its
pretrained statistics, so training sees what the exported model computes. Every epoch writes
a checkpoint (checkpoints.py); the best epoch (lowest validation loss) is exported to
``DIR/model/`` (export.py), which `get_backbone` accepts as a model name.

Runs are reproducible from the seed: every random draw comes from an explicit generator or
from RNG states that checkpoints save, and torch's deterministic algorithms are on for the run.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from . import checkpoints
from .checkpoints import BEST, Progress
from .config import (
    CHECKPOINTS,
    LOSS_PNG,
    MODEL_DIR,
    RESUME_KEYS,
    FineTuneReport,
    Resolved,
    TrainConfig,
    TrainError,
    TrainResult,
    resolve,
)
from .data import ImageSet, cache_size, load_images, split
from .export import export_model
from .modules import build_modules, trained_pooling

if TYPE_CHECKING:
    from ..index import IndexConfig

log = logging.getLogger(__name__)


class FineTuner:
    """Encoder + objective + optimiser for one resolved config: steps, validation, state."""

    def __init__(self, config: Resolved, device: str) -> None:
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

    def train_step(self, images: torch.Tensor, gen: torch.Generator) -> float:
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

    def eval_loss(self, images: torch.Tensor, seed: int) -> float:
        """Mean loss over `images` in eval mode, with the same random views every epoch (comparable)."""
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

    def state(self) -> dict[str, Any]:
        return {"encoder": self.encoder.net.state_dict(), "objective": self.objective.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.encoder.net.load_state_dict(state["encoder"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Deterministic:
    """torch.use_deterministic_algorithms for the run only (it is process-wide state)."""

    def __enter__(self) -> None:
        self.before = torch.are_deterministic_algorithms_enabled()
        self.bench = torch.backends.cudnn.benchmark
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by cuBLAS in deterministic mode
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False

    def __exit__(self, *exc: object) -> None:
        torch.use_deterministic_algorithms(self.before)
        torch.backends.cudnn.benchmark = self.bench


@dataclass
class _Run:
    """One call of `train`: its settings, data split and output places."""

    out: Path
    config: Resolved
    data: ImageSet
    train_idx: np.ndarray
    val_idx: np.ndarray
    signature: dict[str, Any]
    progress: bool

    @property
    def ckpt_dir(self) -> Path:
        return self.out / CHECKPOINTS

    @property
    def title(self) -> str:
        return f"{self.config.method} fine-tuning of {self.config.base}"


def train(sources: Sequence[str] | ImageSet, out: Path | str, config: TrainConfig | None = None, *,
          resume: bool = False, progress: bool = False) -> TrainResult:
    """Fine-tune on the images of `sources`; write checkpoints, loss.png and DIR/model/ under `out`."""
    resolved = resolve(config or TrainConfig())
    data = sources if isinstance(sources, ImageSet) else load_images(
        sources, cache_size(resolved.image_size), progress=progress)
    train_idx, val_idx = split(len(data.sources), resolved.val_split, resolved.seed)
    signature = {**{k: getattr(resolved, k) for k in RESUME_KEYS}, "data_hash": data.data_hash,
                 "pooling": trained_pooling(resolved.base)}
    run = _Run(Path(out), resolved, data, train_idx, val_idx, signature, progress)
    run.ckpt_dir.mkdir(parents=True, exist_ok=True)
    with _Deterministic():
        seed_everything(resolved.seed)
        tuner = FineTuner(resolved, resolved.device)
        state = _start(run, tuner, resume)
        seconds = _epochs(run, tuner, state)
        if not state.history:
            raise TrainError(f"no epoch was run: --epochs {resolved.epochs} is not beyond the checkpoint's epoch")
        best_file = run.ckpt_dir / BEST
        if best_file.is_file():
            tuner.encoder.net.load_state_dict(checkpoints.load(best_file, resolved.device)["encoder"])
    if not (run.out / LOSS_PNG).is_file():
        checkpoints.plot_losses(state.history, run.out / LOSS_PNG, run.title)
    history = state.history
    result = TrainResult(
        out=run.out, model_dir=run.out / MODEL_DIR, config=resolved, history=history,
        best_epoch=int(state.best["epoch"]), best_loss=float(state.best["loss"]),
        epochs_run=int(history[-1]["epoch"]), stopped_early=bool(state.stopped), images=len(data.sources),
        data_hash=data.data_hash,
        seconds_per_epoch=float(np.mean(seconds or [h["train_seconds"] for h in history])),
    )
    export_model(tuner.encoder.net, result, n_train=len(train_idx), n_val=len(val_idx), failed=len(data.failed))
    return result


def _start(run: _Run, tuner: FineTuner, resume: bool) -> Progress:
    """The progress to continue from: the newest checkpoint's with `resume`, else a fresh start."""
    latest = checkpoints.latest_checkpoint(run.out) if resume else None
    if latest is None:
        if resume:
            log.warning("--resume: no checkpoint in %s; starting from epoch 1", run.ckpt_dir)
        checkpoints.clear(run.ckpt_dir)
        return Progress()
    state, model_state = checkpoints.restore(latest, run.config.device, run.signature)
    tuner.load_state(model_state)
    log.info("resuming from %s (epoch %d done)", latest, state.epoch)
    if state.stopped and state.epoch < run.config.epochs:
        log.info("early stopping had already ended this run at epoch %d; exporting", state.epoch)
    return state


def _epochs(run: _Run, tuner: FineTuner, state: Progress) -> list[float]:
    """Train from the epoch after `state.epoch` until `epochs` or early stopping; returns train seconds."""
    config = run.config
    pixels = torch.from_numpy(run.data.pixels)
    train_px, val_px = pixels[run.train_idx], pixels[run.val_idx]
    seconds: list[float] = []
    for epoch in range(state.epoch + 1, config.epochs + 1):
        if state.stopped:
            break
        t0 = time.perf_counter()
        steps = math.ceil(len(train_px) / config.batch_size)
        with tqdm(total=steps, desc=f"epoch {epoch}/{config.epochs}", unit="batch", disable=not run.progress) as bar:
            losses, train_seconds, cpu_seconds = _train_epoch(run, tuner, train_px, epoch, steps, bar)
            seconds.append(train_seconds)
            val_loss = tuner.eval_loss(val_px, config.seed + 7919) if len(run.val_idx) else None
            bar.set_postfix(loss=f"{np.mean(losses):.4f}", val=f"{val_loss:.4f}" if val_loss is not None else "-")
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
                  "step_losses": losses, "train_seconds": round(train_seconds, 3),
                  "train_cpu_seconds": round(cpu_seconds, 3),
                  "seconds": round(time.perf_counter() - t0, 3), "images": len(run.train_idx)}
        _end_epoch(run, tuner, state, record)
    return seconds


def _train_epoch(run: _Run, tuner: FineTuner, train_px: torch.Tensor, epoch: int, steps: int,
                 bar: tqdm) -> tuple[list[float], float, float]:
    """One pass over the training images in seeded order, in `steps` equal batches.

    Equal batches (450 images at 32 -> 15 x 30, not 14 x 32 + 2): a tiny last batch would give
    NT-Xent almost no negatives and a noisy step. Returns (step losses, wall seconds, CPU seconds
    of all threads: wall time x busy cores if unshared).
    """
    gen = torch.Generator().manual_seed(run.config.seed * 1_000_003 + epoch)
    order = torch.randperm(len(train_px), generator=gen)
    losses: list[float] = []
    t0, cpu0 = time.perf_counter(), time.process_time()
    for chunk in torch.tensor_split(order, steps):
        if len(chunk) < 2:  # one image has no negatives (only when batch size is 2 and n is odd)
            continue
        losses.append(tuner.train_step(train_px[chunk], gen))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses):.4f}", refresh=False)
    return losses, time.perf_counter() - t0, time.process_time() - cpu0


def _end_epoch(run: _Run, tuner: FineTuner, state: Progress, record: dict[str, Any]) -> None:
    """Early-stopping bookkeeping, best.pt, the epoch checkpoint, loss.png and history.json."""
    config = run.config
    epoch, val_loss = record["epoch"], record["val_loss"]
    state.epoch = epoch
    state.history.append(record)
    monitored = val_loss if val_loss is not None else record["train_loss"]
    best_loss = state.best["loss"]
    if monitored < best_loss - config.min_delta * abs(best_loss if math.isfinite(best_loss) else 0):
        state.best, state.bad_epochs = {"epoch": epoch, "loss": monitored}, 0
        checkpoints.save({"epoch": epoch, "encoder": tuner.encoder.net.state_dict()}, run.ckpt_dir / BEST)
    else:
        state.bad_epochs += 1
    state.stopped = state.bad_epochs >= config.patience and epoch < config.epochs
    log.info("epoch %d/%d: train loss %.4f, val loss %s, %.1f s%s", epoch, config.epochs,
             record["train_loss"], "-" if val_loss is None else f"{val_loss:.4f}", record["train_seconds"],
             f"; no better val loss for {state.bad_epochs} epochs: stopping early" if state.stopped else "")
    checkpoints.save_epoch(run.ckpt_dir, state, signature=run.signature, config=config, state=tuner.state(),
                           keep=config.keep_checkpoints)
    checkpoints.plot_losses(state.history, run.out / LOSS_PNG, run.title)
    checkpoints.write_history(run.out, state.history)


def fine_tune(sources: Sequence[str], out: Path | str, config: TrainConfig | None = None, *, resume: bool = False,
              index: bool = True, index_config: IndexConfig | None = None, progress: bool = False) -> FineTuneReport:
    """Train, export DIR/model, then rebuild the index of `sources` with it into DIR/index."""
    from ..index import IndexConfig
    from ..pipeline import build_index

    result = train(sources, out, config, resume=resume, progress=progress)
    report = None
    if index:
        cfg = replace(index_config or IndexConfig(), model=str(result.model_dir.resolve()))
        report = build_index(list(sources), Path(out) / "index", cfg, progress=progress)
    return FineTuneReport(result, report)
