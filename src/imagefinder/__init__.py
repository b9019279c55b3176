"""ImageFinder: content-based image retrieval on a CPU.

    from imagefinder import ImageFinder, build_index
    build_index(["photos/"], "my-index")
    ImageFinder("my-index").search("query.jpg", k=5)

The names below are imported on first use (PEP 562 `__getattr__`): `import imagefinder` and
`imagefinder --help` stay fast, and load numpy, FAISS, ONNX, torch or httpx only when a name
that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import ImageFinderError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .finder import ImageFinder, Result
    from .index import IndexConfig
    from .pipeline import BuildReport, build_index

_LAZY = {"ImageFinder": "finder", "Result": "finder", "IndexConfig": "index", "BuildReport": "pipeline",
         "build_index": "pipeline"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["BuildReport", "ImageFinder", "ImageFinderError", "IndexConfig", "Result", "__version__", "build_index"]
