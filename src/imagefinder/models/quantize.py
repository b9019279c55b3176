"""int8 backbones: calibrated static quantisation of a backbone's fp32 ONNX export.

Recipe (`RECIPE`, part of the cached file name): `quant_pre_process` (shape inference and
graph optimisation), then `quantize_static` in QDQ format with per-channel int8 weights and
uint8 activations (`reduce_range` off: this targets CPUs with VNNI int8 dot products, where
no saturation workaround is needed), MinMax calibration.

Calibration set (`calibration_images`): the 9 built-in sample photos that ship inside the
package (imagefinder/sample_data, see `imagefinder.sample`), each with the sample's own edits
plus deterministic crops, scales, a greyscale and a blurred copy: 144 images, the same on
every machine and needing nothing downloaded. Never an evaluation set: users have no UKBench,
and calibrating on the test images would flatter the measured int8 loss. The images are
preprocessed exactly as the backbone's queries are (`ingest.decode.to_array`), so the
calibrated ranges are those of the inputs the graph will see; the cache key hashes the photos,
the edit list and the preprocessing (input size included), so changing any of them makes a
new file instead of reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from ..ingest.decode import Preprocess, to_array
from ..sample import EDITS, photos

log = logging.getLogger(__name__)

RECIPE = "qdq-pc-s8u8-minmax1"  # bump with any change to `quantize` below
CALIBRATION_TAG = "sample9x16-v1"  # bump with any change to `_augmentations`


def _crop(left: float, top: float, size: float) -> Callable[[Image.Image], Image.Image]:
    def fn(im: Image.Image) -> Image.Image:
        w, h = im.size
        return im.crop((int(w * left), int(h * top), int(w * (left + size)), int(h * (top + size))))

    return fn


def _augmentations() -> dict[str, Callable[[Image.Image], Image.Image]]:
    """The sample's 5 edits + 11 more: 16 deterministic views of each photo."""
    extra: dict[str, Callable[[Image.Image], Image.Image]] = {
        f"crop{i}": _crop(left, top, size)
        for i, (left, top, size) in enumerate([(0, 0, 0.6), (0.4, 0, 0.6), (0, 0.4, 0.6), (0.4, 0.4, 0.6),
                                               (0.25, 0.25, 0.5), (0.05, 0.05, 0.9), (0.3, 0.1, 0.4)])
    }
    extra["grey"] = lambda im: ImageOps.grayscale(im).convert("RGB")
    extra["blur"] = lambda im: im.filter(ImageFilter.GaussianBlur(3))
    extra["small"] = lambda im: im.resize((max(1, im.width // 6), max(1, im.height // 6)), Image.Resampling.BILINEAR)
    extra["dark"] = lambda im: im.point(lambda v: v // 3)
    return {**EDITS, **extra}


def calibration_images() -> Iterator[Image.Image]:
    """Every augmentation of every sample photo, in a fixed order."""
    augmentations = _augmentations()
    for _name, photo in photos():
        for fn in augmentations.values():
            yield fn(photo)


def calibration_key(preprocess: Preprocess) -> str:
    """Hash of what determines the calibration tensors: sample photos, edits, preprocessing."""
    h = hashlib.sha256(json.dumps({"tag": CALIBRATION_TAG, "edits": sorted(_augmentations()),
                                   "preprocess": preprocess.to_dict()}, sort_keys=True).encode())
    root = resources.files("imagefinder") / "sample_data"
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".jpg"):
            h.update(entry.name.encode())
            h.update(entry.read_bytes())
    return h.hexdigest()


def quantize(fp32: Path, out: Path, preprocess: Preprocess) -> None:
    """Write the int8 (QDQ) version of the fp32 graph `fp32` to `out`, calibrated as above."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, input_name: str) -> None:
            self.input_name = input_name
            self.images = calibration_images()

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self.images, None)
            return None if image is None else {self.input_name: to_array(image, preprocess)[None]}

    import onnx

    pre = out.with_name(out.name + ".pre.onnx")
    try:
        quant_pre_process(str(fp32), str(pre))
        input_name = onnx.load(str(pre), load_external_data=False).graph.input[0].name
        quantize_static(str(pre), str(out), Reader(input_name), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=False)
    finally:
        pre.unlink(missing_ok=True)
    log.info("quantised %s to int8 (%s)", fp32.name, out)
