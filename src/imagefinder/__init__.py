"""ImageFinder: content-based image retrieval on a CPU.

    from imagefinder import ImageFinder, build_index
    build_index(["photos/"], "my-index")
    ImageFinder("my-index").search("query.jpg", k=5)
"""

__version__ = "0.1.0"

from .finder import ImageFinder, Result
from .index import IndexConfig
from .pipeline import BuildReport, build_index

__all__ = ["BuildReport", "ImageFinder", "IndexConfig", "Result", "__version__", "build_index"]
