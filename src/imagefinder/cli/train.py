"""`imagefinder train`: fine-tune a backbone on your images, export it, rebuild the index with it.

torch is imported only when the command runs (imagefinder.train.loop): the parser needs only
the choices in imagefinder.train.config.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .options import EXIT_OK, Command, common, progress
from .terminal import say, say_json

if TYPE_CHECKING:
    from ..train import TrainConfig

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


def _train_options(p: argparse.ArgumentParser) -> None:
    from ..train.config import BASES, DEVICES, METHODS

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
    common(p)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from ..train import TrainConfig

    return TrainConfig(method=args.method, base=args.base, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, head_lr=args.head_lr, freeze_until=args.freeze_until, val_split=args.val_split,
                       patience=args.patience, seed=args.seed, image_size=args.image_size,
                       temperature=args.temperature, device=args.device)


def cmd_train(args: argparse.Namespace) -> int:
    from ..index import IndexConfig
    from ..train import fine_tune

    report = fine_tune(args.sources, args.out, config_from_args(args), resume=args.resume,
                       index=not args.no_index, index_config=IndexConfig(pca=args.pca, clusters=args.clusters),
                       progress=progress(args))
    r, index = report.train, report.index
    summary = {
        "model_dir": str(r.model_dir), "method": r.config.method, "base": r.config.base,
        "images": r.images, "epochs_run": r.epochs_run, "best_epoch": r.best_epoch,
        "best_val_loss": round(r.best_loss, 6), "stopped_early": r.stopped_early,
        "seconds_per_epoch": round(r.seconds_per_epoch, 2), "device": r.config.device,
        "loss_png": str(r.loss_png), "index": str(index.path) if index else None,
        "indexed": index.indexed if index else None,
    }
    if args.json:
        say_json(summary)
        return EXIT_OK
    say(f"trained {r.config.method} on {r.images} images for {r.epochs_run} epochs on {r.config.device} "
          f"({r.seconds_per_epoch:.1f} s/epoch){'; stopped early' if r.stopped_early else ''}")
    say(f"best validation loss {r.best_loss:.4f} at epoch {r.best_epoch}; loss curve: {r.loss_png}")
    say(f"model: {r.model_dir}  (use it as --model {r.model_dir})")
    if index:
        say(f"index: {index.path}  ({index.indexed} of {index.items} images)")
    return EXIT_OK


TRAIN_COMMAND = Command("train", "fine-tune the backbone on your images, then rebuild the index with it",
                        _train_options, cmd_train, description=DESCRIPTION, raw_description=True)
