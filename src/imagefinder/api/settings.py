"""API settings: plain data, read from the environment once (or passed in by a program or test).

Environment variables (all optional):

    IMAGEFINDER_INDEX               index directory (default: the built-in sample, built on first use)
    IMAGEFINDER_MAX_UPLOAD_BYTES    largest accepted image upload / URL download (default 20 MB)
    IMAGEFINDER_MAX_PIXELS          largest accepted image, width x height (default 64 million)
    IMAGEFINDER_ALLOW_PRIVATE_URLS  1/true/yes lets {"url": ...} reach localhost and private
                                    networks (for a server used only on one's own machine; off)
    IMAGEFINDER_CORS_ORIGINS        comma-separated origins whose pages may call the API from a
                                    browser ("*" for any; default: the web front-end on :5000)
    IMAGEFINDER_FETCH_TIMEOUT       seconds per network operation when fetching a URL (default 10)
    IMAGEFINDER_SEARCH_CONCURRENCY  searches computed at once (default: one per CPU core); others
                                    wait their turn in arrival order
    IMAGEFINDER_MODEL_THREADS       onnxruntime threads per query (default 1; 0 = one per core)
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MB = 1024 * 1024
DEFAULT_CORS = ("http://127.0.0.1:5000", "http://localhost:5000")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """A setting with a value that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    index_dir: Path | None = None
    max_upload_bytes: int = 20 * MB
    max_pixels: int = 64_000_000
    allow_private_urls: bool = False
    cors_origins: tuple[str, ...] = DEFAULT_CORS
    fetch_timeout: float = 10.0
    max_files: int = 10  # images per POST /images request
    preload_model: bool = True  # load the model at start-up, not on the first query
    reload_interval: float = 1.0  # seconds between checks for index updates made by other processes
    search_concurrency: int = 0  # searches computed at once (0: one per CPU core); the rest queue in order
    model_threads: int = 1  # onnxruntime threads per query (0: one per CPU core)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        index = env.get("IMAGEFINDER_INDEX", "").strip()
        origins = env.get("IMAGEFINDER_CORS_ORIGINS")
        return cls(
            index_dir=Path(index).expanduser() if index else None,
            max_upload_bytes=_int(env, "IMAGEFINDER_MAX_UPLOAD_BYTES", cls.max_upload_bytes),
            max_pixels=_int(env, "IMAGEFINDER_MAX_PIXELS", cls.max_pixels),
            allow_private_urls=_bool(env, "IMAGEFINDER_ALLOW_PRIVATE_URLS", False),
            cors_origins=tuple(o.strip() for o in origins.split(",") if o.strip()) if origins is not None
            else DEFAULT_CORS,
            fetch_timeout=_float(env, "IMAGEFINDER_FETCH_TIMEOUT", cls.fetch_timeout),
            search_concurrency=_int(env, "IMAGEFINDER_SEARCH_CONCURRENCY", cls.search_concurrency, minimum=0),
            model_threads=_int(env, "IMAGEFINDER_MODEL_THREADS", cls.model_threads, minimum=0),
        )

    @property
    def max_body_bytes(self) -> int:
        """Whole request body: the image plus room for multipart headers and form fields."""
        return self.max_upload_bytes + 64 * 1024


def _int(env: dict, name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(float(raw))
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def _float(env: dict, name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a number of seconds") from None
    if value <= 0:
        raise SettingsError(f"{name}={raw!r}: must be positive")
    return value


def _bool(env: dict, name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r}: expected 1/0, true/false, yes/no or on/off")


def sample_dir() -> Path:
    from ..models import registry

    return registry.cache_dir() / "sample"


def default_index(build: bool = True) -> Path:
    """The built-in sample index (45 images), built into the user cache on first use.

    A file lock makes concurrent starters (the API and `python -m imagefinder.serve`) build it once.
    """
    from ..index import MANIFEST

    root = sample_dir()
    index = root / "index"
    if (index / MANIFEST).is_file() or not build:
        return index
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (index / MANIFEST).is_file():
                from ..pipeline import build_index
                from ..sample import write_sample

                log.info("building the sample index in %s (first run only)", index)
                images, _query = write_sample(root / "images")
                build_index([str(images)], index)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return index


def resolve_index(settings: Settings) -> Path:
    return Path(settings.index_dir) if settings.index_dir is not None else default_index()
