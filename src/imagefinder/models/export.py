"""Turn pretrained weights into ONNX graphs that output a feature map (or tokens, or a vector) per image.

Each function writes one file and is called once per weights hash (see `registry.onnx_path`);
inference then runs on onnxruntime, which is faster than eager torch on a CPU.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch  # imported where used (as onnx is): only exports need them, not every query's start-up

log = logging.getLogger(__name__)

OPSET = 17
# Name tag of graphs that end at the last conv map (see `export_torch_map`); change it whenever
# those graphs change so cached exports of an older graph are never reused.
MAP_EXPORT_TAG = "map1"


def export_torch_map(model: torch.nn.Module, size: int, out: Path) -> None:
    """Export `model` (N,3,H,W -> N,C,h,w) as is: the graph ends at the last conv feature map.

    Pooling (avg / max / GeM) is done in numpy by `pooling.pool_map`, so every pooling is an
    option of the same export. Height and width are dynamic axes: multi-scale extraction feeds
    the same graph other input sizes.
    """
    import torch

    dummy = torch.zeros(1, 3, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        # the exporter's note that it cannot constant-fold the dynamic-shape Slice ops: expected
        # for a graph with dynamic height/width, and not something a user can act on
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(
            model.eval(),
            (dummy,),
            str(out),
            input_names=["input"],
            output_names=["features"],
            dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"},
                          "features": {0: "batch", 2: "fheight", 3: "fwidth"}},
            opset_version=OPSET,
            dynamo=False,
        )
    log.info("exported %s", out)


def efficientnet_lite(name: str, weights: Path) -> torch.nn.Module:
    """EfficientNet-Lite from `efficientnet-lite-pytorch` with a local weights file."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(name)
    state = torch.load(str(weights), map_location="cpu", weights_only=True)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{weights} does not match {name}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    model.eval()

    class Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.extract_features(x)

    return Features().eval()


def expose_output(src: Path, out: Path, tensor_name: str) -> None:
    """Copy an ONNX graph with `tensor_name` as its only output, pruning what follows it.

    Used for graphs that ship inside packages tuned for another task: their middle layers
    are good general features, their heads are not.
    """
    import onnx
    from onnx import helper, shape_inference, utils

    model = onnx.load(str(src))
    inputs = [i.name for i in model.graph.input]
    tmp = out.with_suffix(".full.onnx")
    try:
        inferred = shape_inference.infer_shapes(model)
        value_infos = {v.name: v for v in inferred.graph.value_info}
        if tensor_name not in value_infos:
            value_infos[tensor_name] = helper.make_empty_tensor_value_info(tensor_name)
        onnx.save(inferred, str(tmp))
        utils.extract_model(str(tmp), str(out), inputs, [tensor_name], check_model=False)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("extracted %s from %s into %s", tensor_name, src.name, out)


def torchvision_features(constructor: str, weights: Path) -> torch.nn.Module:
    """A torchvision ImageNet classifier cut before its pooling/head, from a local weights file."""
    import torch
    import torchvision.models as tvm  # optional dependency: ImportError is turned into advice by the caller
    kwargs = {"aux_logits": True, "init_weights": False} if constructor == "inception_v3" else {}
    model = getattr(tvm, constructor)(weights=None, **kwargs)
    model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
    if constructor == "resnet50":
        body = torch.nn.Sequential(*list(model.children())[:-2])
    elif constructor == "inception_v3":
        body = torch.nn.Sequential(*[m for n, m in model.named_children() if n not in ("AuxLogits", "avgpool", "dropout", "fc")])
    else:  # vgg16, efficientnet_b0: a `features` trunk
        body = model.features
    return body.eval()
