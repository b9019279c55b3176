"""Backbones: the registry (names -> weights, preprocessing, ONNX model), their ONNX export and int8 graphs.

Fine-tuning a backbone lives in `imagefinder.train`."""

from .registry import (
    BACKBONES,
    DEFAULT_MODEL,
    PRECISIONS,
    Backbone,
    ModelUnavailable,
    OnnxModel,
    get_backbone,
    parse_model_spec,
)

__all__ = [
    "BACKBONES",
    "DEFAULT_MODEL",
    "PRECISIONS",
    "Backbone",
    "ModelUnavailable",
    "OnnxModel",
    "get_backbone",
    "parse_model_spec",
]
