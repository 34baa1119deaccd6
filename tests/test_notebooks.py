"""Every notebook runs top to bottom through papermill on the tiny profile."""
import json
from pathlib import Path

import nbformat
import pytest

from tireid_core.engine import build_experiment, fit
from tireid_core.models import model_builder
from tireid_core.params import load_run_params, load_section
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


def _train_rows(method: str, tmp_path, root):
    """What the <method> and <method>_ablation stages produce, on the tiny profile."""
    rows = load_section(f"{method}_ablation", params_file=REPO / "params.yaml")
    for key, switches in [*rows.items(), ("full", {})]:
        sets = [f"{method}.out_dir={tmp_path / method / key}", f"{method}.data.root={root}",
                *(f"{method}.{method}.{k}={str(v).lower()}" for k, v in switches.items())]
        params = load_run_params(method, params_file=REPO / "params.yaml", profile="tiny", sets=sets)
        fit(build_experiment(params, model_builder(method)))


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_tiny_profile(name, tmp_path, tiny_simpedes):
    sets = [
        f"simpedes.out_dir={tiny_simpedes}",
        f"baseline.out_dir={tmp_path / 'baseline'}",
        f"baseline.data.root={tiny_simpedes}",
        f"ssan.out_dir={tmp_path / 'ssan' / 'full'}",
        f"ssan.data.root={tiny_simpedes}",
        f"nafs.out_dir={tmp_path / 'nafs' / 'full'}",
        f"nafs.data.root={tiny_simpedes}",
    ]
    if name.endswith("_analysis"):
        _train_rows(name.removesuffix("_analysis"), tmp_path, tiny_simpedes)
    out = execute_notebook(name, profile="tiny", sets=sets, params_file=REPO / "params.yaml", out_dir=tmp_path / "nb")
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert (tmp_path / "nb" / f"{name}.html").exists()
    if name in ("baseline", "ssan", "nafs"):
        run = tmp_path / name if name == "baseline" else tmp_path / name / "full"
        metrics = json.loads((run / "metrics.json").read_text())
        assert 0 <= metrics["best"]["test"]["R@1"] <= 100
        assert (run / "figures" / "retrieval.png").exists()
    if name == "ssan_analysis":
        analysis = json.loads((tmp_path / "ssan" / "analysis" / "analysis.json").read_text())
        assert set(analysis) == {"intra_class_ratio", "word_part_agreement", "word_part_chance"}
        assert (tmp_path / "ssan" / "analysis" / "tsne_text_intra_class.png").exists()
    if name == "nafs_analysis":
        analysis = json.loads((tmp_path / "nafs" / "analysis" / "analysis.json").read_text())
        assert set(analysis) == {"rvn_r1_by_k", "official_rvn_shuffled_order_r1", "word_region_agreement"}
        assert set(analysis["word_region_agreement"]) == {"branch_2", "branch_3"}
        assert (tmp_path / "nafs" / "analysis" / "word_region_attention.png").exists()
