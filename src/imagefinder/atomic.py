"""Atomic file writes: a reader sees the old file or the whole new one, never a part.

One helper for every "write a temp file beside it, then rename" in the package (index
manifest and vectors, download cache, uploads, ONNX exports, local features, checkpoints).
The temp file lives in the destination's directory because `os.replace` is only atomic
within one file system; its name starts with "." so folder scans skip it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a fresh temp path beside `path`; on success it replaces `path`, on error it is removed.

    For writers that want a file name rather than a file object (np.savez, torch.save,
    matplotlib, onnx): keep `suffix` when the writer picks the format from the extension.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `path` atomically; with `durable`, fsync it before the rename (survives power loss)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())


def write_text(path: Path, text: str, *, durable: bool = True) -> None:
    write_bytes(path, text.encode("utf-8"), durable=durable)


def write_json(path: Path, data: Any, *, durable: bool = True) -> None:
    """JSON, indented with sorted keys (stable diffs of manifests), written atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True), durable=durable)


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (POSIX: the directory entry is data of the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
