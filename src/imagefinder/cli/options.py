"""Options shared by several commands, and turning them into library arguments.

Nothing heavy is imported at module level: the option functions import what their help text
names (backbones, metrics) when a parser for that command is built, the converters when a
command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ImageFinderError

if TYPE_CHECKING:
    from ..index import IndexConfig
    from ..ingest.download import DownloadConfig
    from ..runners.ray import RayRunner

EXIT_OK, EXIT_EMPTY, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(ImageFinderError, ValueError):
    """Options that do not go together (or out of range); the message says which."""


@dataclass(frozen=True)
class Command:
    """One subcommand: its parser's texts, the function adding its options, and what runs it."""

    name: str
    help: str
    options: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None
    raw_description: bool = False  # keep the description's line breaks (it is laid out by hand)
    add_help: bool = True


class Renamed(argparse.Action):
    """An option that was renamed: giving it is a usage error naming the new spelling."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, advice: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.advice = advice

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error(f"{option_string} {self.advice}")


def common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (HTTP requests too)")


def preset_option(p: argparse.ArgumentParser, what: str) -> None:
    from ..presets import DEFAULT_PRESET, PRESETS

    p.add_argument("--preset", choices=list(PRESETS), metavar="NAME",
                   help=f"a named bundle of choices ({what}); one of: "
                        + "; ".join(f"{n}: {x.summary}" for n, x in PRESETS.items())
                        + f". Default: {DEFAULT_PRESET} (see README 'Retrieval quality')")


def model_options(p: argparse.ArgumentParser) -> None:
    from ..models import BACKBONES, DEFAULT_MODEL, PRECISIONS

    preset_option(p, "backbone, input size, pooling, PCA, query expansion, verification depth; recorded in the "
                     "manifest. Not combinable with --model/--pca/--whiten/--index")
    p.add_argument("--model", metavar="M",
                   help=f"backbone, or an ensemble 'a+b' (default {DEFAULT_MODEL}); one of: {', '.join(BACKBONES)}. "
                        "Pooling and input options after '@', ensemble weights after ':', e.g. "
                        "efficientnet-lite2@gem2,long512 or efficientnet-lite0@gem3:1+dinov2-s:0.5 (avg, max, "
                        "gem/gemP, rmac, ms/msA_B, powA; longN = aspect ratio kept, long side N px; uptoN = the same but "
                        "never enlarged; squareN = squashed to N x N; recorded in the manifest and used for every "
                        "query)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="fp32, or int8: statically quantised graphs, calibrated on the built-in sample photos "
                        "(faster on CPUs with int8 dot products; cached like the fp32 export). Default: per "
                        "backbone, int8 where its measured retrieval loss is negligible (README 'Measured'). "
                        "Recorded in the manifest: queries use the index's precision")
    p.add_argument("--pca", type=int, metavar="D", help="reduce features to D dims with PCA before indexing")
    p.add_argument("--whiten", action="store_true", help="whiten the PCA (needs --pca)")
    p.add_argument("--clusters", type=int, metavar="K",
                   help="K-Means clusters = IVF lists (default: exact search below 50k images, ~4*sqrt(n) above)")
    p.add_argument("--index", dest="spec", metavar="SPEC",
                   help='FAISS factory string overriding the above, e.g. "PCAW256,L2norm,IVF1024,Flat"')
    p.add_argument("--nprobe", type=int, help="IVF clusters searched per query (default ~nlist/32, at least 16)")


def index_config(args: argparse.Namespace) -> IndexConfig:
    """The build's choices: a preset's (the named one, or the default when no model option is given)
    or the explicit --model/--pca/--whiten/--index."""
    from dataclasses import replace

    from ..index import IndexConfig
    from ..models import DEFAULT_MODEL
    from ..presets import DEFAULT_PRESET, get_preset

    explicit = [o for o, v in (("--model", args.model), ("--pca", args.pca), ("--whiten", args.whiten),
                               ("--index", args.spec)) if v]
    if args.preset and explicit:
        raise UsageError(f"--preset {args.preset} chooses the model and PCA itself: drop {' '.join(explicit)}, "
                         "or drop --preset and give the options")
    if not explicit:
        config = IndexConfig.from_preset(get_preset(args.preset or DEFAULT_PRESET))
        return replace(config, clusters=args.clusters, nprobe=args.nprobe, precision=args.precision or config.precision)
    if args.whiten and not args.pca and not args.spec:
        raise UsageError("--whiten needs --pca D (whitening is part of the PCA)")
    return IndexConfig(model=args.model or DEFAULT_MODEL, precision=args.precision, pca=args.pca, whiten=args.whiten,
                       clusters=args.clusters, spec=args.spec, nprobe=args.nprobe)


def download_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--public-urls-only", action="store_true",
                   help="refuse URLs (and redirects) to loopback, private, link-local or reserved addresses: for "
                        "lists from untrusted sources (default: allowed, e.g. images on your own network)")
    p.add_argument("--fetch-timeout", type=float, metavar="S",
                   help="seconds a URL may stay silent (default 20); a whole fetch, retries included, gets 3x that, "
                        "so no URL holds a download thread longer")


def download_config(args: argparse.Namespace) -> DownloadConfig | None:
    if not args.public_urls_only and args.fetch_timeout is None:
        return None
    from dataclasses import replace

    from ..pipeline import default_download_config

    config = default_download_config()
    if args.fetch_timeout is not None:
        if args.fetch_timeout <= 0:
            raise UsageError(f"--fetch-timeout must be more than 0 seconds, got {args.fetch_timeout:g}")
        config = replace(config, timeout=args.fetch_timeout)
    return replace(config, allow_private=False) if args.public_urls_only else config


def scale_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-recall", type=float, default=0.95, metavar="R",
                   help="recall@10 vs exact search that nprobe/efSearch are tuned for above 50k images (default 0.95)")
    p.add_argument("--refine", type=int, metavar="N",
                   help="re-score the top N ANN candidates exactly from the stored features (default: auto, on for "
                        "compressed indexes; 0 = off)")
    p.add_argument("--rerank", action=Renamed,
                   advice="was renamed --refine N for `index` (exact re-scoring of the ANN candidates); "
                          "`search --rerank` is spatial verification")
    p.add_argument("--store", metavar="URI",
                   help="keep the vectors in Milvus instead of the FAISS file: ./vectors.db (Milvus Lite) or "
                        "milvus://host:19530")
    p.add_argument("--ray", action="store_true", help="embed with a Ray Data pipeline on a local Ray instance")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="embed on a Ray cluster (ray://head:10001, or auto on a node of it); implies --ray")


def runner(args: argparse.Namespace) -> RayRunner | None:
    if not (args.ray or args.ray_address):
        return None
    from ..runners.ray import RayRunner

    return RayRunner(address=args.ray_address)


def query_options(p: argparse.ArgumentParser) -> None:
    """Query-time options; None (not given) = the preset's value (see `presets`), else off."""
    p.add_argument("--qe", type=int, metavar="N",
                   help="query expansion: re-search with the query averaged with its top N results (default: the "
                        "preset's; 0: off)")
    p.add_argument("--qe-alpha", type=float, metavar="A",
                   help="alpha-QE weight exponent: results weigh similarity^A (0: plain average; default 3)")
    p.add_argument("--rerank", type=int, metavar="N",
                   help="spatially verify the top N results with local features + RANSAC (default: the preset's; "
                        "0: off)")
    p.add_argument("--rerank-budget", type=float, metavar="S",
                   help="seconds of re-ranking per query at most (default: the preset's, else 2)")
    p.add_argument("--vqe", type=int, metavar="N",
                   help="verified query expansion (needs --rerank): search again with the query averaged with "
                        "its first N spatially verified results, those kept on top (default: the preset's; 0: off)")


def metric_option(p: argparse.ArgumentParser, help: str) -> None:
    from ..search import METRICS

    p.add_argument("--metric", choices=METRICS, default="cosine", help=help)


def check_query_options(args: argparse.Namespace) -> None:
    if (args.qe or 0) < 0 or (args.rerank or 0) < 0 or (args.vqe or 0) < 0:
        raise UsageError("--qe, --rerank and --vqe must be >= 0")
    if args.vqe and args.rerank == 0:
        raise UsageError("--vqe expands with spatially verified results: it needs --rerank N (N > 0)")
    from ..presets import NO_RERANK_METRICS, QE_METRICS

    if args.qe and args.metric not in QE_METRICS:
        raise UsageError(f"--qe works with --metric cosine or fusion, not {args.metric}")
    if args.rerank and args.metric in NO_RERANK_METRICS:
        raise UsageError("--rerank adds to similarity scores: use --metric cosine, vote or fusion")


def given_query_options(args: argparse.Namespace) -> dict[str, Any]:
    """The query-time options as the flags give them; not given: None (FROM_PRESET for the budget)."""
    from ..presets import FROM_PRESET

    budget = FROM_PRESET if args.rerank_budget is None else args.rerank_budget  # the flag has no "no budget" value
    return {"qe": args.qe, "qe_alpha": args.qe_alpha, "rerank": args.rerank, "rerank_budget": budget, "vqe": args.vqe}


def resolved_query_options(args: argparse.Namespace, preset: str | None) -> dict[str, Any]:
    """The query-time options as given, the rest from `preset` (a name) - for commands without an index yet."""
    from ..presets import get_preset, resolve_query_options

    return resolve_query_options(get_preset(preset) if preset else None, args.metric, given_query_options(args))


def progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()
