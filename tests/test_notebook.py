"""scripts/Image_Search.ipynb runs top to bottom (nbclient, cwd scripts/) and shows what it promises."""

from __future__ import annotations

from pathlib import Path

import pytest

# end-to-end: `make test-fast` leaves these out, `make test` (CI) runs them
pytestmark = pytest.mark.slow

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
NOTEBOOK = SCRIPTS / "Image_Search.ipynb"


def _outputs(cell: dict, kind: str) -> list:
    return [o for o in cell.get("outputs", []) if kind in o.get("data", {})]


def _cell(nb, marker: str) -> dict:
    found = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    assert len(found) == 1, f"expected one code cell containing {marker!r}"
    return found[0]


@pytest.mark.timeout(900)
def test_notebook_runs_top_to_bottom_and_shows_its_figures(ukbench_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEFINDER_DATA", str(ukbench_dir))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's work dir goes under tempfile.gettempdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(SCRIPTS)}})
    client.execute()  # raises CellExecutionError, with the traceback, if any cell fails

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert _outputs(_cell(nb, "show_results(finder"), "image/png"), "the result grid shows no image"
    assert _outputs(_cell(nb, "ax.scatter("), "image/png"), "the PCA scatter shows no image"
    tune = _cell(nb, "TrainConfig(")
    assert _outputs(tune, "image/png"), "the fine-tuning cell shows no loss curve"
    assert "epoch 2: train loss" in "".join(o.get("text", "") for o in tune.outputs)
    table = _outputs(_cell(nb, "evaluate(SUBSET"), "text/markdown")
    assert table and "ns_score" in table[0]["data"]["text/markdown"]
    assert "contrastive-tuned" in table[0]["data"]["text/markdown"]
