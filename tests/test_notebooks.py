"""Every notebook runs top to bottom through papermill on the tiny profile, reading runs trained by `train --row`."""
import json
from pathlib import Path

import nbformat
import pytest

from tireid_core.engine import fit
from tireid_core.experiment import build_experiment
from tireid_core.methods import available_methods
from tireid_core.params import load_run_params, method_rows
from tireid_core.run import execute_notebook
from tireid_core.runs import RunMissing, load_run

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))


def test_notebooks_are_committed_without_outputs_and_have_parameters():
    assert NOTEBOOKS, "no notebooks found"
    for name in NOTEBOOKS:
        nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name}: outputs committed"
        params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, f"{name}: one parameters cell"
        assert "params_file = None" in params[0].source and "save_outputs = False" in params[0].source, name


def test_notebooks_train_nothing():
    """Training runs from the command line (DVC stages train_<method>@<row>); notebooks read finished runs."""
    for name in NOTEBOOKS:
        source = (REPO / "notebooks" / f"{name}.ipynb").read_text()
        assert "fit(" not in source and "tireid_core.engine" not in source, name


def _method_sets(method, tmp_path, root, stand_ins):
    return [f"{method}.out_dir={tmp_path / method}", f"{method}.data.root={root}",
            f"{method}.model.pretrained={stand_ins['image']}", f"{method}.model.text_model={stand_ins['text']}"]


def _sets(tmp_path, root, stand_ins):
    sets = [f"simpedes.out_dir={root}"]
    for method in available_methods():
        sets += _method_sets(method, tmp_path, root, stand_ins)
    return sets


def _train_rows(method: str, tmp_path, root, stand_ins, rows=None):
    """What the train_<method> stage produces, on the tiny profile (every row, or `rows`)."""
    for row in rows or method_rows(method, REPO / "params.yaml", profile="tiny"):
        params = load_run_params(method, REPO / "params.yaml", row=row, profile="tiny",
                                 sets=_method_sets(method, tmp_path, root, stand_ins))
        fit(build_experiment(params))


def test_missing_run_names_the_command_that_makes_it(tmp_path, tiny_simpedes, tiny_stand_ins):
    with pytest.raises(RunMissing, match=r"no finished run of ssan row 'full'.*python -m tireid_core.train ssan --row "
                                         r"full --profile tiny"):
        load_run("ssan", "full", REPO / "params.yaml", "tiny", _sets(tmp_path, tiny_simpedes, tiny_stand_ins))


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_tiny_profile(name, tmp_path, tiny_simpedes, tiny_stand_ins):
    method = name.removesuffix("_analysis")
    if method in available_methods():
        _train_rows(method, tmp_path, tiny_simpedes, tiny_stand_ins)
    if name == "nafs_analysis":  # compares with the baseline's full row; ssan_analysis runs without it (and says so)
        _train_rows("baseline", tmp_path, tiny_simpedes, tiny_stand_ins, rows=["full"])
    out = execute_notebook(name, profile="tiny", sets=_sets(tmp_path, tiny_simpedes, tiny_stand_ins),
                           params_file=REPO / "params.yaml",
                           out_dir=tmp_path / "nb")
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert (tmp_path / "nb" / f"{name}.html").exists()
    if name in ("baseline", "ssan", "nafs"):
        metrics = json.loads((tmp_path / name / "full" / "metrics.json").read_text())
        assert 0 <= metrics["best"]["test"]["R@1"] <= 100
        assert (tmp_path / name / "figures" / "retrieval.png").exists()
    if name.endswith("_analysis"):
        assert (tmp_path / method / "analysis" / "figures" / "val_curves.png").exists()
        text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        assert "share one recipe" in text and "full vs global_only" in text
        assert ("minus baseline full" in text) == (name == "nafs_analysis"), "baseline comparison shown iff trained"
        assert ("the baseline run is missing" in text) == (name == "ssan_analysis")
    if name == "ssan_analysis":
        analysis = json.loads((tmp_path / "ssan" / "analysis" / "analysis.json").read_text())
        assert set(analysis) == {"intra_class_ratio", "word_part_agreement", "word_part_chance"}
        assert (tmp_path / "ssan" / "analysis" / "figures" / "tsne_text_intra_class.png").exists()
    if name == "nafs_analysis":
        analysis = json.loads((tmp_path / "nafs" / "analysis" / "analysis.json").read_text())
        assert set(analysis) == {"rvn_r1_by_k", "official_rvn_shuffled_order_r1", "word_region_agreement"}
        assert set(analysis["word_region_agreement"]) == {"branch_2", "branch_3"}
        assert (tmp_path / "nafs" / "analysis" / "figures" / "word_region_attention.png").exists()
