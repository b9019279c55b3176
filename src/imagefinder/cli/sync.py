"""`imagefinder sync`: re-scan the index's folders; add new files, re-embed changed ones, remove deleted ones."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import EXIT_EMPTY, EXIT_OK, Command, common, progress
from .terminal import say, say_json

SYNC = ("Bring the index in line with the folders it was built from (recorded in its manifest), plus any FOLDER "
        "given (recorded from then on): new images are embedded and added, changed ones (other contents than "
        "indexed) re-embedded, deleted ones removed, all in one update. A recorded folder that is missing "
        "stops the sync without changing anything (an unmounted disk must not empty the index).")


def _sync_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", type=Path, metavar="DIR", help="index directory made by `imagefinder index`")
    p.add_argument("folders", nargs="*", metavar="FOLDER", help="folders to scan besides the recorded ones")
    p.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    common(p)


def cmd_sync(args: argparse.Namespace) -> int:
    from ..sync import sync_index

    report = sync_index(args.index, args.folders, progress=progress(args), dry_run=args.dry_run)
    if args.json:
        say_json({**report.to_dict(), "dry_run": args.dry_run})
    else:
        verb = "would be " if args.dry_run else ""
        say(f"{', '.join(report.folders)}: {report.added} {verb}added, {report.changed} {verb}re-embedded, "
              f"{report.removed} {verb}removed, {report.unchanged} unchanged"
              + (f", {report.failed} failed" if report.failed else "") + f" ({report.seconds:.1f} s)")
        for failure in report.failures:
            say(f"  failed: {failure['source']}: {failure['error']}")
    return EXIT_EMPTY if report.failed and not report.added else EXIT_OK


SYNC_COMMAND = Command("sync", "re-scan the index's folders: add new, re-embed changed, remove deleted images",
                       _sync_options, cmd_sync, description=SYNC)
