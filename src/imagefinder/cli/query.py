"""`imagefinder search` and `duplicates`: ask an index, print the answer."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .options import (
    EXIT_EMPTY,
    EXIT_INPUT,
    EXIT_OK,
    Command,
    UsageError,
    check_query_options,
    common,
    given_query_options,
    metric_option,
    preset_option,
    progress,
    query_options,
)
from .terminal import say, say_json, say_json_text

if TYPE_CHECKING:
    from ..finder import ImageFinder, Result


def _search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", type=Path, metavar="DIR", help="index directory made by `imagefinder index`")
    p.add_argument("query", nargs="+", metavar="QUERY",
                   help="image path, http(s) URL, or a folder (each image in it, recursively); several queries "
                        "give one answer each")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    metric_option(p, "cosine similarity (default), euclidean distance on raw features, vote (rank fusion), or "
                     "fusion (weighted rank fusion of ensemble members)")
    preset_option(p, "its query-time parts: query expansion, verification depth and budget; default: the preset "
                     "the index was built with")
    query_options(p)
    p.add_argument("--box", metavar="X0,Y0,X1,Y1",
                   help="search with this region of the query image only (pixels: left, top, right, bottom; with "
                        "several queries, the same box of each)")
    p.add_argument("--where", action="append", metavar="COND",
                   help="only images whose metadata (the CSV's extra columns) match: COLUMN OP VALUE with OP one of "
                        "= != < <= > >= (numbers compare as numbers), e.g. --where 'year>=2000' --where city=Paris; "
                        "applied inside the search, so k results come whenever k images match")
    p.add_argument("--source-prefix", metavar="PREFIX",
                   help="only images whose source (path or URL as indexed) starts with PREFIX")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per query, one per line: the API's SearchResponse (see /docs), "
                        '{"query", "k", "metric", "results": [{"rank", "id", "score", "source", ...}]}; '
                        'a query that fails prints {"query", "status", "error"} instead. Each result has "match": '
                        '"strong" (the same object or scene, calibrated per model) or "weak"')
    common(p)


def cmd_search(args: argparse.Namespace) -> int:
    """Each query in turn; one that fails (not an image, unreachable) is reported and the others still run.

    Exit 2 if any query failed, else 1 if no query found anything, else 0."""
    from ..finder import ImageFinder
    from ..index.filters import Filter
    from ..ingest.decode import ImageError
    from ..region import BoxError, parse_box

    if args.k < 1:
        raise UsageError(f"-k must be at least 1, got {args.k}")
    check_query_options(args)
    where = Filter.parse(args.where, args.source_prefix)
    box = parse_box(args.box) if args.box is not None else None
    given = given_query_options(args)
    queries = expand_queries(args.query)
    finder = ImageFinder(args.index)
    failed = found = 0
    for n, query in enumerate(queries):
        start = time.perf_counter()
        try:
            results = finder.search(query, k=args.k, metric=args.metric, where=where, box=box, preset=args.preset,
                                    **given)
        except (ImageError, BoxError) as exc:
            failed += 1
            say(f"imagefinder: error: {exc}", err=True)
            if args.json:
                say_json_text(json_failure(query, str(exc)))
            continue
        found += bool(results)
        if args.json:
            say_json_text(json_answer(args, finder, query, results, time.perf_counter() - start))
        else:
            print_results(args.metric, results, title=query if len(queries) > 1 else None, first=n == 0)
    return EXIT_INPUT if failed else EXIT_OK if found else EXIT_EMPTY


def expand_queries(queries: list[str]) -> list[str]:
    """Folders become the images in them (sorted, recursively); paths and URLs stay as given."""
    from ..ingest.sources import is_url, walk_images

    out: list[str] = []
    for query in queries:
        if not is_url(query) and Path(query).is_dir():
            images = [str(p) for p in walk_images(Path(query))]
            if not images:
                raise UsageError(f"{query}: a folder without images")
            out += images
        else:
            out.append(query)
    return out


def _query_info(query: str) -> dict:
    from ..ingest.sources import is_url

    return {"type": "url", "url": query} if is_url(query) else {"type": "file", "path": query,
                                                                  "filename": Path(query).name}


def json_answer(args: argparse.Namespace, finder: ImageFinder, query: str, results: list[Result],
                seconds: float) -> str:
    """The API's SearchResponse for one query (one schema for both), without server URLs."""
    from ..api.schemas import QueryInfo, SearchResponse, SearchResult

    return SearchResponse(
        query=QueryInfo(**_query_info(query)), k=args.k, metric=args.metric, took_ms=round(seconds * 1000, 2),
        indexed=finder.store.ntotal, where=list(args.where or []), source_prefix=args.source_prefix,
        results=[SearchResult(rank=r.rank, id=r.id, score=r.score, source=r.source, width=r.width, height=r.height,
                              cluster=r.cluster, meta=r.meta or {}, match=r.match) for r in results],
    ).model_dump_json()


def json_failure(query: str, error: str) -> str:
    from ..api.schemas import QueryInfo, SearchFailure

    return SearchFailure(query=QueryInfo(**_query_info(query)), status=422, error=error).model_dump_json()


def print_results(metric: str, results: list[Result], title: str | None = None, first: bool = True) -> None:
    if title is not None:
        if not first:
            say("")
        say(title)
    label = "distance" if metric == "euclidean" else "score"
    say(f"{'rank':>4}  {label:>8}  {'match':>6}  {'id':>6}  source")
    for r in results:
        say(f"{r.rank:>4}  {r.score:8.4f}  {r.match or '-':>6}  {r.id:>6}  {r.source}")
    if results and all(r.match == "weak" for r in results):
        say("no close match: every result is only weakly similar (see README 'Retrieval quality')")


DUPLICATES = ("Group the images of an index (or of a folder, indexed first into a temporary directory with --model) "
              "in three tiers: exact (same file content), near (resized / re-encoded / cropped / turned / mirrored / "
              "captioned copies: pixel check, "
              "or cosine >= --threshold) and similar (same object or scene: cosine >= --similar). Pairs come from "
              "each image's nearest neighbours in the index, never all pairs.")


def _duplicates_options(p: argparse.ArgumentParser) -> None:
    from ..models import DEFAULT_MODEL

    p.add_argument("path", type=Path, metavar="DIR", help="index directory, or a folder of images")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="near-duplicate cosine threshold; giving it turns off the default pixel check "
                        "(aligned thumbnails, mirrored too, tile correlation >= a calibrated cut) that decides "
                        "near-duplicates among similar pairs")
    p.add_argument("--similar", type=float, metavar="T", help="similar-image cosine threshold (default: calibrated)")
    p.add_argument("--neighbours", type=int, default=20, metavar="K", help="neighbours checked per image (default 20)")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="M", help="model for indexing a folder")
    p.add_argument("--json", action="store_true", help="print one JSON object: thresholds and groups per tier")
    common(p)


def cmd_duplicates(args: argparse.Namespace) -> int:
    import tempfile

    from ..duplicates import TIERS, duplicates_of_path

    with tempfile.TemporaryDirectory(prefix="imagefinder-dups-") as tmp:
        path = args.path
        if not (path / "manifest.json").is_file():
            if not path.is_dir():
                raise UsageError(f"{path}: not an index directory or a folder of images")
            from ..index import IndexConfig
            from ..pipeline import build_index

            path = build_index([str(path)], Path(tmp) / "index", IndexConfig(model=args.model),
                               progress=progress(args)).path
        result = duplicates_of_path(path, near=args.threshold, similar=args.similar, neighbours=args.neighbours)
    if args.json:
        say_json({**result, **{t: [g.to_dict() for g in result[t]] for t in TIERS}})
        return EXIT_OK
    th = result["thresholds"]
    say(f"near-duplicates: {th['near_by']}; similar: cosine >= {th['similar']:.3f} ({result['model']})")
    for tier in TIERS:
        groups = result[tier]
        say("", f"{tier}: {len(groups)} group(s)")
        for g in groups:
            say(f"  [{g.score:.3f}] " + "  ".join(g.sources))  # lowest cosine inside the group
    return EXIT_OK


SEARCH_COMMAND = Command("search", "find the images most similar to query images", _search_options, cmd_search,
                         description="Rank the indexed images by similarity to each QUERY (a file path, a folder of "
                                     "images or an http(s) URL).")
DUPLICATES_COMMAND = Command("duplicates", "list exact duplicates, near-duplicates and similar images",
                             _duplicates_options, cmd_duplicates, description=DUPLICATES)
