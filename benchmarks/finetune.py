"""Does fine-tuning help retrieval? Base vs autoencoder- vs contrastive-tuned EfficientNet-Lite0.

UKBench-1000 is split by group: train = groups 0-124 (images 0-499), eval = groups 125-249
(images 500-999), written as two data dirs of symlinks + groundtruth.csv. Each method trains
(self-supervised, labels unused) on the train half only; every model is then scored with
`imagefinder.evaluate.evaluate` on the held-out eval half (and, for reference, on the train
half: the usual use is to fine-tune on the very collection one indexes).

    python benchmarks/finetune.py                        # ~25 min on 2 cores
    python benchmarks/finetune.py --epochs 2 --json      # quicker; last line is JSON
    python benchmarks/finetune.py --timing               # one epoch of 500 images per method, timed

Prints a markdown table (ns_score, map, recall@1) and one JSON line with everything,
including training seconds per epoch.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import time
from pathlib import Path

import torch

from imagefinder.evaluate import evaluate
from imagefinder.index import IndexConfig
from imagefinder.train import TrainConfig, train

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ukbench1000"
BASE = "efficientnet-lite0"
log = logging.getLogger("benchmarks.finetune")


def write_split(data: Path, out: Path, groups: range) -> Path:
    """out/images/* symlinks + out/groundtruth.csv for the images of `groups`."""
    with open(data / "groundtruth.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["group_id"] and int(r["group_id"]) in groups]
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for r in rows:
        link = images / r["filename"]
        if not link.exists():
            link.symlink_to((data / "images" / r["filename"]).resolve())
    with open(out / "groundtruth.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "group_id"])
        writer.writerows([r["filename"], r["group_id"]] for r in rows)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=Path("/tmp/imagefinder-finetune-bench"))
    parser.add_argument("--methods", default="autoencoder,contrastive")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--freeze-until", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing", action="store_true",
                        help="only time one epoch of each method on all 500 train images (no validation split)")
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    train_dir = write_split(args.data, args.work / "train", range(125))
    eval_dir = write_split(args.data, args.work / "eval", range(125, 250))
    if args.timing:
        return time_epochs(args, train_dir)
    results: dict[str, dict] = {}

    def score(name: str, model: str, extra: dict) -> None:
        held_out = evaluate(eval_dir, IndexConfig(model=model))
        on_train = evaluate(train_dir, IndexConfig(model=model))
        results[name] = {"eval": held_out, "train_half": on_train, **extra}
        log.info("%s: eval ns %.4f map %.4f r@1 %.4f | train-half ns %.4f map %.4f", name,
                     held_out["ns_score"], held_out["map"], held_out["recall@1"], on_train["ns_score"], on_train["map"])

    score("base", BASE, {})  # its default pooling, which the tuned models also train and search with
    score("base@avg", f"{BASE}@avg", {})  # plain average pooling, for reference
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        config = TrainConfig(method=method, base=BASE, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             freeze_until=args.freeze_until, image_size=args.image_size, patience=args.patience,
                             seed=args.seed)
        t0 = time.perf_counter()
        result = train([str(train_dir / "images")], args.work / method, config, progress=not args.json)
        total = time.perf_counter() - t0
        train_images = result.history[-1]["images"]
        extra = {
            "epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "best_val_loss": result.best_loss,
            "stopped_early": result.stopped_early, "train_images": train_images, "val_images": result.images - train_images,
            "train_seconds_per_epoch": round(result.seconds_per_epoch, 1),
            "epoch_seconds_incl_val": round(sum(h["seconds"] for h in result.history) / len(result.history), 1),
            "seconds_per_epoch_per_500_images": round(result.seconds_per_epoch * 500 / train_images, 1),
            "total_seconds_incl_decode_and_export": round(total, 1),
            "freeze_until": result.config.freeze_until, "image_size": result.config.image_size,
            "history": [{k: h.get(k) for k in ("epoch", "train_loss", "val_loss", "train_seconds", "train_cpu_seconds")}
                        for h in result.history],
        }
        score(method, str(result.model_dir.resolve()), extra)

    if not args.json:
        print(f"\nUKBench-1000 split by group; trained on groups 0-124 (500 images), {os.cpu_count()} cores\n")
        print("| model | epochs | s/epoch (500 img) | eval ns_score | eval map | eval recall@1 "
              "| train-half ns_score | train-half map |")
        print("|---|---|---|---|---|---|---|---|")
        for name, r in results.items():
            epochs = f"{r['epochs_run']} (best {r['best_epoch']})" if "epochs_run" in r else "-"
            per_epoch = f"{r['seconds_per_epoch_per_500_images']}" if "epochs_run" in r else "-"
            label = name.replace("base", BASE) if name.startswith("base") else f"{BASE} + {name}"
            print(f"| {label} | {epochs} | {per_epoch} | {r['eval']['ns_score']:.4f} | {r['eval']['map']:.4f} "
                  f"| {r['eval']['recall@1']:.4f} | {r['train_half']['ns_score']:.4f} | {r['train_half']['map']:.4f} |")
        print()
    print(json.dumps({"benchmark": "finetune", "cores": os.cpu_count(), "base": BASE, "results": results}))
    return 0


def time_epochs(args: argparse.Namespace, train_dir: Path) -> int:
    """Seconds for one training epoch over exactly 500 images, per method (load average alongside:
    on a shared machine other processes' load inflates it)."""
    timings = {}
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        config = TrainConfig(method=method, base=BASE, epochs=1, batch_size=args.batch_size, lr=args.lr,
                             freeze_until=args.freeze_until, image_size=args.image_size, val_split=0.0,
                             seed=args.seed)
        load_before = os.getloadavg()[0]
        result = train([str(train_dir / "images")], args.work / f"timing-{method}", config, progress=not args.json)
        h = result.history[0]
        timings[method] = {"images": h["images"], "train_seconds": h["train_seconds"],
                           "train_cpu_seconds": h["train_cpu_seconds"], "threads": torch.get_num_threads(),
                           "images_per_second": round(h["images"] / h["train_seconds"], 2),
                           "freeze_until": result.config.freeze_until, "image_size": result.config.image_size,
                           "batch_size": args.batch_size, "load_average_before_after": [load_before, os.getloadavg()[0]]}
    if not args.json:
        print("\n| method | images | s/epoch (wall) | CPU s/epoch | images/s | load avg (1 min) before/after |\n"
              "|---|---|---|---|---|---|")
        for method, t in timings.items():
            print(f"| {method} | {t['images']} | {t['train_seconds']:.1f} | {t['train_cpu_seconds']:.1f} "
                  f"| {t['images_per_second']} "
                  f"| {t['load_average_before_after'][0]:.1f} / {t['load_average_before_after'][1]:.1f} |")
    print(json.dumps({"benchmark": "finetune-timing", "cores": os.cpu_count(), "base": BASE, "timings": timings}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
