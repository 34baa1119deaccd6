"""The collection's leaderboard, claims and paper figures (`tireid_core.collection`): its lists agree with params.yaml,
the notebooks and the README; figure export names a missing stage and copies under stable names."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tireid_core import collection
from tireid_core.params import method_rows
from tireid_core.runs import RunMissing

REPO = Path(__file__).resolve().parent.parent


def _notebook_code(name: str) -> str:
    cells = json.loads((REPO / "notebooks" / f"{name}.ipynb").read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


@pytest.mark.parametrize("paper", collection.PAPERS, ids=lambda p: p.key)
def test_each_paper_names_real_rows_claims_and_figures(paper):
    rows = method_rows(paper.method, REPO / "params.yaml")
    assert paper.rows[0] == "full" and set(paper.rows) <= set(rows)
    for _, worse, better in paper.claims:
        assert {worse, better} <= set(paper.rows)
    names = [f.name for f in paper.figures]
    assert len(names) == len(set(names))
    for figure in paper.figures:
        # the stage's notebook writes that file (into figures/ or analysis/figures/ of the method's run folder)
        assert figure.stage in (paper.method, f"{paper.method}_analysis")
        assert f'"{Path(figure.source).name}"' in _notebook_code(figure.stage), figure
        assert figure.source.startswith("analysis/figures/" if figure.stage.endswith("_analysis") else "figures/")


def test_readme_lists_every_paper_figure_with_its_stage():
    readme = (REPO / "README.md").read_text()
    for line in collection.figures_table().itertuples():
        assert f"`{line.file}`" in readme and f"`{line.regenerate}`" in readme, line.file


def test_reported_numbers_are_the_papers_own_or_labelled_lineage():
    table = collection.reported_table()
    papers = set(table.index.get_level_values("paper"))
    assert {"SSAN (Ding et al. 2021)", "NAFS (Gao et al. 2021)", "SAN (Jin et al. 2020), image ReID"} <= papers
    assert set(table.index.get_level_values("method")) <= {m for p in collection.PAPERS for m in p.reported}
    assert table["evidence"].notna().all() and table["source"].notna().all()


def test_export_names_the_stage_to_run_then_copies_under_stable_names(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "params.yaml", project / "params.yaml")  # run folders resolve inside the scratch project
    ssan = collection.paper("ssan")
    with pytest.raises(RunMissing, match=r"dvc repro ssan_analysis"):
        collection.export_figures([ssan], project / "figures", params_file=project / "params.yaml")
    for figure in ssan.figures:
        source = project / "runs" / "demo" / "ssan" / figure.source
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(figure.name.encode())
    (project / "figures" / "ssan").mkdir(parents=True)
    (project / "figures" / "ssan" / "stale.png").write_bytes(b"old")  # a figure no longer listed does not linger
    rows = collection.export_figures([ssan], project / "figures", params_file=project / "params.yaml")
    written = sorted(p.name for p in (project / "figures" / "ssan").iterdir())
    assert written == sorted(f.name for f in ssan.figures) and len(rows) == len(ssan.figures)
    assert (project / "figures" / "ssan" / "tsne_text_intra_class.png").read_bytes() == b"tsne_text_intra_class.png"


def test_comparison_figure_draws_one_panel_per_task_with_intervals():
    board = pd.DataFrame([
        {"paper": "A (x)", "row": "full", "task": "text → image", "R@1": 50.0, "R@1 95% CI": "[45.0, 55.0]"},
        {"paper": "A (x)", "row": "global_only", "task": "text → image", "R@1": 40.0, "R@1 95% CI": "[35.5, 44.0]"},
        {"paper": "B (y)", "row": "full", "task": "image ReID", "R@1": 70.0, "R@1 95% CI": "[66.0, 74.0]"}])
    fig = collection.comparison_figure(board)
    assert [ax.get_title() for ax in fig.axes] == ["text → image", "image ReID"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["A: full", "A: global_only"]
