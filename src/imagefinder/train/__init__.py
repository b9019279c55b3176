"""Fine-tuning: train a backbone on your own images (self-supervised), export it as a model directory.

    from imagefinder.train import TrainConfig, train
    result = train(["photos/"], "run", TrainConfig(method="contrastive", epochs=5))
    # then: --model run/model, anywhere a model name goes

config (settings, no torch) -> data (decode the images once) -> modules (encoder + objective)
-> loop (epochs, early stopping) -> checkpoints (resume) -> export (ONNX + model.json).
Names are imported on first use (PEP 562) so that `import imagefinder.train` and the CLI's
parser need no torch; only training itself does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import BASES, DEVICES, METHODS, FineTuneReport, Resolved, TrainConfig, TrainError, TrainResult, resolve

if TYPE_CHECKING:
    from .data import ImageSet, load_images
    from .loop import fine_tune, train

_LAZY = {"ImageSet": "data", "load_images": "data", "fine_tune": "loop", "train": "loop"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BASES", "DEVICES", "METHODS", "FineTuneReport", "ImageSet", "Resolved", "TrainConfig", "TrainError",
           "TrainResult", "fine_tune", "load_images", "resolve", "train"]
