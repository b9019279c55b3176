"""The `imagefinder` command line: parse, call the library, print. No pipeline logic lives here.

main (parser, exit codes) - options (shared by several commands) - build (index, add, remove,
rebuild, demo) - query (search, duplicates) - report (info, evaluate, printed summaries) - train.
Every module imports the library inside its command functions, so `imagefinder --help` loads
neither numpy nor FAISS, ONNX, torch or httpx.
"""

from .main import main

__all__ = ["main"]
