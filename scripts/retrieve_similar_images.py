#!/usr/bin/env python
"""Print the images most similar to a query, from artifacts made by train_save.py.

    python scripts/retrieve_similar_images.py scripts/output https://example.com/cat.jpg
    python scripts/retrieve_similar_images.py scripts/output query.jpg -k 5 --metric vote

A thin wrapper around `imagefinder search` (same options, see its --help).
"""

from __future__ import annotations

import sys

from imagefinder.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return cli_main(["search", *argv])


if __name__ == "__main__":
    sys.exit(main())
