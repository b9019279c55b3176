"""What decides a fine-tuning run, and what a run returns. No torch here: the CLI reads the
choices (METHODS, BASES, DEVICES) to build its parser before anything is trained."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ImageFinderError

if TYPE_CHECKING:
    from ..pipeline import BuildReport

METHODS = ("autoencoder", "contrastive")
BASES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
DEVICES = ("auto", "cpu", "cuda")
# Files and folders of a run directory.
CHECKPOINTS, MODEL_DIR, LOSS_PNG, HISTORY = "checkpoints", "model", "loss.png", "history.json"
# Settings a checkpoint must share with the run that resumes it (epochs and patience may grow).
RESUME_KEYS = ("method", "base", "freeze_until", "image_size", "val_split", "seed", "batch_size", "temperature")


class TrainError(ImageFinderError, ValueError):
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


@dataclass(frozen=True)
class Resolved(TrainConfig):
    """A validated config with every machine- and model-dependent default filled in (see `resolve`)."""

    freeze_until: int = 0
    image_size: int = 224
    head_lr: float = 1e-3


def resolve(config: TrainConfig) -> Resolved:
    """Fill in the defaults that depend on the base model and the machine (a resolved config resolves to itself)."""
    import torch

    from ..models import registry
    from .modules import block_layout

    config.validate()
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: torch sees no CUDA device here (CPU build or no driver); use --device cpu")
    n_blocks, default_freeze = block_layout(config.base)
    freeze = default_freeze if config.freeze_until is None else config.freeze_until
    if not 0 <= freeze <= n_blocks:
        raise TrainError(f"--freeze-until must be between 0 (train everything) and {n_blocks} (head only) "
                         f"for {config.base}, got {freeze}")
    fields = {**asdict(config), "device": device, "freeze_until": freeze,
              "image_size": config.image_size or registry.get_backbone(config.base).preprocess.size,
              "head_lr": config.head_lr or 10 * config.lr}
    return Resolved(**fields)


@dataclass
class TrainResult:
    out: Path
    model_dir: Path
    config: Resolved  # freeze_until, image_size, head_lr, device filled in
    history: list[dict[str, Any]]
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
    index: BuildReport | None = None  # when the index was rebuilt with the tuned model

