"""What every epoch leaves in the run directory: checkpoints/epoch-N.pt, best.pt, history.json, loss.png.

An epoch checkpoint holds the model, the optimiser, the RNG states and the run's bookkeeping, so
`resume=True` continues where a run stopped and ends with exactly the weights an uninterrupted
run would have. Every file is written to a temp file and renamed (`atomic`): a run killed
mid-write leaves the previous checkpoint, never a truncated one to resume from.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import atomic
from .config import CHECKPOINTS, HISTORY, TrainConfig, TrainError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
BEST = "best.pt"
_EPOCH_FILE = re.compile(r"epoch-(\d+)\.pt")


@dataclass
class Progress:
    """The bookkeeping of a run after `epoch`: saved in every checkpoint, restored on resume."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=lambda: {"epoch": 0, "loss": math.inf})
    bad_epochs: int = 0
    stopped: bool = False


def _epochs(ckpt_dir: Path) -> list[tuple[int, Path]]:
    return sorted((int(m.group(1)), p) for p in ckpt_dir.glob("epoch-*.pt") if (m := _EPOCH_FILE.fullmatch(p.name)))


def latest_checkpoint(out: Path | str) -> Path | None:
    found = _epochs(Path(out) / CHECKPOINTS)
    return found[-1][1] if found else None


def save(obj: dict[str, Any], path: Path) -> None:
    with atomic.atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)


def load(path: Path, device: str) -> dict[str, Any]:
    loaded: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
    return loaded


def save_epoch(ckpt_dir: Path, progress: Progress, *, signature: dict[str, Any], config: TrainConfig,
               state: dict[str, Any], keep: int) -> None:
    """checkpoints/epoch-N.pt for `progress.epoch`, then drop all but the newest `keep`."""
    save({"format": CHECKPOINT_FORMAT, "signature": signature, "config": asdict(config), "state": state,
          "rng": _get_rng(), **asdict(progress)}, ckpt_dir / f"epoch-{progress.epoch}.pt")
    for _, old in _epochs(ckpt_dir)[:-keep]:
        old.unlink(missing_ok=True)


def restore(path: Path, device: str, signature: dict[str, Any]) -> tuple[Progress, dict[str, Any]]:
    """(bookkeeping, model/optimiser state) of a checkpoint made by the same run; the RNGs are restored."""
    ckpt = load(path, device)
    _check_signature(ckpt.get("signature", {}), signature, path)
    _set_rng(ckpt["rng"])
    progress = Progress(epoch=ckpt["epoch"], history=ckpt["history"], best=ckpt["best"],
                        bad_epochs=ckpt["bad_epochs"], stopped=ckpt["stopped"])
    return progress, ckpt["state"]


def clear(ckpt_dir: Path) -> None:
    """Remove every checkpoint: a fresh run must not leave stale ones to resume from."""
    for old in ckpt_dir.glob("*.pt"):
        old.unlink()


def _check_signature(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
    if diff:
        details = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise TrainError(f"{path} was made by a different run ({details}): "
                         "use the same images and settings, or drop --resume to start over")


def _get_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def write_history(out: Path, history: list[dict[str, Any]]) -> None:
    atomic.write_text(out / HISTORY, json.dumps(history, indent=1), durable=False)


def plot_losses(history: list[dict[str, Any]], path: Path, title: str) -> None:
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
    with atomic.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
