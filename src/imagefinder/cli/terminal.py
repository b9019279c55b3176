"""Everything the CLI prints goes through here, so data can never drive the terminal.

Sources, captions, URLs and failure reasons come from files and servers nobody vetted: a CSV
cell holding ``\\x1b[2J\\x1b[31mFAKE`` would clear the screen and paint fake text if printed raw,
an OSC sequence can retitle the window or write the clipboard, a NUL or a lone surrogate can cut
or crash the output. `escape` writes every C0/C1 control, DEL, the bidirectional overrides
(which reorder what is shown) and lone surrogates as visible ``\\xNN`` / ``\\uNNNN`` text; each
`say` argument is one line (a newline inside the data is escaped too). JSON output stays JSON:
what is escaped can only stand inside a JSON string, where ``\\uNNNN`` means the same character.
Log records (`EscapingFormatter`) and argparse's messages (`ArgumentParser`) are escaped alike.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

__all__ = ["ArgumentParser", "EscapingFormatter", "escape", "say", "say_json", "say_json_text"]

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: object) -> str:
    """`text` as str with every character that could act on a terminal written out visibly."""
    return _UNSAFE.sub(_shown, str(text))


def say(*lines: object, err: bool = False) -> None:
    """Print each argument as one escaped line (stdout, or stderr with err=True)."""
    stream = sys.stderr if err else sys.stdout
    for line in lines:
        print(escape(line), file=stream)


def say_json(value: Any) -> None:
    """Print `value` as one line of JSON, every control character escaped (still valid JSON)."""
    say_json_text(json.dumps(value))


def say_json_text(text: str) -> None:
    """Print JSON already serialised (pydantic's, which leaves C1 controls and bidi overrides raw), escaped.

    Such characters can only stand inside JSON strings, where ``\\uNNNN`` means the same.
    """
    print(_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text), flush=True)


class EscapingFormatter(logging.Formatter):
    """Log lines with their message escaped (a traceback, for a bug, is left as it is)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, escaping what it prints: its errors quote the user's arguments back."""

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        super()._print_message("\n".join(escape(line) for line in message.split("\n")), file)
