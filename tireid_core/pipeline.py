"""Writes `dvc.yaml` from the method registry, params.yaml's rows and the import graph, so no stage is kept by hand.

    python -m tireid_core.pipeline           # rewrite dvc.yaml
    python -m tireid_core.pipeline --check   # exit 1 if dvc.yaml is not what this would write (a test runs it)

Every stage depends on exactly the core files its entry module (and notebook) imports, followed transitively through
the package, so a change to one paper's model retrains that paper only, and a missing dependency cannot happen.
Stages: the SimPEDES data, the tour notebook, the separate pretraining draw and the pretrained stand-ins made from it
(``pretrain_image``, ``pretrain_text``; tireid_core/pretrain.py), then per method one ``train_<method>`` stage over its rows
(``<method>_rows`` in params.yaml), the method notebook and the analysis notebook, which read the finished runs.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "tireid_core"
# What each training run writes into its row folder (metrics.json is declared as a metric, cached like the outputs).
RUN_OUTPUTS = ("checkpoints", "features_test.pt", "eval", "history.json", "params.resolved.yaml", "dvclive")
BASELINE = "baseline"  # the method every paper's global-only row is compared with
HEADER = ("# Written by `python -m tireid_core.pipeline` from params.yaml and the import graph; do not edit by hand\n"
          "# (tests/test_pipeline.py fails when this file is stale). `dvc repro` runs the demo profile on SimPEDES.\n")


def module_file(module: str, root: Path = REPO) -> Path | None:
    """The source file of a module of the package (a package's __init__.py), or None outside it."""
    base = root / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imports_of_source(source: str, root: Path = REPO) -> set[str]:
    """Modules of the package that `source` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import name`: the submodule pkg.name when there is one, else pkg itself
            names = [f"{node.module}.{a.name}" if module_file(f"{node.module}.{a.name}", root) else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == PACKAGE and module_file(name, root) is not None:
                found.add(name)
    return found


def _with_parents(module: str) -> list[str]:
    """Importing a.b.c runs a/__init__, a/b/__init__ and a/b/c."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_closure(modules: set[str], root: Path = REPO) -> set[Path]:
    """Files of every package module reachable from `modules` (relative to root)."""
    todo = [m for mod in modules for m in _with_parents(mod)]
    seen, files = set(), set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = module_file(mod, root)
        if path is None:
            continue
        files.add(path.relative_to(root))
        for dep in imports_of_source(path.read_text(), root):
            todo.extend(_with_parents(dep))
    return files


def notebook_source(path: Path) -> str:
    """The Python of a notebook's code cells (IPython magics and shell lines dropped)."""
    cells = json.loads(path.read_text())["cells"]
    lines = [line for c in cells if c["cell_type"] == "code" for line in "".join(c["source"]).splitlines()
             if not line.lstrip().startswith(("%", "!"))]
    return "\n".join(lines)


def code_deps(entry_modules: set[str], notebook: Path | None = None, root: Path = REPO) -> list[str]:
    modules = set(entry_modules)
    if notebook is not None:
        modules |= imports_of_source(notebook_source(notebook), root)
    return sorted(str(p) for p in import_closure(modules, root))


def _rel(path: str, root: Path) -> str:
    return str(Path(path).resolve().relative_to(root.resolve()))


def build_stages(root: Path = REPO) -> dict:
    from tireid_core.methods import available_methods, get_method
    from tireid_core.params import load_run_params, load_section, load_sections, method_rows

    params_file = root / "params.yaml"
    data_dir = load_section("simpedes", params_file)["out_dir"]
    stages: dict = {
        "simpedes": {
            "cmd": f"python -m tireid_core.data.simpedes --params params.yaml --out {data_dir}",
            "deps": code_deps({"tireid_core.data.simpedes.__main__"}, root=root),
            "params": ["simpedes"],
            "outs": [data_dir],
        },
    }
    from tireid_core.pretrain import STAND_INS, load_pretrain_params, stand_in_output

    pretrain_dir = load_section("simpedes_pretrain", params_file)["out_dir"]
    stages["simpedes_pretrain"] = {
        "cmd": f"python -m tireid_core.data.simpedes --params params.yaml --section simpedes_pretrain --out {pretrain_dir}",
        "deps": code_deps({"tireid_core.data.simpedes.__main__"}, root=root),
        "params": ["simpedes_pretrain"],
        "outs": [pretrain_dir],
    }
    pretrain_params, _ = load_pretrain_params(params_file)
    stand_ins = {}  # output path (relative to the repository) -> stage
    for name in STAND_INS:
        out = stand_in_output(name, pretrain_params)
        stand_ins[out] = f"pretrain_{name}"
        stages[f"pretrain_{name}"] = {
            "cmd": f"python -m tireid_core.pretrain {name}",
            "deps": [pretrain_dir, data_dir, *code_deps({"tireid_core.pretrain"}, root=root)],
            "params": ["simpedes_pretrain.seed", "pretrain.data", "pretrain.exclude", f"pretrain.{name}"],
            "outs": [out],
        }
    plots = []

    def notebook_stage(name: str, params: list[str], deps: list[str], outs: list[str], metrics: list[str] = ()) -> None:
        nb = root / "notebooks" / f"{name}.ipynb"
        stage = {
            "cmd": f"python -m tireid_core.run {name}",
            "deps": [f"notebooks/{name}.ipynb", *code_deps({"tireid_core.run"}, nb, root), *deps],
            "params": params,
            "outs": [f"runs/demo/notebooks/{name}.ipynb", f"runs/demo/notebooks/{name}.html", *outs],
        }
        if metrics:
            stage["metrics"] = metrics
        stages[name] = stage

    notebook_stage("simpedes_tour", ["simpedes"], [data_dir, "references/reference_results.yaml"], [])
    baseline_dir = _rel(load_run_params(BASELINE, params_file, row="full").out_dir, root)
    for method in available_methods():
        rows = method_rows(method, params_file)
        run_dirs = {row: _rel(load_run_params(method, params_file, row=row).out_dir, root) for row in rows}
        method_dir = str(Path(run_dirs[next(iter(rows))]).parent)
        row_dir = f"{method_dir}/${{key}}"
        weights = _stand_ins_used(load_run_params(method, params_file), stand_ins, root)
        # the finished runs this method's training loads (Method.reads: a student's teachers), every row of each, so
        # that all rows of the foreach share one list of deps
        read_dirs = [_rel(load_run_params(name, params_file, row=row).out_dir, root)
                     for name in get_method(method).reads for row in method_rows(name, params_file)]
        stages[f"train_{method}"] = {
            "foreach": f"${{{method}_rows}}",
            "do": {
                "cmd": f"python -m tireid_core.train {method} --row ${{key}}",
                "deps": [data_dir, *weights, *code_deps({"tireid_core.train", "tireid_core.engine",
                                                          "tireid_core.experiment", f"tireid_core.models.{method}"},
                                                         root=root),
                         *[f"{d}/{f}" for d in read_dirs
                           for f in ("checkpoints", "params.resolved.yaml", "metrics.json")]],
                "params": [*_training_params(method, params_file), f"{method}_rows.${{key}}"],
                "outs": [f"{row_dir}/{o}" for o in RUN_OUTPUTS],
                # cached (not git-tracked: runs/ is ignored), so `dvc exp show` reads each experiment's metrics
                "metrics": [f"{row_dir}/metrics.json"],
            },
        }
        finished = [f"{d}/{f}" for d in [*run_dirs.values(), *read_dirs]
                    for f in ("metrics.json", "history.json", "eval", "features_test.pt", "checkpoints")]
        refs = ["references/reference_results.yaml"]
        reads = [data_dir, *weights, *finished, *refs]  # notebooks rebuild the selected model: the stand-ins too
        # a method's notebooks read the runs it reads, too (a student's notebook shows its teacher)
        sections = [method, f"{method}_rows", *[s for name in get_method(method).reads for s in (name, f"{name}_rows")]]
        if (root / "notebooks" / f"{method}.ipynb").exists():
            notebook_stage(method, list(sections), reads, [f"{method_dir}/figures"])
        if (root / "notebooks" / f"{method}_analysis.ipynb").exists():
            # an analysis compares the paper's global-only row with the baseline's finished run
            baseline = [] if method == BASELINE else [f"{baseline_dir}/{f}" for f in ("metrics.json", "eval")]
            notebook_stage(f"{method}_analysis", list(sections), [*reads, *baseline], [f"{method_dir}/analysis/figures"],
                           metrics=[f"{method_dir}/analysis/analysis.json"])
        plots.append({f"{method}_val_R@1": {
            "template": "linear", "x": "step", "title": f"{method}: val R@1 per epoch, every row",
            "y": {f"{d}/dvclive/plots/metrics/val/R@1.tsv": "R@1" for d in run_dirs.values()}}})
    if "noisy_correspondence" in load_sections(params_file):
        from tireid_core.data.noisy import load_noisy_settings

        noisy = load_noisy_settings(params_file)
        noisy_dir = f"{noisy.data_dir}/${{item}}"
        stages["simpedes_noisy"] = {
            "foreach": "${noisy_correspondence.rates}",
            "do": {
                "cmd": f"python -m tireid_core.data.noisy --dataset simpedes --root {data_dir} --rate ${{item}} "
                       f"--seed ${{noisy_correspondence.seed}} --out {noisy_dir}",
                "deps": [data_dir, *code_deps({"tireid_core.data.noisy"}, root=root)],
                "params": ["noisy_correspondence.seed"],
                "outs": [noisy_dir],
            },
        }
        reads = []
        for method in noisy.methods:
            # the full row at each rate: the method's own training stage with two overrides (NoisySettings.run_sets)
            row_dir = f"{noisy.runs_dir}/${{item}}/{method}/full"
            sets = " ".join(f"--set {s}" for s in noisy.run_sets(method, "${item}"))
            train = stages[f"train_{method}"]["do"]
            stages[f"train_{method}_noisy"] = {
                "foreach": "${noisy_correspondence.rates}",
                "do": {
                    "cmd": f"python -m tireid_core.train {method} --row full {sets}",
                    "deps": [noisy_dir if d == data_dir else d for d in train["deps"]],
                    "params": [*_training_params(method, params_file), f"{method}_rows.full"],
                    "outs": [f"{row_dir}/{o}" for o in RUN_OUTPUTS],
                    "metrics": [f"{row_dir}/metrics.json"],
                },
            }
            clean = _rel(load_run_params(method, params_file, row="full").out_dir, root)
            reads += [f"{clean}/{f}" for f in ("metrics.json", "eval")]
            reads += [f"{noisy.runs_dir}/{rate:g}/{method}/full/{f}" for rate in noisy.rates
                      for f in ("metrics.json", "eval")]
        notebook_stage("noisy_correspondence", ["noisy_correspondence", *noisy.methods],
                       [*reads, "references/reference_results.yaml"],
                       [f"{noisy.runs_dir}/summary.json", f"{noisy.runs_dir}/figures"])
    if (root / "notebooks" / "collection.ipynb").exists():
        from tireid_core.collection import PAPERS

        sections, reads = [], ["references/reference_results.yaml"]
        for paper in PAPERS:
            method = paper.method
            method_dir = _rel(load_run_params(method, params_file).out_dir, root)
            sections += [s for name in (method, *get_method(method).reads) for s in (name, f"{name}_rows")]
            reads += [f"{method_dir}/{row}/{f}" for row in paper.rows for f in ("metrics.json", "eval")]
            reads += sorted({f"{method_dir}/{Path(f.source).parent}" for f in paper.figures})
        notebook_stage("collection", list(dict.fromkeys(sections)), reads, ["figures", "runs/demo/collection"])
    return {"stages": stages, "plots": plots}


def _training_params(method: str, params_file: Path) -> list[str]:
    """The params a training stage depends on: the method's whole section, less its test-time keys (`Method.test_time`),
    which only re-score a finished run. Sub-sections holding a test-time key are listed key by key."""
    from tireid_core.methods import get_method
    from tireid_core.params import load_section

    test_time = set(get_method(method).test_time)
    if not test_time:
        return [method]

    def expand(prefix: str, node) -> list[str]:
        if not any(k == prefix or k.startswith(prefix + ".") for k in test_time):
            return [f"{method}.{prefix}"]
        if not isinstance(node, dict):
            return []
        return [key for name, value in node.items() for key in expand(f"{prefix}.{name}", value)]

    section = load_section(method, params_file)
    return [key for name, value in section.items() for key in expand(name, value)]


def _stand_ins_used(params, stand_ins: dict[str, str], root: Path) -> list[str]:
    """The stand-in outputs a method's parameters load (its backbone file, its BERT folder), as stage deps."""
    used = []
    for path in (params.model.pretrained, params.model.text_model):
        if isinstance(path, str) and Path(path).is_absolute():
            try:
                rel = _rel(path, root)
            except ValueError:  # outside the repository: not made by the pipeline
                continue
            used += [out for out in stand_ins if rel == out or rel.startswith(out + "/")]
    return used


def render(root: Path = REPO) -> str:
    return HEADER + yaml.safe_dump(build_stages(root), sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 when dvc.yaml differs from what would be written")
    args = ap.parse_args(argv)
    text, target = render(), REPO / "dvc.yaml"
    if args.check:
        if target.read_text() != text:
            print(f"{target} is stale: run `python -m tireid_core.pipeline`", file=sys.stderr)
            return 1
        return 0
    from tireid_core.io import atomic_write_text

    atomic_write_text(target, text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
