"""`imagefinder train`: fine-tune a backbone on your images, export it, rebuild the index with it.

Kept apart from cli.py so that the CLI does not import torch until this command runs;
cli.py calls `register(sub)` to add the subcommand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_INPUT = 0, 2

DESCRIPTION = """\
Fine-tune a pretrained EfficientNet-Lite on the images of SOURCE (self-supervised: no labels),
export it to DIR/model (model.onnx + model.json) and rebuild the index of SOURCE with it in
DIR/index. DIR/model then works anywhere a model name does: --model DIR/model.

methods:
  contrastive  (default) SimCLR/NT-Xent: two augmented views (crop, flip, brightness,
               contrast) of one image are pulled together, other images pushed apart.
  autoencoder  the original design: rebuild the 224x224 input from the pooled vector.
               Learns colour and layout rather than identity; it can make retrieval worse
               (see benchmarks/finetune.py); kept for fidelity.

Each epoch writes DIR/checkpoints/epoch-N.pt (--resume continues from the newest),
DIR/loss.png and DIR/history.json; the epoch with the lowest validation loss is exported.
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand to the `imagefinder` parser."""
    from .models.finetune import BASES, DEVICES, METHODS

    p = sub.add_parser("train", help="fine-tune the backbone on your images, then rebuild the index with it",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="folder, CSV, .txt list, image file or URL (as for `imagefinder index`)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="run directory: checkpoints/, loss.png, model/, index/")
    p.add_argument("--method", choices=METHODS, default="contrastive", help="objective (default contrastive)")
    p.add_argument("--model", dest="base", choices=BASES, default="efficientnet-lite0",
                   help="pretrained backbone to start from (default efficientnet-lite0)")
    p.add_argument("--epochs", type=int, default=10, help="maximum epochs (default 10)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    p.add_argument("--lr", type=float, default=1e-4, help="backbone learning rate, AdamW (default 1e-4)")
    p.add_argument("--head-lr", type=float, help="learning rate of the new decoder / projection head (default 10x --lr)")
    p.add_argument("--freeze-until", type=int, metavar="LAYER",
                   help="freeze the stem and blocks before block LAYER; 0 trains everything "
                        "(default: all but the last two stages, e.g. 11 of 16 blocks for lite0)")
    p.add_argument("--val-split", type=float, default=0.1, help="share of images held out for validation (default 0.1)")
    p.add_argument("--patience", type=int, default=3,
                   help="stop after this many epochs without a better validation loss (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, augmentations and init (default 0)")
    p.add_argument("--image-size", type=int, metavar="PX",
                   help="training resolution (default the model's, 224 for lite0); export is always at the model's")
    p.add_argument("--temperature", type=float, default=0.1, help="NT-Xent temperature (default 0.1)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto = cuda when torch sees one, else cpu")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in DIR/checkpoints")
    p.add_argument("--no-index", action="store_true", help="only train and export DIR/model; do not rebuild the index")
    p.add_argument("--pca", type=int, metavar="D", help="as for `imagefinder index`: PCA to D dims for the index")
    p.add_argument("--clusters", type=int, metavar="K", help="as for `imagefinder index`: K-Means clusters")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_train)


def config_from_args(args: argparse.Namespace):
    from .models.finetune import TrainConfig

    return TrainConfig(method=args.method, base=args.base, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, head_lr=args.head_lr, freeze_until=args.freeze_until, val_split=args.val_split,
                       patience=args.patience, seed=args.seed, image_size=args.image_size,
                       temperature=args.temperature, device=args.device)


def cmd_train(args: argparse.Namespace) -> int:
    from .index import IndexConfig
    from .models.finetune import TrainError, fine_tune

    progress = not args.quiet and sys.stderr.isatty()
    try:
        report = fine_tune(args.sources, args.out, config_from_args(args), resume=args.resume,
                           index=not args.no_index, index_config=IndexConfig(pca=args.pca, clusters=args.clusters),
                           progress=progress)
    except TrainError as exc:
        print(f"imagefinder: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    r = report.train
    summary = {
        "model_dir": str(r.model_dir), "method": r.config.method, "base": r.config.base,
        "images": r.images, "epochs_run": r.epochs_run, "best_epoch": r.best_epoch,
        "best_val_loss": round(r.best_loss, 6), "stopped_early": r.stopped_early,
        "seconds_per_epoch": round(r.seconds_per_epoch, 2), "device": r.config.device,
        "loss_png": str(r.loss_png), "index": str(report.index.path) if report.index else None,
        "indexed": report.index.indexed if report.index else None,
    }
    if args.json:
        print(json.dumps(summary))
        return EXIT_OK
    print(f"trained {r.config.method} on {r.images} images for {r.epochs_run} epochs on {r.config.device} "
          f"({r.seconds_per_epoch:.1f} s/epoch){'; stopped early' if r.stopped_early else ''}")
    print(f"best validation loss {r.best_loss:.4f} at epoch {r.best_epoch}; loss curve: {r.loss_png}")
    print(f"model: {r.model_dir}  (use it as --model {r.model_dir})")
    if report.index:
        print(f"index: {report.index.path}  ({report.index.indexed} of {report.index.items} images)")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`python -m imagefinder.train_cli ...` until cli.py registers the subcommand."""
    import logging

    parser = argparse.ArgumentParser(prog="imagefinder")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from .ingest.sources import SourceError
    from .models import ModelUnavailable

    try:
        return args.func(args)
    except (SourceError, ModelUnavailable) as exc:
        print(f"imagefinder: error: {exc}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
