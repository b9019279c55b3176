#!/usr/bin/env python
"""The original pipeline in one command: images CSV -> download -> preprocess -> features
-> PCA -> K-Means -> saved artifacts in scripts/output (only run this to rebuild them).

    python scripts/train_save.py                      # data/images.csv, else the built-in sample
    python scripts/train_save.py --csv my_images.csv --out scripts/output

A thin wrapper: the work is done by `imagefinder index` (see `imagefinder index --help`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imagefinder.cli import main as cli_main
from imagefinder.sample import write_sample

HERE = Path(__file__).resolve().parent
DEFAULT_CSV = HERE.parent / "data" / "images.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV,
                        help="CSV of image URLs or paths (column url/image_url/image, else the first)")
    parser.add_argument("--out", type=Path, default=HERE / "output", help="artifact directory (default scripts/output)")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--pca", type=int, default=256, help="PCA dimensions (default 256)")
    parser.add_argument("--clusters", type=int, help="K-Means clusters (default: sqrt(n) labels, exact search)")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    source = args.csv
    if not source.is_file():
        source = write_sample(HERE.parent / "sample" / "images")[0]
        print(f"{args.csv} not found: using the built-in sample images in {source}", file=sys.stderr)
    command = ["index", str(source), "--out", str(args.out), "--model", args.model, "--pca", str(args.pca)]
    command += ["--clusters", str(args.clusters)] if args.clusters else []
    return cli_main(command + (["--quiet"] if args.quiet else []))


if __name__ == "__main__":
    sys.exit(main())
