"""Metadata filters: which indexed images a search or a listing may return.

    Filter.parse(["year>=2000", "city=Paris"], source_prefix="/photos/2021/")

A condition is `COLUMN OP VALUE` on a metadata column (the extra CSV columns recorded with
each image), OP one of = != < <= > >=. `=` and `!=` compare text exactly; the range operators
compare numbers when VALUE is a number (rows whose value is not a number never match) and
text otherwise (so ISO dates compare as dates). Conditions all hold at once (AND);
`source_prefix` keeps images whose source (path or URL, as indexed) starts with it.

The id table turns a Filter into SQL (items.py owns every statement); the vector search then
ranks only the matching ids (a FAISS id selector, or a Milvus filter expression), so a filter
never leaves a search short of k results while other matching images exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .layout import IndexError_

OPERATORS = ("<=", ">=", "!=", "=", "<", ">")  # longest first: "<=" is not "<" then "=VALUE"
_CONDITION = re.compile(r"^\s*([^<>=!]+?)\s*(<=|>=|!=|==|=|<|>)\s*(.*?)\s*$", re.DOTALL)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
MAX_CONDITIONS = 20
MAX_TEXT = 500


class FilterError(IndexError_):
    """A filter that cannot be used; the message quotes it and says what is expected."""


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: str

    @property
    def number(self) -> float | None:
        """The value as a number for range comparisons, None when it compares as text."""
        if self.op in ("=", "!=") or not _NUMBER.match(self.value):
            return None
        return float(self.value)

    @classmethod
    def parse(cls, text: str) -> Condition:
        match = _CONDITION.match(text) if len(text) <= MAX_TEXT else None
        if not match:
            raise FilterError(f"filter {text[:80]!r}: expected COLUMN OP VALUE with OP one of "
                              f"{' '.join(OPERATORS)}, e.g. 'year>=2000' or 'city=Paris'")
        column, op, value = match.groups()
        if any(ch in column for ch in '"\\') or not column.isprintable():
            raise FilterError(f"filter {text[:80]!r}: a column name cannot contain quotes or backslashes")
        return cls(column, "=" if op == "==" else op, _unquote(value))


def _unquote(value: str) -> str:
    """'New York' or "New York" -> New York (quotes let a value keep its spaces or start with =)."""
    if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


@dataclass(frozen=True)
class Filter:
    conditions: tuple[Condition, ...] = ()
    source_prefix: str | None = None

    @property
    def empty(self) -> bool:
        return not self.conditions and not self.source_prefix

    @classmethod
    def parse(cls, where: list[str] | tuple[str, ...] | None = None, source_prefix: str | None = None) -> Filter:
        where = [w for w in (where or []) if w.strip()]
        if len(where) > MAX_CONDITIONS:
            raise FilterError(f"at most {MAX_CONDITIONS} filter conditions, got {len(where)}")
        if source_prefix is not None and len(source_prefix) > 4 * MAX_TEXT:
            raise FilterError("the source prefix is too long")
        return cls(tuple(Condition.parse(w) for w in where), source_prefix or None)

    def describe(self) -> str:
        parts = [f"{c.column}{c.op}{c.value}" for c in self.conditions]
        if self.source_prefix:
            parts.append(f"source starts with {self.source_prefix}")
        return ", ".join(parts) or "none"
