"""`imagefinder index`, `add`, `remove`, `rebuild` and `demo`: write or change an index."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import (
    EXIT_EMPTY,
    EXIT_OK,
    Command,
    common,
    download_config,
    download_options,
    index_config,
    model_options,
    progress,
    runner,
    scale_options,
)
from .report import print_build, print_drift
from .terminal import say, say_json

INDEX = ("Build an index directory from one or more sources. A failed image never stops the run: it is recorded "
         "with its reason (see `imagefinder info`). An interrupted build (Ctrl-C, crash, kill) resumes when re-run: "
         "downloads are cached and embedded images journalled beside --out, so only the rest is done again.")


def _index_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="folder, CSV (column url/image_url/image or the first), .txt list, image file or URL")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="index directory to write (replaced atomically)")
    model_options(p)
    p.add_argument("--batch-size", type=int, default=32, help="images per model call (default 32)")
    p.add_argument("--workers", type=int, help="download/decode threads (default 2x cores, at least 4)")
    p.add_argument("--json", action="store_true", help="print the build summary as one JSON object")
    download_options(p)
    p.add_argument("--local-features", action="store_true",
                   help="also extract the local features that `search --rerank` uses (else: on first use)")
    scale_options(p)
    common(p)


def cmd_index(args: argparse.Namespace) -> int:
    from ..pipeline import build_index

    config = index_config(args)
    config.target_recall, config.rerank, config.store = args.target_recall, args.refine, args.store
    report = build_index(args.sources, args.out, config, batch_size=args.batch_size, workers=args.workers,
                         progress=progress(args), download=download_config(args), runner=runner(args))
    if args.local_features and report.indexed:
        from ..finder import ImageFinder

        finder = ImageFinder(report.path)
        finder.reranker().precompute(finder.store, progress=progress(args))
    return print_build(report, args.json, verb="indexed")


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", type=Path, metavar="DIR")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="as for `imagefinder index`")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    download_options(p)
    common(p)


def cmd_add(args: argparse.Namespace) -> int:
    from ..pipeline import add_to_index

    report = add_to_index(args.index, args.sources, progress=progress(args), download=download_config(args))
    return print_build(report, args.json, verb="added")


def _remove_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", type=Path, metavar="DIR")
    p.add_argument("ids", nargs="+", type=int, metavar="ID", help="ids as shown by `imagefinder search`")
    common(p)


def cmd_remove(args: argparse.Namespace) -> int:
    from ..pipeline import remove_from_index

    removed = remove_from_index(args.index, args.ids)
    say(f"removed {removed} of {len(args.ids)} ids from {args.index}")
    return EXIT_OK if removed else EXIT_EMPTY


REBUILD = ("Retrain the index of DIR from its stored raw features as a new generation (ids stay; the index type is "
           "re-chosen for today's size unless --index is given). --check only reports the drift signals: IVF list "
           "imbalance, PCA residual and centroid distance of images added since training, growth.")


def _rebuild_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", type=Path, metavar="DIR")
    p.add_argument("--check", action="store_true", help="report drift and whether a rebuild is recommended")
    p.add_argument("--index", dest="spec", metavar="SPEC", help="FAISS factory string to rebuild with")
    p.add_argument("--target-recall", type=float, metavar="R", help="tuning target (default: as built)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    common(p)


def cmd_rebuild(args: argparse.Namespace) -> int:
    from ..index import IndexConfig, read_manifest
    from ..pipeline import rebuild_index

    config = None
    if not args.check and (args.spec or args.target_recall):
        config = IndexConfig.from_manifest(read_manifest(args.index))
        config.spec = args.spec or config.spec
        config.target_recall = args.target_recall or config.target_recall
    result = rebuild_index(args.index, config, check=args.check)
    if args.json:
        say_json(result)
    elif args.check:
        say(f"index      {args.index}  ({result['index_spec']}, trained {result['trained_at']})")
        print_drift(result)
        if not result["rebuild_recommended"]:
            say("no rebuild needed")
    else:
        t = result["tuning"]
        tuned = f", {t['param']}={t['value']} recall@10={t['recall_at_10']:.3f}" if t else ""
        say(f"rebuilt {args.index}: {result['previous']['index_spec']} -> {result['index_spec']} over "
              f"{result['indexed']} images in {result['seconds']:.1f} s (generation {result['generation']}{tuned})")
    return EXIT_OK


DEMO = ("Writes a small sample collection (public-domain images and edited copies) to DIR/images, indexes it into "
        "DIR/index and searches with a held-out copy.")


def _demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", type=Path, default=Path("sample"), help="where to put the sample (default ./sample)")
    p.add_argument("-k", type=int, default=5)
    common(p)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..finder import ImageFinder
    from ..pipeline import build_index
    from ..sample import write_sample

    images, query = write_sample(args.dir / "images")
    report = build_index([str(images)], args.dir / "index", progress=progress(args))
    say(f"indexed {report.indexed} sample images into {report.path}")
    say(f"query: {query}")
    for r in ImageFinder(report.path).search(query, k=args.k):
        say(f"{r.rank:>4}  {r.score:.4f}  {Path(r.source).name}")
    say(f"next: imagefinder search {report.path} YOUR_IMAGE.jpg")
    return EXIT_OK


INDEX_COMMAND = Command("index", "build an index from folders, CSVs, list files, URLs", _index_options, cmd_index,
                        description=INDEX)
ADD_COMMAND = Command("add", "add images to an existing index (no rebuild)", _add_options, cmd_add,
                      description="Embed new images with the index's model and add them in place: the PCA and "
                                  "clusters are reused, ids are stable, sources already indexed are skipped.")
REMOVE_COMMAND = Command("remove", "remove images from an index by id", _remove_options, cmd_remove)
REBUILD_COMMAND = Command("rebuild", "retrain PCA / clusters from the stored features (no re-embedding)",
                          _rebuild_options, cmd_rebuild, description=REBUILD)
DEMO_COMMAND = Command("demo", "build the built-in sample index and run a search on it", _demo_options, cmd_demo,
                       description=DEMO)
