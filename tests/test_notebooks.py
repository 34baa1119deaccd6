"""Every notebook runs top to bottom through papermill on the tiny profile, reading runs trained by `train --row`."""
import json
from pathlib import Path

import nbformat
import pytest

from tireid_core.methods import available_methods, get_method
from conftest import NB_EXTRA_KEYS, stand_in_overrides
from tireid_core.run import execute_notebook
from tireid_core.runs import RunMissing, load_run

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))


def test_notebooks_are_committed_without_outputs_and_have_parameters():
    assert NOTEBOOKS, "no notebooks found"
    for name in NOTEBOOKS:
        nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)  # nbconvert refuses an invalid notebook (e.g. a kernelspec without display_name)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name}: outputs committed"
        params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, f"{name}: one parameters cell"
        assert "params_file = None" in params[0].source and "save_outputs = False" in params[0].source, name


def test_notebooks_are_in_the_form_the_git_filter_writes():
    """nbstripout (installed as a git clean filter by `make install`) leaves every committed notebook unchanged, so a
    notebook saved with outputs by JupyterLab shows no change to git, and `make strip-notebooks` restores the files."""
    from nbstripout import strip_output

    for name in NOTEBOOKS:
        path = REPO / "notebooks" / f"{name}.ipynb"
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        stripped = nbformat.writes(strip_output(nb, keep_output=False, keep_count=False, keep_id=False,
                                                extra_keys=NB_EXTRA_KEYS.split()))
        assert stripped + "\n" == path.read_text(), f"{name}: run `make strip-notebooks` before committing"


def test_the_makefile_strips_the_same_metadata():
    assert f"NB_EXTRA_KEYS := {NB_EXTRA_KEYS}" in (REPO / "Makefile").read_text()


def test_the_set_up_installed_the_git_filter():
    import subprocess
    import sys

    if subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=REPO, capture_output=True).returncode:
        pytest.skip("not a git checkout: there is no git filter to install")
    if not (REPO / ".venv" / ".installed").exists():
        pytest.skip("set up without `make install` (e.g. conda): run `nbstripout --install` yourself")
    proc = subprocess.run([sys.executable, "-m", "nbstripout", "--is-installed"], cwd=REPO, capture_output=True)
    assert proc.returncode == 0, "nbstripout is not installed as a git filter: run `make install`"
    keys = subprocess.run(["git", "config", "--get", "filter.nbstripout.extrakeys"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
    assert keys == NB_EXTRA_KEYS, "the filter lacks the Makefile's extra keys: run `make install` again"


def test_notebooks_train_nothing():
    """Training runs from the command line (DVC stages train_<method>@<row>); notebooks read finished runs."""
    for name in NOTEBOOKS:
        source = (REPO / "notebooks" / f"{name}.ipynb").read_text()
        assert "fit(" not in source and "tireid_core.engine" not in source, name


def _method_sets(method, tmp_path, root, stand_ins):
    return [f"{method}.out_dir={tmp_path / method}", f"{method}.data.root={root}",
            *stand_in_overrides(method, stand_ins)]


def _sets(tmp_path, root, stand_ins):
    sets = [f"simpedes.out_dir={root}"]
    for method in available_methods():
        sets += _method_sets(method, tmp_path, root, stand_ins)
    return sets


def test_missing_run_names_the_command_that_makes_it(tmp_path, tiny_simpedes, tiny_stand_ins):
    with pytest.raises(RunMissing, match=r"no finished run of ssan row 'full'.*python -m tireid_core.train ssan --row "
                                         r"full --profile tiny"):
        load_run("ssan", "full", REPO / "params.yaml", "tiny", _sets(tmp_path, tiny_simpedes, tiny_stand_ins))


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_tiny_profile(name, tiny_pipeline):
    """The notebooks as the tiny `dvc repro` executed them (papermill, reading the runs its train stages made)."""
    method = name.removesuffix("_analysis")
    runs = tiny_pipeline.work / "runs" / "demo"
    nb = nbformat.read(runs / "notebooks" / f"{name}.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert (runs / "notebooks" / f"{name}.html").exists()
    if name in ("baseline", "ssan", "nafs", "san", "cmr", "lcr2s"):
        metrics = json.loads((runs / name / "full" / "metrics.json").read_text())
        assert 0 <= metrics["best"]["test"]["R@1"] <= 100
        assert (runs / name / "figures" / "retrieval.png").exists()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    if name.endswith("_analysis"):
        assert (runs / method / "analysis" / "figures" / "val_curves.png").exists()
        assert "share one recipe" in text
    if name.endswith("_analysis") and get_method(method).task == "text_image":  # the same kind of model as the baseline
        global_row = "single_view" if method == "lcr2s" else "global_only"  # the row each paper's claims start from
        assert f"full vs {global_row}" in text
        assert "minus baseline full" in text and "the baseline run is missing" not in text
    if name == "san_analysis":
        analysis = json.loads((runs / "san" / "analysis" / "analysis.json").read_text())
        assert set(analysis) == {"texture_error", "invisible_error_full_minus_san_basic",
                                 "view_invariance_front_back_ratio", "claims"}
        assert "full vs resnet" in text and "error on invisible texels" in text
        assert (runs / "san" / "analysis" / "figures" / "cmc.png").exists()
    if name == "ssan_analysis":
        analysis = json.loads((runs / "ssan" / "analysis" / "analysis.json").read_text())
        assert set(analysis) == {"intra_class_ratio", "word_part_agreement", "word_part_chance"}
        assert (runs / "ssan" / "analysis" / "figures" / "tsne_text_intra_class.png").exists()
    if name == "lcr2s":
        shown = "".join(o.get("data", {}).get("text/plain", "") for c in nb.cells if c.cell_type == "code"
                        for o in c.outputs)
        assert "ORACLE (test labels)" in shown  # the teacher with test supports appears labelled, in its own table
        assert (runs / "lcr2s" / "figures" / "support_set.png").exists()
    if name == "lcr2s_analysis":
        analysis = json.loads((runs / "lcr2s" / "analysis" / "analysis.json").read_text())
        assert set(analysis) == {"oracle_r1_by_k", "oracle_r1_mean_fusion", "intra_class_ratio", "mhaf_attention",
                                 "view_probe_auc"}
        assert set(analysis["oracle_r1_by_k"]) == {"1", "2", "3"} and len(analysis["intra_class_ratio"]) == 3
        for name_ in ("tsne.png", "mhaf_attention.png"):
            assert (runs / "lcr2s" / "analysis" / "figures" / name_).exists()
    if name == "nafs_analysis":
        analysis = json.loads((runs / "nafs" / "analysis" / "analysis.json").read_text())
        assert set(analysis) == {"rvn_r1_by_k", "official_rvn_shuffled_order_r1", "word_region_agreement"}
        assert set(analysis["word_region_agreement"]) == {"branch_2", "branch_3"}
        assert (runs / "nafs" / "analysis" / "figures" / "word_region_attention.png").exists()
    if name == "cmr_analysis":
        analysis = json.loads((runs / "cmr" / "analysis" / "analysis.json").read_text())
        assert set(analysis) == {"text_part_attention", "cross_modal_part_agreement", "commonality_rank_correlation"}
        for figure in ("commonality_histograms.png", "commonality_vs_frequency.png"):
            assert (runs / "cmr" / "analysis" / "figures" / figure).exists()
        assert "CMR (Park et al. 2024): numbers not available" in text
    if name == "collection":
        from tireid_core.collection import PAPERS

        board = (runs / "collection" / "leaderboard.csv").read_text().splitlines()
        assert len(board) == 1 + sum(len(p.rows) for p in PAPERS) and "MISSING" not in text
        claims = (runs / "collection" / "claims.csv").read_text()
        assert sum(len(p.claims) for p in PAPERS) == len(claims.splitlines()) - 1 and "not checked" not in claims
        work = tiny_pipeline.work
        for p in PAPERS:
            for f in p.figures:
                assert (work / "figures" / p.key / f.name).read_bytes() == (runs / p.method / f.source).read_bytes()
        assert (work / "figures" / "collection" / "leaderboard_r1.png").exists()
    if name == "noisy_correspondence":
        summary = json.loads((runs / "noisy" / "summary.json").read_text())
        assert len(summary["table"]) == 2 * 2 * 3  # methods x (clean + two rates) x (Best, Last)
        assert set(summary["drop_vs_clean_R@1"]) == {"baseline 20%", "baseline 50%", "ssan 20%", "ssan 50%"}
        assert (runs / "noisy" / "figures" / "r1_vs_noise.png").exists() and "noise lowers R@1" in text


def test_analysis_without_the_baseline_says_so(tmp_path):
    from tireid_core.runs import baseline_comparison

    lines = baseline_comparison("SSAN", None, REPO / "params.yaml", "tiny", [f"baseline.out_dir={tmp_path / 'none'}"])
    assert len(lines) == 1 and "SSAN global_only vs baseline full: not compared, the baseline run is missing" in lines[0]
    assert "python -m tireid_core.train baseline --row full" in lines[0]
