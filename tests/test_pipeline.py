"""`dvc repro` end to end on the tiny profile, in a scratch copy of the project; then a no-op."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tireid_core.params import deep_merge

REPO = Path(__file__).resolve().parent.parent


def _strip_paths(d):
    """Tiny sizes, but the demo paths that dvc.yaml declares."""
    if isinstance(d, dict):
        return {k: _strip_paths(v) for k, v in d.items() if k not in ("out_dir", "root")}
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
        proc = subprocess.run([*dvc, *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    run("init", "--no-scm", "-q")
    run("repro")
    metrics = json.loads((work / "runs/demo/baseline/metrics.json").read_text())
    assert {"best", "last"} <= set(metrics)
    assert (work / "runs/demo/notebooks/baseline.html").exists()
    assert (work / "data/simpedes/reid_raw.json").exists()
    second = run("repro")
    assert "up to date" in second, second
    shown = run("metrics", "show", "--json")
    assert '"R@1"' in shown
