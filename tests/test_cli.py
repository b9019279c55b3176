"""The `imagefinder` command, run as a real subprocess: output contracts, exit codes, messages."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import imagefinder
from imagefinder.presets import DEFAULT_PRESET, PRESETS

EVAL_KEYS = {"map", "recall@1", "recall@5", "recall@10", "ns_score", "images", "queries", "index_seconds", "precision",
             "images_per_second"}


def _last_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "no output on stdout"
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def photos(ukbench_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two UKBench groups (8 images) in a folder."""
    folder = tmp_path_factory.mktemp("cli-photos")
    for n in range(100, 108):
        shutil.copyfile(ukbench_dir / "images" / f"ukbench{n:05d}.jpg", folder / f"ukbench{n:05d}.jpg")
    return folder


@pytest.fixture(scope="module")
def cli_index(photos: Path, tmp_path_factory: pytest.TempPathFactory, cli) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cli-index") / "index"
    proc = cli("index", photos, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"--json prints exactly one line: {proc.stdout!r}"
    return out, json.loads(lines[0])


def test_index_json_summary(cli_index) -> None:
    out, summary = cli_index
    assert set(summary) == {"path", "items", "indexed", "failed", "failure_reasons", "index_spec", "seconds",
                            "images_per_second", "resumed"}
    assert Path(summary["path"]) == out
    assert (summary["items"], summary["indexed"], summary["failed"], summary["resumed"]) == (8, 8, 0, 0)
    assert summary["failure_reasons"] == {} and summary["index_spec"] == "Flat"
    assert summary["seconds"] > 0 and summary["images_per_second"] > 0
    assert (out / "manifest.json").is_file()


def test_search_json_contract(cli_index, photos: Path, cli) -> None:
    out, _ = cli_index
    query = photos / "ukbench00105.jpg"
    proc = cli("search", out, query, "-k", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    payload = _last_json(proc.stdout)
    assert isinstance(payload, dict) and {"query", "results"} <= set(payload)
    assert payload["query"] == {"type": "file", "path": str(query), "filename": query.name, "id": None, "url": None,
                                "width": None, "height": None}
    results = payload["results"]
    assert isinstance(results, list) and len(results) == 4
    for i, r in enumerate(results, 1):
        assert {"rank", "id", "source", "score"} <= set(r)
        assert r["rank"] == i and isinstance(r["id"], int) and isinstance(r["source"], str)
        assert isinstance(r["score"], float) and math.isfinite(r["score"])
    # the default preset expands the query (alpha-QE 2): the image itself is first, a little under 1
    assert results[0]["source"] == str(query.resolve()) and 0.95 < results[0]["score"] < 1.0
    assert {Path(r["source"]).name for r in results} == {f"ukbench{n:05d}.jpg" for n in range(104, 108)}
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    plain = _last_json(cli("search", out, query, "-k", "1", "--qe", "0", "--json").stdout)["results"]
    assert plain[0]["source"] == str(query.resolve()) and plain[0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_search_euclidean_json_ascends(cli_index, photos: Path, cli) -> None:
    out, _ = cli_index
    proc = cli("search", out, photos / "ukbench00101.jpg", "-k", "8", "--metric", "euclidean", "--json")
    assert proc.returncode == 0, proc.stderr
    results = _last_json(proc.stdout)["results"]
    assert len(results) == 8 and Path(results[0]["source"]).name == "ukbench00101.jpg"
    assert [r["score"] for r in results] == sorted(r["score"] for r in results)


def test_search_table_output(cli_index, photos: Path, cli) -> None:
    out, _ = cli_index
    proc = cli("search", out, photos / "ukbench00100.jpg", "-k", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "match", "id", "source"]
    assert len(lines) == 3
    assert lines[1].split()[0] == "1" and lines[1].endswith("ukbench00100.jpg")


def test_info_json(cli_index, cli) -> None:
    out, _ = cli_index
    proc = cli("info", out, "--json")
    assert proc.returncode == 0, proc.stderr
    info = _last_json(proc.stdout)
    assert info["path"] == str(out)
    assert info["model"] == PRESETS[DEFAULT_PRESET].model and info["embedding_dim"] == 1280  # built with no options
    assert info["index_spec"] == "Flat"
    assert info["counts"]["items"] == 8 and info["counts"]["indexed"] == 8 and info["counts"]["failed"] == 0
    assert info["failures"] == [] and info["failure_reasons"] == {}
    assert info["versions"]["imagefinder"] == imagefinder.__version__


def test_index_pca_whiten_clusters_flags_reach_the_manifest(photos: Path, tmp_path: Path, cli) -> None:
    proc = cli("index", photos, "--out", tmp_path / "index", "--pca", "6", "--whiten", "--clusters", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert _last_json(proc.stdout)["index_spec"] == "PCAW6,L2norm,IVF2,Flat"
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["index_spec"] == "PCAW6,L2norm,IVF2,Flat"
    assert (manifest["config"]["pca"], manifest["config"]["whiten"], manifest["config"]["clusters"]) == (6, True, 2)
    assert manifest["cluster_source"] == "ivf" and manifest["clusters"] == 2
    proc = cli("search", tmp_path / "index", photos / "ukbench00102.jpg", "-k", "8", "--metric", "vote", "--json")
    assert proc.returncode == 0, proc.stderr
    results = _last_json(proc.stdout)["results"]
    assert len(results) == 8 and Path(results[0]["source"]).name == "ukbench00102.jpg"


def test_info_table_lists_failures(tmp_path: Path, cli) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "empty.jpg").write_bytes(b"")
    proc = cli("index", tmp_path / "photos", "--out", tmp_path / "index", "--json")
    assert proc.returncode == 1, "nothing usable was indexed"
    summary = _last_json(proc.stdout)
    assert (summary["indexed"], summary["failed"]) == (0, 1)
    assert summary["failure_reasons"] == {"empty file (0 bytes)": 1}
    proc = cli("info", tmp_path / "index")
    assert proc.returncode == 0, proc.stderr
    assert "0 indexed, 1 failed, 1 total" in proc.stdout
    assert "empty.jpg: empty file (0 bytes)" in proc.stdout


@pytest.fixture(scope="module")
def eval_data(ukbench_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 UKBench groups (24 images) + 2 distractors with an empty group_id."""
    data = tmp_path_factory.mktemp("eval-data")
    (data / "images").mkdir()
    rows = []
    for n in list(range(200, 224)) + [500, 901]:
        name = f"ukbench{n:05d}.jpg"
        shutil.copyfile(ukbench_dir / "images" / name, data / "images" / name)
        rows.append((name, str(n // 4) if n < 224 else ""))
    with open(data / "groundtruth.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "group_id"])
        writer.writerows(rows)
    return data


def test_evaluate_json_is_one_object_with_exactly_the_metric_keys(eval_data: Path, cli) -> None:
    proc = cli("evaluate", eval_data, "--json")
    assert proc.returncode == 0, proc.stderr
    metrics = _last_json(proc.stdout)
    assert set(metrics) == EVAL_KEYS
    for key in ("map", "recall@1", "recall@5", "recall@10"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["recall@1"] <= metrics["recall@5"] <= metrics["recall@10"]
    assert 1.0 <= metrics["ns_score"] <= 4.0
    assert metrics["images"] == 26 and metrics["queries"] == 24
    assert metrics["index_seconds"] > 0 and metrics["images_per_second"] > 0
    # the default model does well on UKBench: chance would be ns ~1.1, map ~0.12
    assert metrics["ns_score"] >= 3.0 and metrics["map"] >= 0.7


def test_evaluate_with_a_bad_data_dir_exits_2(tmp_path: Path, cli) -> None:
    proc = cli("evaluate", tmp_path, "--json")
    assert proc.returncode == 2
    assert "groundtruth.csv" in proc.stderr and str(tmp_path) in proc.stderr


# --- errors ------------------------------------------------------------------------------------------


def test_missing_source_exits_2_and_names_the_path(tmp_path: Path, cli) -> None:
    missing = tmp_path / "no-such-folder"
    proc = cli("index", missing, "--out", tmp_path / "index")
    assert proc.returncode == 2
    assert str(missing) in proc.stderr and "no such file or folder" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "index").exists()


def test_search_on_a_non_index_dir_exits_2(photos: Path, tmp_path: Path, cli) -> None:
    proc = cli("search", tmp_path, photos / "ukbench00100.jpg")
    assert proc.returncode == 2
    assert "not an ImageFinder index" in proc.stderr and str(tmp_path) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_index_with_an_unknown_model_exits_2(photos: Path, tmp_path: Path, cli) -> None:
    proc = cli("index", photos, "--out", tmp_path / "index", "--model", "alexnet-9000")
    assert proc.returncode == 2
    assert "unknown model 'alexnet-9000'" in proc.stderr and "efficientnet-lite0" in proc.stderr
    assert not (tmp_path / "index").exists()


def test_search_with_a_missing_query_or_bad_k_exits_2(cli_index, tmp_path: Path, photos: Path, cli) -> None:
    out, _ = cli_index
    proc = cli("search", out, tmp_path / "nope.jpg")
    assert proc.returncode == 2 and "nope.jpg" in proc.stderr
    proc = cli("search", out, photos / "ukbench00100.jpg", "-k", "0")
    assert proc.returncode == 2 and "-k" in proc.stderr


def test_whiten_without_pca_exits_2(photos: Path, tmp_path: Path, cli) -> None:
    proc = cli("index", photos, "--out", tmp_path / "index", "--whiten")
    assert proc.returncode == 2 and "--pca" in proc.stderr


HELP = {
    "index": ["--out", "--model", "--pca", "--whiten", "--clusters", "--json", "--batch-size", "--workers"],
    "search": ["-k", "--metric", "--json", "cosine", "euclidean", "vote", "--where", "--source-prefix"],
    "sync": ["--dry-run", "--json", "FOLDER"],
    "evaluate": ["--metric", "--out", "--json", "--model", "DATA_DIR"],
    "info": ["--json", "DIR"],
    "demo": ["--dir", "-k"],
}


@pytest.mark.parametrize("command", sorted(HELP))
def test_help_of_each_subcommand(command: str, cli) -> None:
    proc = cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: imagefinder {command}")
    for option in HELP[command]:
        assert option in proc.stdout, f"{command} --help does not mention {option}"


def test_top_level_help_lists_commands_and_console_script_works() -> None:
    script = Path(sys.executable).parent / "imagefinder"
    if not script.exists():
        pytest.skip(f"console script not installed at {script}")
    proc = subprocess.run([str(script), "--help"], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for command in HELP:
        assert command in proc.stdout
    proc = subprocess.run([str(script), "--version"], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"imagefinder {imagefinder.__version__}"


def test_no_subcommand_is_a_usage_error(cli) -> None:
    proc = cli()
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_demo_builds_the_sample_and_prints_results(tmp_path: Path, cli) -> None:
    proc = cli("demo", "--dir", "tmp", "-k", "3", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("indexed 45 sample images into ")
    assert Path(lines[0].split(" into ")[1]) == tmp_path / "tmp" / "index"
    assert lines[1] == f"query: {Path('tmp') / 'query_coffee.jpg'}"
    results = [line.split() for line in lines[2:5]]
    assert [r[0] for r in results] == ["1", "2", "3"]
    assert all(r[2].startswith("coffee_") for r in results), f"the held-out coffee query finds coffee: {results}"
    assert lines[-1].startswith("next: imagefinder search")
    assert len(list((tmp_path / "tmp" / "images").glob("*.jpg"))) == 45
    assert (tmp_path / "tmp" / "index" / "manifest.json").is_file()


# --- the package entry: light imports, error mapping, renamed options ---------------------------------

HEAVY = ("numpy", "faiss", "onnx", "onnxruntime", "torch", "httpx")


def test_import_and_top_level_help_load_no_heavy_module() -> None:
    """`import imagefinder` and parsing `--help` in a fresh interpreter: none of the model/search stack."""
    code = f"""
import contextlib, io, sys
import imagefinder
after_import = [m for m in {HEAVY!r} if m in sys.modules]
from imagefinder.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        main(["--help"])
    except SystemExit as exc:
        code = exc.code
import imagefinder.train
from imagefinder.train import TrainConfig, METHODS
after_help = [m for m in {HEAVY!r} if m in sys.modules]
print(after_import, after_help, code, "usage: imagefinder" in out.getvalue())
"""
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "[] [] 0 True", proc.stdout


def test_a_search_from_a_file_loads_no_export_download_or_write_module(small_index) -> None:
    """What `imagefinder search INDEX q.jpg` needs: FAISS, onnxruntime, numpy, PIL - not onnx (exports),
    httpx (downloads), torch, or the index write side (pipeline, filelock): each costs start-up time."""
    code = f"""
import sys
from imagefinder import ImageFinder
finder = ImageFinder({str(small_index.path)!r})
hits = finder.search({small_index.sources[0]!r}, k=3)
print(len(hits), [m for m in ("onnx", "httpx", "torch", "filelock", "imagefinder.pipeline") if m in sys.modules])
"""
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "3 []", proc.stdout


def test_lazy_package_names_still_import() -> None:
    from imagefinder import BuildReport, ImageFinder, ImageFinderError, IndexConfig, Result, build_index

    assert ImageFinder.__name__ == "ImageFinder" and Result.__name__ == "Result"
    assert IndexConfig().model and BuildReport.__name__ == "BuildReport" and callable(build_index)
    assert issubclass(ImageFinderError, Exception) and "build_index" in dir(imagefinder)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        imagefinder.nope  # noqa: B018 - the lookup is the test


def test_old_index_rerank_spelling_names_the_new_flag(photos: Path, tmp_path: Path, cli) -> None:
    proc = cli("index", photos, "--out", tmp_path / "index", "--rerank", "50")
    assert proc.returncode == 2 and "--refine" in proc.stderr and "usage: imagefinder index" in proc.stderr
    assert not (tmp_path / "index").exists()
    assert "--refine N" in cli("index", "--help").stdout


def test_refine_reaches_the_manifest(photos: Path, tmp_path: Path, cli) -> None:
    proc = cli("index", photos, "--out", tmp_path / "index", "--refine", "6", "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["rerank"] == 6


def test_only_imagefinder_errors_are_bad_input(capsys: pytest.CaptureFixture) -> None:
    """An ImageFinderError is the user's to fix (exit 2, its message); a KeyError is a bug and propagates."""
    import argparse

    from imagefinder.cli.main import run
    from imagefinder.errors import ImageFinderError

    def bad_input(args: argparse.Namespace) -> int:
        raise ImageFinderError("that file is not there")

    def bug(args: argparse.Namespace) -> int:
        return {}["missing"]

    assert run(argparse.Namespace(func=bad_input)) == 2
    assert capsys.readouterr().err == "imagefinder: error: that file is not there\n"
    with pytest.raises(KeyError, match="missing"):
        run(argparse.Namespace(func=bug))


def test_console_script_help_exits_0() -> None:
    script = Path(sys.executable).parent / "imagefinder"
    if not script.exists():
        pytest.skip(f"console script not installed at {script}")
    proc = subprocess.run([str(script), "--help"], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: imagefinder")
