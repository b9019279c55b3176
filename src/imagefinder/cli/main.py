"""`imagefinder`: the parser, and the mapping of what happened to exit codes.

Exit codes: 0 success; 1 the job ran but produced nothing usable (e.g. every image failed);
2 bad usage or bad input (missing file, unknown model, not an index) - the message says which;
130 interrupted. Only errors ImageFinder raises on purpose (`ImageFinderError`) are bad input:
anything else (a KeyError, a TypeError) is a bug and surfaces as one, with its traceback.

A subcommand's options are added only to the parser of the command being run: their help
texts name backbones and metrics, which live in modules that load numpy, FAISS and ONNX, and
`imagefinder --help` (or `imagefinder search`) should not pay for what it does not use.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..errors import ImageFinderError
from .build import ADD_COMMAND, DEMO_COMMAND, INDEX_COMMAND, REBUILD_COMMAND, REMOVE_COMMAND
from .options import EXIT_INPUT, EXIT_INTERRUPTED, Command
from .query import DUPLICATES_COMMAND, SEARCH_COMMAND
from .report import EVALUATE_COMMAND, INFO_COMMAND
from .sync import SYNC_COMMAND
from .terminal import ArgumentParser, EscapingFormatter, say
from .train import TRAIN_COMMAND

EPILOG = """examples:
  imagefinder index photos/ --out my-index          index a folder (recursive)
  imagefinder index urls.csv --out my-index         a CSV with a url column
  imagefinder search my-index query.jpg -k 5        the 5 most similar images
  imagefinder search my-index https://host/q.jpg --json
  imagefinder search my-index q1.jpg q2.jpg queries/ --where 'year>=2000' --json   one JSON line per query
  imagefinder sync my-index                         pick up new, changed and deleted files
  imagefinder evaluate ../shared/data/ukbench1000 --json
  imagefinder evaluate DATA --model efficientnet-lite0@gem3,ms --qe 2 --rerank 30 --latency 50
  imagefinder duplicates my-index --json            exact / near-duplicate / similar groups
  imagefinder info my-index
"""


def _serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("serve_args", nargs=argparse.REMAINDER)  # listed in --help; main() dispatches it


SERVE_COMMAND = Command("serve", "start the REST API (:8000) and the web page (:5000) together", _serve_options,
                        lambda args: EXIT_INPUT, description="See `imagefinder serve --help`.", add_help=False)
# In the order `imagefinder --help` lists them.
COMMANDS = (INDEX_COMMAND, SEARCH_COMMAND, EVALUATE_COMMAND, INFO_COMMAND, DUPLICATES_COMMAND, ADD_COMMAND,
            SYNC_COMMAND, REMOVE_COMMAND, REBUILD_COMMAND, TRAIN_COMMAND, DEMO_COMMAND, SERVE_COMMAND)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # its own parser (imagefinder.serve): pass every option through
        from ..serve import main as serve_main

        return serve_main(argv[1:])
    args = build_parser(_command_in(argv)).parse_args(argv)
    handler = logging.StreamHandler()  # stderr, every message escaped (it may quote a CSV cell or a URL)
    handler.setFormatter(EscapingFormatter("%(levelname)s %(name)s: %(message)s"))
    # Our own progress at INFO; other libraries only warn unless --verbose (onnxruntime's quantiser
    # logs ~80 INFO lines on the root logger per model it quantises).
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    logging.getLogger("imagefinder").setLevel(logging.WARNING if args.quiet else logging.INFO)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; an ImageFinderError is bad input (exit 2), any other exception propagates."""
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        say("imagefinder: interrupted; the index was left as it was (re-run the same command to resume)", err=True)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not isinstance(exc, ImageFinderError):
            raise  # anything else is a bug: its traceback is what a report needs
        say(f"imagefinder: error: {exc}", err=True)
        return EXIT_INPUT
    return code


def _command_in(argv: list[str]) -> str | None:
    """The subcommand argv names: its first word (the top level takes no option with a value)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand, with the options of `command` only (see the module docstring)."""
    parser = ArgumentParser(
        prog="imagefinder",
        description="Find images that look like a query image: index a collection once, then search it.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imagefinder {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in COMMANDS:
        formatter = argparse.RawDescriptionHelpFormatter if c.raw_description else argparse.HelpFormatter
        p = sub.add_parser(c.name, help=c.help, description=c.description, formatter_class=formatter,
                           add_help=c.add_help)
        if c.name == command:
            c.options(p)
            p.set_defaults(func=c.run)
    return parser


if __name__ == "__main__":
    sys.exit(main())
