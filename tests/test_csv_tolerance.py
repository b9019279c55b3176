"""Tolerant CSV and list files: one bad row or cell is one failed item, named; the run goes on.

The hostile CSV holds, between good rows: a latin-1 byte in a caption (the file is otherwise
UTF-8), a field over csv's 131072-byte limit, a NUL in a path cell, and garbage after a
quoted field. `imagefinder index` must finish (exit 0) with every good image indexed and
`imagefinder info --failures 0` naming every bad row by line. UTF-16 and latin-1 files are
read with a warning. Before: any of these rejected the whole file (exit 2, nothing indexed).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from conftest import ukbench_image

from imagefinder.ingest.sources import expand_sources

MAX_FIELD = 131072  # csv.field_size_limit() by default

GOOD = 4


@pytest.fixture()
def photos(ukbench_dir: Path, tmp_path: Path) -> list[Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    out = []
    for n in range(GOOD):
        out.append(folder / f"p{n}.jpg")
        shutil.copyfile(ukbench_image(ukbench_dir, n), out[-1])
    return out


def hostile_csv(photos: list[Path], path: Path) -> dict[int, str]:
    """Write it; returns line -> the reason that line's failure must give."""
    p = [str(x) for x in photos]
    lines = [
        b"url,caption,id",
        f"{p[0]},caf\u00e9 au lait,1".encode(),  # real UTF-8: the file is UTF-8
        f"{p[1]},caf".encode() + b"\xe9 cr\xe8me,2",  # latin-1 bytes in a UTF-8 file
        f"{p[1]},".encode() + b"x" * (MAX_FIELD + 10) + b",3",  # one field over csv's limit
        b"photos/p\x002.jpg,nul in the path,4",
        f"{p[2]},ok,5".encode(),
        f"{p[3]},\x1b[2J\x1b[31mFAKE,6".encode(),  # terminal escapes are data, kept (and escaped on print)
        f"{p[1]},the same image on a good row,7".encode(),
    ]
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    return {3: "column 'caption' is not UTF-8 text (byte 0xe9)", 4: "field larger than field limit (131072)",
            5: "the location contains a NUL byte"}


def test_a_hostile_csv_completes_with_every_failure_named(photos: list[Path], tmp_path: Path, cli) -> None:
    csv_path = tmp_path / "hostile.csv"
    expected = hostile_csv(photos, csv_path)
    index = tmp_path / "index"
    built = cli("index", csv_path, "--out", index, "--json")
    assert built.returncode == 0, built.stderr[-3000:]
    summary = json.loads(built.stdout.strip().splitlines()[-1])
    assert (summary["indexed"], summary["failed"]) == (GOOD, len(expected)), summary

    info = cli("info", index, "--failures", "0", "--json")
    assert info.returncode == 0, info.stderr[-2000:]
    failures = json.loads(info.stdout)["failures"]
    assert len(failures) == len(expected)
    for line, reason in expected.items():
        hits = [f for f in failures if f"hostile.csv line {line}: " in f["error"]]
        assert len(hits) == 1 and reason in hits[0]["error"], (line, failures)
    by_line = {int(f["error"].split(" line ")[1].split(":")[0]): f for f in failures}
    assert {n: f["source"] for n, f in by_line.items()} == {n: f"{csv_path}:{n}" for n in expected}
    assert by_line[3]["error"].endswith(f"(location {photos[1]})")  # a clean location cell is named

    text = cli("info", index, "--failures", "0")
    assert text.returncode == 0
    for line in expected:
        assert f"hostile.csv line {line}: " in text.stdout


@pytest.mark.parametrize(("encoding", "bom", "named"), [
    ("utf-16", b"", "utf-16-le"),  # Python's utf-16 writes its own BOM
    ("utf-16-be", b"\xfe\xff", "utf-16-be"),
    ("utf-16-le", b"", "utf-16-le"),  # no BOM at all: found by its NUL bytes
    ("latin-1", b"", "cp1252"),
    ("cp1252", b"", "cp1252"),
])
def test_utf16_and_single_byte_files_are_read_with_a_warning(
        encoding: str, bom: bytes, named: str, photos: list[Path], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    rows = ["url,caption"] + [f"{p},caf\u00e9 cr\u00e8me na\u00efve {n}" for n, p in enumerate(photos)]
    path = tmp_path / f"{encoding}.csv"
    path.write_bytes(bom + "\n".join(rows).encode(encoding))
    with caplog.at_level(logging.WARNING, logger="imagefinder.ingest.sources"):
        items = expand_sources([str(path)])
    assert [i.source for i in items] == [str(p) for p in photos]
    assert all(i.error is None for i in items)
    assert items[0].meta == {"caption": "caf\u00e9 cr\u00e8me na\u00efve 0"}
    assert any(f"read as {named}" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


def test_a_list_file_with_a_bad_line_fails_that_line_only(photos: list[Path], tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(b"\n".join([str(photos[0]).encode() + "\u00e9".encode(), b"/x/\xff.jpg",
                                 b"a\x00.jpg", str(photos[1]).encode()]) + b"\n")
    items = expand_sources([str(path)])
    assert [(i.error or "").split(": ", 1)[-1] for i in items] == [
        "", "not UTF-8 text (byte 0xff)", "the location contains a NUL byte (is this a binary file?)", ""]
    assert items[1].source == f"{path}:2" and items[2].source == f"{path}:3" and items[3].source == str(photos[1])
