"""Terminal escape injection: nothing the CLI prints can drive the terminal; JSON stays JSON.

An index is built from a CSV naming a photo whose file name holds CSI sequences (clear the
screen, red "FAKE"), and missing files whose names hold an OSC 52 clipboard write, a NUL-free
C1 CSI, a BEL and a right-to-left override. `info --failures 0`, `search` and an error must
print them escaped (visible ``\\x1b[2J`` text), never raw; `--json` must parse back to the very
same strings. Before, all of them were printed raw.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, ukbench_image

CSI_NAME = "\x1b[2J\x1b[31mFAKE\x1b[0m.jpg"
OSC_NAME = "\x1b]52;c;cm0gLXJmIH4=\x07gone.jpg"  # OSC 52: write the clipboard
C1_NAME = "\x9b2J\u202egpj.exe.jpg"  # C1 CSI, then a right-to-left override
RAW = set(map(chr, [*range(0x09), *range(0x0b, 0x20), *range(0x7f, 0xa0), 0x202e]))  # all but \n


def raw_controls(text: str) -> set[str]:
    return {c for c in text if c in RAW}


def escape(text: str) -> str:
    from imagefinder.cli.terminal import escape

    return escape(text)


@pytest.mark.parametrize(("text", "shown"), [
    ("plain é 漢", "plain é 漢"),
    ("\x1b[2Jx", "\\x1b[2Jx"),
    ("a\x00b\x07c\x7f\x9b", "a\\x00b\\x07c\\x7f\\x9b"),
    ("line\nbreak\ttab\r", "line\\x0abreak\\x09tab\\x0d"),
    ("\u202eevil\u2066", "\\u202eevil\\u2066"),
    ("bad \udce9 byte", "bad \\udce9 byte"),
])
def test_escape_makes_every_control_visible(text: str, shown: str) -> None:
    assert escape(text) == shown


@pytest.fixture(scope="module")
def hostile_index(ukbench_dir: Path, tmp_path_factory: pytest.TempPathFactory, cli) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("hostile-names")
    plain, evil = root / "plain.jpg", root / CSI_NAME
    shutil.copyfile(ukbench_image(ukbench_dir, 0), plain)
    shutil.copyfile(ukbench_image(ukbench_dir, 1), evil)
    listing = root / "list.csv"
    listing.write_text("url,caption\n" + "\n".join([
        f"{plain},\x1b[2J\x1b[31mFAKE caption", str(evil), str(root / OSC_NAME), str(root / C1_NAME)]) + "\n")
    index = root / "index"
    built = cli("index", listing, "--out", index)
    assert built.returncode == 0, built.stderr[-2000:]
    assert not raw_controls(built.stdout + built.stderr), (built.stdout + built.stderr)[-2000:]
    return index, evil, root


def test_info_failures_prints_hostile_sources_escaped(hostile_index, cli) -> None:
    index, _, root = hostile_index
    shown = cli("info", index, "--failures", "0")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert not raw_controls(shown.stdout + shown.stderr), shown.stdout
    assert escape(str(root / OSC_NAME)) in shown.stdout and "\\x1b]52;c;" in shown.stdout
    assert "\\x9b2J\\u202egpj" in shown.stdout

    as_json = cli("info", index, "--failures", "0", "--json")
    failures = {f["source"] for f in json.loads(as_json.stdout)["failures"]}
    assert failures == {str(root / OSC_NAME), str(root / C1_NAME)}  # the very strings, through JSON


def test_search_results_and_errors_are_escaped(hostile_index, cli) -> None:
    index, evil, root = hostile_index
    found = cli("search", index, evil, "-k", "2")
    assert found.returncode == 0, found.stderr[-2000:]
    assert not raw_controls(found.stdout + found.stderr), found.stdout
    assert escape(str(evil)) in found.stdout and "\\x1b[2J\\x1b[31mFAKE" in found.stdout

    as_json = cli("search", index, evil, "-k", "2", "--json")
    assert json.loads(as_json.stdout)["results"][0]["source"] == str(evil)

    missing = cli("search", index, str(root / ("\x1b]0;owned\x07" + "q.jpg")))
    assert missing.returncode == 2
    assert not raw_controls(missing.stderr) and "\\x1b]0;owned\\x07" in missing.stderr, missing.stderr

    bad_k = cli("search", index, evil, "-k", "\x1b[2J")
    assert bad_k.returncode == 2 and not raw_controls(bad_k.stderr), bad_k.stderr


def test_every_cli_print_goes_through_the_terminal_helper() -> None:
    """No print() or direct stream write in cli/ but terminal.py's: a new one would print data raw."""
    offenders = []
    for path in sorted((REPO / "src/imagefinder/cli").glob("*.py")):
        if path.name == "terminal.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if (isinstance(f, ast.Name) and f.id == "print") or (
                    isinstance(f, ast.Attribute) and f.attr == "write" and "std" in ast.unparse(f.value)):
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders
