"""Backbones: registry, ONNX export, and (in `finetune`) training."""

from .registry import (
    BACKBONES,
    DEFAULT_MODEL,
    Backbone,
    ModelUnavailable,
    OnnxModel,
    get_backbone,
    parse_model_spec,
)

__all__ = [
    "BACKBONES",
    "DEFAULT_MODEL",
    "Backbone",
    "ModelUnavailable",
    "OnnxModel",
    "get_backbone",
    "parse_model_spec",
]
