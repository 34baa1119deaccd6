"""Every notebook runs top to bottom through papermill on the tiny profile."""
import json
from pathlib import Path

import nbformat
import pytest

from tireid_core.run import execute_notebook

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))


def test_notebooks_are_committed_without_outputs_and_have_parameters():
    assert NOTEBOOKS, "no notebooks found"
    for name in NOTEBOOKS:
        nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name}: outputs committed"
        assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1, f"{name}: one parameters cell"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_tiny_profile(name, tmp_path, tiny_simpedes):
    sets = [
        f"simpedes.out_dir={tiny_simpedes}",
        f"baseline.out_dir={tmp_path / 'baseline'}",
        f"baseline.data.root={tiny_simpedes}",
    ]
    out = execute_notebook(name, profile="tiny", sets=sets, params_file=REPO / "params.yaml", out_dir=tmp_path / "nb")
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert (tmp_path / "nb" / f"{name}.html").exists()
    if name == "baseline":
        metrics = json.loads((tmp_path / "baseline" / "metrics.json").read_text())
        assert metrics["best"]["test"]["R@1"] >= 0
        assert (tmp_path / "baseline" / "figures" / "retrieval.png").exists()
