"""The pipeline: dvc.yaml is generated and up to date, stage dependencies follow the imports, and `dvc repro` runs end
to end on the tiny profile in a scratch copy of the project; then a no-op."""
import json
from pathlib import Path

import pytest

from tireid_core.params import method_rows
from tireid_core.pipeline import build_stages, import_closure, imports_of_source, main as pipeline_main

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_dvc_repro_tiny_then_noop(tiny_pipeline):
    work = tiny_pipeline.work
    metrics = json.loads((work / "runs/demo/baseline/full/metrics.json").read_text())
    assert {"best", "last"} <= set(metrics)
    assert (work / "runs/demo/notebooks/baseline.html").exists()
    assert (work / "data/simpedes/reid_raw.json").exists()
    second = tiny_pipeline.dvc("repro")
    assert "up to date" in second, second
    shown = tiny_pipeline.dvc("metrics", "show", "--json")
    assert '"R@1"' in shown
    # editing a notebook's prose re-runs that notebook only: training never depends on a notebook
    nb_path = work / "notebooks" / "ssan.ipynb"
    original = nb_path.read_text()
    nb = json.loads(original)
    next(c for c in nb["cells"] if c["cell_type"] == "markdown")["source"].append("\nAn edited sentence.")
    nb_path.write_text(json.dumps(nb))
    try:
        status = json.loads(tiny_pipeline.dvc("status", "--json"))
    finally:
        nb_path.write_text(original)
    assert set(status) == {"ssan"}, status


def _experiment(shown, name: str) -> dict:
    """The entry of experiment `name` in `dvc exp show --json` (searched, so the test does not pin DVC's nesting)."""
    stack = [shown]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("name") == name and "data" in item:
                return item["data"]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    raise AssertionError(f"no experiment {name!r} in dvc exp show --json")


@pytest.mark.slow
def test_an_experiment_reads_back_its_parameters_and_metrics(tiny_pipeline):
    """`dvc exp run -S` then `dvc exp show --json`: the README's "Changing a parameter" workflow on the tiny profile."""
    tiny_pipeline.dvc("exp", "run", "--temp", "-n", "seed1", "-S", "baseline.train.seed=1", "train_baseline@full")
    data = _experiment(json.loads(tiny_pipeline.dvc("exp", "show", "--json")), "seed1")
    assert data["params"]["params.yaml"]["data"]["baseline"]["train"]["seed"] == 1
    metrics = data["metrics"]["runs/demo/baseline/full/metrics.json"]["data"]
    low, high = metrics["best"]["test_ci95"]["R@1"]["low"], metrics["best"]["test_ci95"]["R@1"]["high"]
    assert low <= metrics["best"]["test"]["R@1"] <= high
    assert tiny_pipeline.git("status", "--porcelain") == ""  # --temp: the workspace is untouched


@pytest.mark.slow
def test_dvc_plots_show_renders_without_the_internet(tiny_pipeline, tmp_path):
    """The offline template (`make install`) inlines Vega: the page `dvc plots show` writes loads nothing from a CDN and
    draws every declared plot, one curve per ablation row."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "tireid_core.offline_plots", "--repo", str(tiny_pipeline.work)], check=True,
                   env=tiny_pipeline.env, capture_output=True)
    tiny_pipeline.dvc("plots", "show", "-o", str(tmp_path / "plots"))
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "<script src=" not in page
    assert "vegaEmbed(" in page and "function" in page  # the library itself is on the page
    for method in ("ssan", "nafs"):
        assert f"{method}: val R@1 per epoch, every row" in page
        for row in method_rows(method, REPO / "params.yaml"):  # DVC names each curve by its file (common prefix cut)
            assert f"{row}/dvclive/plots/metrics/val/R@1.tsv" in page, (method, row)


def test_dvc_yaml_is_the_generated_one():
    assert pipeline_main(["--check"]) == 0, "dvc.yaml is stale: run `python -m tireid_core.pipeline`"


def test_stage_dependencies_cover_what_the_code_imports():
    stages = build_stages()["stages"]
    ssan = set(stages["train_ssan"]["do"]["deps"])
    assert {"tireid_core/models/ssan.py", "tireid_core/engine.py", "tireid_core/losses.py",
            "tireid_core/data/pairs.py", "data/simpedes"} <= ssan
    assert "tireid_core/models/nafs.py" not in ssan  # another paper's model never retrains SSAN
    analysis = set(stages["nafs_analysis"]["deps"])
    assert {"notebooks/nafs_analysis.ipynb", "tireid_core/models/nafs_scoring.py", "tireid_core/runs.py",
            "runs/demo/nafs/per_scale/metrics.json"} <= analysis
    # every file a stage's code imports is a dependency, transitively
    for name, stage in stages.items():
        body = stage.get("do", stage)
        files = {d for d in body["deps"] if d.endswith(".py")}
        assert set(map(str, import_closure({f.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
                                            for f in files}))) <= files, name


def test_a_method_that_reads_another_depends_on_its_finished_runs():
    """Method.reads: every row of the LCR²S student depends on every teacher row's checkpoints, resolved parameters
    and metrics (one list for the whole foreach), and its notebooks read the teacher runs too."""
    stages = build_stages()["stages"]
    deps = set(stages["train_lcr2s"]["do"]["deps"])
    for row in method_rows("lcr2s_teacher", REPO / "params.yaml"):
        assert {f"runs/demo/lcr2s_teacher/{row}/{f}" for f in ("checkpoints", "params.resolved.yaml",
                                                               "metrics.json")} <= deps
        assert f"runs/demo/lcr2s_teacher/{row}/features_test.pt" in stages["lcr2s_analysis"]["deps"]
    assert "lcr2s_teacher" in stages["lcr2s_analysis"]["params"]
    assert not any("lcr2s_teacher" in d for d in stages["train_lcr2s_teacher"]["do"]["deps"] if d.startswith("runs/"))


def test_imports_inside_functions_count():
    found = imports_of_source("def f():\n    from tireid_core.models.ssan import SSAN\n")
    assert found == {"tireid_core.models.ssan"}


def _package_graph() -> dict[str, set[str]]:
    graph = {}
    for path in (REPO / "tireid_core").rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        graph[module] = {m for m in imports_of_source(path.read_text()) if m != module}
    return graph


def test_core_has_no_import_cycle():
    graph = _package_graph()
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [node, dep]))
            if dep not in state:
                visit(dep, stack + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_nothing_links_outside_the_repository():
    offenders = []
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO)
        if path.is_file() and rel.parts[0] not in (".git", ".venv", "data", "runs", ".dvc") and path.suffix in (
                ".py", ".ipynb", ".md", ".yaml", ".yml", ".toml", ".cfg", ".txt") and "egg-info" not in str(rel):
            if "shared" + "/specs" in path.read_text(errors="ignore"):
                offenders.append(str(rel))
    assert not offenders
