"""ImageFinder: content-based image retrieval on a CPU.

    from imagefinder import ImageFinder, build_index
    build_index(["photos/"], "my-index")
    ImageFinder("my-index").search("query.jpg", k=5)
"""

__version__ = "0.1.0"

from .finder import ImageFinder, Result  # noqa: E402
from .index import IndexConfig  # noqa: E402
from .pipeline import BuildReport, build_index  # noqa: E402

__all__ = ["ImageFinder", "Result", "IndexConfig", "BuildReport", "build_index", "__version__"]
