"""The trained encoder as a model directory: DIR/model/model.onnx + model.json.

`get_backbone` accepts that directory as a model name (models/registry.py reads model.json):
the graph ends at the last conv map and is pooled in numpy like the shipped backbones, with
the pooling it was trained with; model.json also records where the model came from (base
weights, method, data hash, hyper-parameters: `registry.model_provenance` reads them back).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import os
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import export, registry
from .config import TrainResult
from .modules import trained_pooling

log = logging.getLogger(__name__)


class ConvMap(nn.Module):
    """EfficientNet -> its last conv feature map (what the exported graph outputs)."""

    def __init__(self, body: Any) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body.extract_features(x)
        return out


def export_model(net: nn.Module, result: TrainResult, *, n_train: int, n_val: int, failed: int) -> Path:
    """Write DIR/model/model.onnx (the last conv map, dynamic batch/height/width) + model.json.

    Written into a temp directory beside it and renamed into place: a reader sees the old model
    directory or the whole new one.
    """
    model_dir = result.model_dir
    tmp_dir = model_dir.with_name(f".{model_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    try:
        cpu_net = copy.deepcopy(net).cpu().eval()
        size = registry.get_backbone(result.config.base).preprocess.size
        with warnings.catch_warnings():  # torch's exporter notes it cannot fold the same-padding slices
            warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
            export.export_torch_map(ConvMap(cpu_net).eval(), size, tmp_dir / "model.onnx")
        meta = _model_json(result, tmp_dir / "model.onnx", n_train=n_train, n_val=n_val, failed=failed)
        (tmp_dir / registry.TUNED_MODEL_FILE).write_text(json.dumps(meta, indent=2))
        shutil.rmtree(model_dir, ignore_errors=True)
        os.replace(tmp_dir, model_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    log.info("exported the tuned encoder to %s", model_dir)
    return model_dir


def _model_json(result: TrainResult, onnx_file: Path, *, n_train: int, n_val: int, failed: int) -> dict[str, Any]:
    config = result.config
    backbone = registry.get_backbone(config.base)
    return {
        "format": "imagefinder-tuned-model",
        "format_version": 1,
        "name": f"tuned-{config.base}-{config.method}",
        "base_model": config.base,
        "base_weights_sha256": registry.file_sha256(backbone.locate_weights()),
        "method": config.method,
        "onnx": onnx_file.name,
        "onnx_sha256": registry.file_sha256(onnx_file),
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
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "imagefinder": _version()},
    }


def _version() -> str:
    from .. import __version__

    return __version__
