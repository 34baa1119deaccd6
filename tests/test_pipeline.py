"""The pipeline: dvc.yaml is generated and up to date, stage dependencies follow the imports, and `dvc repro` runs end
to end on the tiny profile in a scratch copy of the project; then a no-op."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tireid_core.params import deep_merge
from tireid_core.pipeline import build_stages, import_closure, imports_of_source, main as pipeline_main

REPO = Path(__file__).resolve().parent.parent


PATH_KEYS = ("out_dir", "root", "out", "data", "exclude", "pretrained", "text_model")


def _strip_paths(d):
    """Tiny sizes, but the demo paths that dvc.yaml declares (datasets, run folders, stand-ins)."""
    if isinstance(d, dict):
        return {k: _strip_paths(v) for k, v in d.items() if not (k in PATH_KEYS and isinstance(v, str))}
    return d


@pytest.mark.slow
def test_dvc_repro_tiny_then_noop(tmp_path):
    work = tmp_path / "project"
    work.mkdir()
    for item in ("tireid_core", "notebooks", "configs", "references", "dvc.yaml"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / item)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    tiny = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    (work / "params.yaml").write_text(yaml.safe_dump(deep_merge(params, _strip_paths(tiny)), sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(work), "DVC_NO_ANALYTICS": "1"}
    dvc = [sys.executable, "-m", "dvc"]

    def run(*args):
        proc = subprocess.run([*dvc, *args], cwd=work, env=env, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    run("init", "--no-scm", "-q")
    run("repro")
    metrics = json.loads((work / "runs/demo/baseline/full/metrics.json").read_text())
    assert {"best", "last"} <= set(metrics)
    assert (work / "runs/demo/notebooks/baseline.html").exists()
    assert (work / "data/simpedes/reid_raw.json").exists()
    second = run("repro")
    assert "up to date" in second, second
    shown = run("metrics", "show", "--json")
    assert '"R@1"' in shown
    # editing a notebook's prose re-runs that notebook only: training never depends on a notebook
    nb_path = work / "notebooks" / "ssan.ipynb"
    nb = json.loads(nb_path.read_text())
    next(c for c in nb["cells"] if c["cell_type"] == "markdown")["source"].append("\nAn edited sentence.")
    nb_path.write_text(json.dumps(nb))
    status = json.loads(run("status", "--json"))
    assert set(status) == {"ssan"}, status


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
