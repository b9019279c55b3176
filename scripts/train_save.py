#!/usr/bin/env python
"""The original pipeline in one command: images CSV -> download -> preprocess -> [fine-tune]
-> features -> PCA -> K-Means -> saved artifacts in scripts/output (only run this to rebuild them).

    python scripts/train_save.py                      # data/images.csv, else the built-in sample
    python scripts/train_save.py --csv my_images.csv --out scripts/output
    python scripts/train_save.py --fine-tune autoencoder --epochs 5   # the original design's tuning

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
    parser.add_argument("--fine-tune", choices=["autoencoder", "contrastive"],
                        help="fine-tune the backbone on these images first (off by default: measured "
                             "slightly worse than the ImageNet features on UKBench, see README)")
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs (default 5)")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    source = args.csv
    if not source.is_file():
        source = write_sample(HERE.parent / "sample" / "images")[0]
        print(f"{args.csv} not found: using the built-in sample images in {source}", file=sys.stderr)
    quiet = ["--quiet"] if args.quiet else []
    model = args.model
    if args.fine_tune:  # tuned model beside OUT (an index build replaces OUT whole)
        tuned = args.out.with_name(args.out.name + "-finetune")
        code = cli_main(["train", str(source), "--out", str(tuned), "--method", args.fine_tune, "--model", model,
                         "--epochs", str(args.epochs), "--no-index", *quiet])
        if code:
            return code
        model = str(tuned / "model")
    command = ["index", str(source), "--out", str(args.out), "--model", model, "--pca", str(args.pca)]
    command += ["--clusters", str(args.clusters)] if args.clusters else []
    return cli_main(command + quiet)


if __name__ == "__main__":
    sys.exit(main())
