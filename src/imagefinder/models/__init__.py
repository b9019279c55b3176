"""Backbones: the registry (names -> weights, preprocessing, ONNX model) and their ONNX export.

Fine-tuning a backbone lives in `imagefinder.train`."""

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
