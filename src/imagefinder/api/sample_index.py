"""The index a server opens when none is given: the built-in sample, built once into the user cache."""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path

from .settings import Settings

log = logging.getLogger(__name__)


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
