"""Finished runs, as the notebooks read them: training happens in `python -m tireid_core.train`, never in a kernel.

    run = load_run("ssan", "full")            # params, metrics, history, eval records, test features
    run.metrics_table()                       # best-on-val and last-epoch test metrics
    paired_difference(baseline, run)          # R@1 gain over another run, with its paired-bootstrap 95 % interval
    exp = run.experiment()                    # dataset, tokenizer and the selected model (for analyses)

A run that does not exist yet raises `RunMissing`, whose message names the command that produces it. With
``train_if_missing=True`` a quick run is trained into ``runs/interactive/`` (never a DVC-tracked folder).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tireid_core.evaluation import REPORTED_KEYS, bootstrap_ci95, load_features, summary
from tireid_core.io import load_checkpoint, load_model_state
from tireid_core.methods import get_method
from tireid_core.params import RunParams, load_run_params, method_rows, resolve_params_file, set_section
from tireid_core.stats import paired_bootstrap_difference

PER_QUERY_FILE = "eval/test_best_per_query.json"  # written by `evaluation.final_evaluation`


class RunMissing(FileNotFoundError):
    """A notebook needs a run that has not been trained; the message says how to produce it."""


@dataclass
class FinishedRun:
    method: str
    row: str
    label: str
    params: RunParams
    run_dir: Path
    summary: dict  # metrics.json
    history: list[dict]  # one record per epoch (train losses, lr, val metrics)

    def eval_records(self, which: str = "best") -> dict[str, dict]:
        """Full test metric records per score matrix ("final", "global", ...) of the best or last model."""
        return json.loads((self.run_dir / "eval" / f"test_{which}.json").read_text())

    def per_score_table(self, which: str = "best") -> pd.DataFrame:
        """Headline test metrics of every score matrix the model exposes."""
        return pd.DataFrame({name: summary(m) for name, m in self.eval_records(which).items()}).T

    def per_query(self) -> dict:
        """Per-query test values of the selected model's "final" scores: {"R@1": [...], "AP": [...], "query_index":
        [...]} (fractions; query_index: the test queries that have a positive, in order)."""
        path = self.run_dir / PER_QUERY_FILE
        if not path.is_file():
            raise RunMissing(f"{path}: no per-query test values for {self.method} row {self.row!r} (runs trained "
                             "before per-query evaluation was added lack this file). Retrain the row, e.g. "
                             f"`{train_command(self.method, self.row, 'demo')}` for the demo profile.")
        return json.loads(path.read_text())

    def test_ci95(self) -> dict:
        """{"R@1": [low, high], "mAP": [low, high]}: 95 % bootstrap intervals of the best model's test metrics."""
        ci = self.summary.get("best", {}).get("test_ci95")
        if ci is None:  # metrics.json written before intervals were added: recompute them from the per-query file
            return bootstrap_ci95(self.per_query())
        return {k: [v["low"], v["high"]] for k, v in ci.items()}

    def features(self) -> tuple[dict, dict]:
        """(gallery, queries) feature dicts of the selected model on test."""
        return load_features(self.run_dir / "features_test.pt")

    def test_scores(self, model) -> dict:
        """Every named test score matrix of the selected model, recomputed from its saved features, with the test-time
        ones (`model.rerank`, e.g. NAFS's RVN) under the current parameters: changing those re-scores, never retrains."""
        import torch

        gallery, queries = self.features()
        with torch.no_grad():
            return model.rerank(model.similarities(gallery, queries), gallery)

    def rescored_table(self, exp) -> pd.DataFrame:
        """Headline test metrics of every score matrix of `test_scores` (the training run's own ones are identical to
        `per_score_table`, which reads them from its eval records)."""
        from tireid_core.evaluation import score_metrics

        metrics = score_metrics(exp, exp.test_set, self.test_scores(exp.model))
        return pd.DataFrame({name: summary(m) for name, m in metrics.items()}).T

    def experiment(self, load_best: bool = True):
        """Dataset, tokenizer and model of this run, with the selected checkpoint loaded, in eval mode."""
        from tireid_core.experiment import build_experiment

        exp = build_experiment(self.params)
        if load_best:
            path = self.run_dir / "checkpoints" / "best.pt"
            load_model_state(exp.model, load_checkpoint(path), path)
        exp.model.eval()
        return exp

    def metrics_table(self) -> pd.DataFrame:
        from tireid_core.analysis import metrics_table

        return metrics_table(self.summary)


def train_command(method: str, row: str, profile: str) -> str:
    if profile == "demo":
        return f"dvc repro train_{method}@{row}"
    return f"python -m tireid_core.train {method} --row {row} --profile {profile}"


def load_run(method: str, row: str = "full", params_file: str | Path | None = None, profile: str = "demo",
             sets: list[str] | None = None, train_if_missing: bool = False) -> FinishedRun:
    """The finished run of `row`; trains a quick one into runs/interactive/ when asked and none exists."""
    params_file = resolve_params_file(params_file)
    # A notebook may get overrides of several sections (the pipeline test points every section at scratch folders);
    # this run takes those of its own method and of the methods it reads (a student's teacher).
    own = (method, f"{method}_rows", *get_method(method).reads)
    sets = [s for s in sets or [] if set_section(s) in own]
    params = load_run_params(method, params_file, row=row, profile=profile, sets=sets)
    label = method_rows(method, params_file, profile=profile, sets=sets)[row].label
    run_dir = Path(params.out_dir)
    if not (run_dir / "metrics.json").exists():
        if not train_if_missing:
            raise RunMissing(f"{run_dir}: no finished run of {method} row {row!r}. Produce it with "
                             f"`{train_command(method, row, profile)}` from the repository root, or set "
                             "train_if_missing = True in this notebook's parameters for a run in runs/interactive/.")
        from tireid_core.engine import fit
        from tireid_core.experiment import build_experiment

        interactive = params_file.parent / "runs" / "interactive" / profile / method / row
        params.out_dir = str(interactive)
        run_dir = interactive
        if not (run_dir / "metrics.json").exists():
            fit(build_experiment(params))
    history = json.loads((run_dir / "history.json").read_text())
    summary_ = json.loads((run_dir / "metrics.json").read_text())
    return FinishedRun(method, row, label, params, run_dir, summary_, history)


def load_rows(method: str, params_file: str | Path | None = None, profile: str = "demo",
              sets: list[str] | None = None, train_if_missing: bool = False) -> dict[str, FinishedRun]:
    """Every row of `method` in params.yaml order (see `load_run`)."""
    return {row: load_run(method, row, params_file, profile, sets, train_if_missing)
            for row in method_rows(method, params_file, profile=profile, sets=sets)}


_PER_QUERY_KEYS = {"R@1": "R@1", "mAP": "AP", "AP": "AP"}


def paired_difference(run_a: FinishedRun, run_b: FinishedRun, metric: str = "R@1", *, n_resamples: int = 1000,
                      level: float = 0.95, seed: int = 0) -> dict:
    """{"diff", "low", "high"}: test `metric` ("R@1" or "mAP") of `run_b` minus that of `run_a`, in points, with its
    paired-bootstrap interval over the test queries (both runs' selected models, "final" scores)."""
    if metric not in _PER_QUERY_KEYS:
        raise ValueError(f"metric must be 'R@1' or 'mAP', got {metric!r}")
    a, b = run_a.per_query(), run_b.per_query()
    if a["query_index"] != b["query_index"]:
        raise ValueError(f"{run_a.label!r} ({run_a.run_dir}) and {run_b.label!r} ({run_b.run_dir}) were not evaluated "
                         f"on the same test queries ({len(a['query_index'])} vs {len(b['query_index'])} valid "
                         "queries, or other indices): a paired comparison needs the same test set")
    key = _PER_QUERY_KEYS[metric]
    return paired_bootstrap_difference(a[key], b[key], n_resamples=n_resamples, level=level, seed=seed)


def _interval(ci: list) -> str:
    return f"{ci[0]:.1f}–{ci[1]:.1f}"


def _difference(d: dict) -> str:
    return f"{d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def ablation_table(runs: dict[str, FinishedRun]) -> pd.DataFrame:
    """One row per run: its label, the flags that make it (from params.yaml), best-on-val test metrics.

    Uncertainty: "R@1 95% CI" and "mAP 95% CI" (bootstrap over test queries), and for every row after the first the
    difference to the previous row with its paired-bootstrap 95 % interval ("—" on the first row).
    """
    rows = {}
    previous = None
    for run in runs.values():
        best = run.summary["best"]
        ci = run.test_ci95()
        rows[run.label] = {**{k: best["test"][k] for k in REPORTED_KEYS if k in best["test"]},
                           "R@1 95% CI": _interval(ci["R@1"]), "mAP 95% CI": _interval(ci["mAP"])}
        for metric in ("R@1", "mAP"):
            rows[run.label][f"Δ{metric} vs previous [95% CI]"] = (
                "—" if previous is None else _difference(paired_difference(previous, run, metric)))
        rows[run.label].update({"epoch (best on val)": best["epoch"] + 1, "epochs": run.params.train.epochs})
        previous = run
    return pd.DataFrame.from_dict(rows, orient="index")


def identical_rows(runs: dict[str, FinishedRun]) -> list[tuple[str, str]]:
    """Pairs of rows whose resolved parameters are the same apart from out_dir and row: a table that compares them
    compares a configuration with itself (e.g. after `dvc exp run -S` switched a flag of one row)."""
    from tireid_core.params import to_dict

    def key(run: FinishedRun) -> str:
        d = to_dict(run.params)
        d.pop("out_dir"), d.pop("row")
        return json.dumps(d, sort_keys=True)

    names = list(runs)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if key(runs[a]) == key(runs[b])]


def baseline_comparison(name: str, global_run, params_file, profile: str, sets: list) -> list[str]:
    """Lines comparing a paper's global-only row (``global_only``, or the run's own row name) with the baseline's full
    row, the same kind of model: their paired difference, the budget caveat and what differs between them; or why
    they cannot be compared."""
    from tireid_core.analysis import agreement_line, budget_caveat, recipe_line

    row = global_run.row if global_run is not None else "global_only"
    title = f"{name} {row} vs baseline full"
    try:
        baseline = load_run("baseline", "full", params_file, profile, sets)
    except RunMissing as err:
        return [f"{title}: not compared, the baseline run is missing.\n  {err}"]
    try:
        same = paired_difference(baseline, global_run)
    except ValueError as err:  # the two runs were evaluated on different test queries
        return [f"{title}: not compared: {err}"]
    lines = [agreement_line(f"{name} {row} minus baseline full ({baseline.label})", same),
             budget_caveat([baseline, global_run]),
             f"  text encoders: {name} {global_run.params.model.text_encoder}, "
             f"baseline {baseline.params.model.text_encoder}"]
    if recipe_line(baseline.params.train) != recipe_line(global_run.params.train):
        lines.append(f"  recipes differ: baseline {recipe_line(baseline.params.train)}; "
                     f"{name} {recipe_line(global_run.params.train)}")
    return lines
