"""Uncertainty in run tables: per-query test values written by final_evaluation, bootstrap intervals and paired
differences in `runs.ablation_table` / `runs.paired_difference`."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tireid_core.io import write_json
from tireid_core.runs import FinishedRun, RunMissing, ablation_table, paired_difference
from tireid_core.stats import bootstrap_interval, paired_bootstrap_difference


def fake_run(root: Path, name: str, r1, ap, query_index=None, with_ci=True, epochs=4) -> FinishedRun:
    """A finished-run folder as final_evaluation leaves it (metrics.json, eval/test_best_per_query.json), read back."""
    run_dir = root / name
    r1, ap = np.asarray(r1, dtype=float), np.asarray(ap, dtype=float)
    query_index = list(range(len(r1))) if query_index is None else query_index
    write_json(run_dir / "eval" / "test_best_per_query.json",
               {"R@1": r1.tolist(), "AP": ap.tolist(), "query_index": query_index})
    best = {"epoch": epochs - 2, "test": {"R@1": round(100 * r1.mean(), 2), "R@5": 90.0, "R@10": 95.0,
                                          "rSum": 300.0, "mAP": round(100 * ap.mean(), 2), "mINP": 20.0}}
    if with_ci:
        best["test_ci95"] = {k: dict(zip(("low", "high"), bootstrap_interval(v))) for k, v in (("R@1", r1), ("mAP", ap))}
    write_json(run_dir / "metrics.json", {"best": best, "last": {"epoch": epochs - 1, "test": best["test"]},
                                         "selection_split": "val", "n_test_queries": len(r1)})
    summary = json.loads((run_dir / "metrics.json").read_text())
    params = SimpleNamespace(train=SimpleNamespace(epochs=epochs))  # all that ablation_table reads of the params
    return FinishedRun("ssan", name, f"label {name}", params, run_dir, summary, [])


def three_runs(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    r1_a = (rng.random(n) < 0.4).astype(float)
    r1_b = r1_a.copy()
    r1_b[rng.choice(np.flatnonzero(r1_a == 0), 20, replace=False)] = 1.0  # +5 points, on the same queries
    ap_a = rng.random(n)
    ap_b = np.clip(ap_a + 0.03, 0, 1)
    return {"global_only": fake_run(tmp_path, "global_only", r1_a, ap_a),
            "parts": fake_run(tmp_path, "parts", r1_b, ap_b, with_ci=False),
            "full": fake_run(tmp_path, "full", r1_b, ap_b)}


def test_table_has_intervals_and_paired_differences(tmp_path):
    runs = three_runs(tmp_path)
    table = ablation_table(runs)
    assert list(table.index) == ["label global_only", "label parts", "label full"]
    assert list(table.columns) == ["R@1", "R@5", "R@10", "rSum", "mAP", "mINP", "R@1 95% CI", "mAP 95% CI",
                                   "ΔR@1 vs previous [95% CI]", "ΔmAP vs previous [95% CI]", "epoch (best on val)",
                                   "epochs"]
    assert table["R@1"].dtype == float and table["epochs"].tolist() == [4, 4, 4]  # numbers stay numbers
    first, second, third = (table.loc[f"label {n}"] for n in runs)
    assert first["ΔR@1 vs previous [95% CI]"] == first["ΔmAP vs previous [95% CI]"] == "—"

    pq = {name: run.per_query() for name, run in runs.items()}
    low, high = bootstrap_interval(pq["global_only"]["R@1"])
    assert first["R@1 95% CI"] == f"{low:.1f}–{high:.1f}"
    # a run whose metrics.json has no interval gets it from its per-query file, the same way
    assert second["R@1 95% CI"] == third["R@1 95% CI"] and second["mAP 95% CI"] == third["mAP 95% CI"]

    d = paired_bootstrap_difference(pq["global_only"]["R@1"], pq["parts"]["R@1"])
    assert d["diff"] == 5.0 and 0 < d["low"] < d["high"]
    assert second["ΔR@1 vs previous [95% CI]"] == f"+5.00 [{d['low']:+.2f}, {d['high']:+.2f}]"
    assert second["ΔmAP vs previous [95% CI]"].startswith("+")
    # the same per-query values as the previous row: a zero difference with a [0, 0] interval
    assert third["ΔR@1 vs previous [95% CI]"] == third["ΔmAP vs previous [95% CI]"] == "+0.00 [+0.00, +0.00]"


def test_paired_difference_of_two_runs(tmp_path):
    runs = three_runs(tmp_path)
    a, b = runs["global_only"], runs["parts"]
    r1 = paired_difference(a, b)
    assert r1 == paired_bootstrap_difference(a.per_query()["R@1"], b.per_query()["R@1"])
    assert paired_difference(b, a)["diff"] == -r1["diff"]
    m = paired_difference(a, b, metric="mAP")
    assert m == paired_bootstrap_difference(a.per_query()["AP"], b.per_query()["AP"])
    with pytest.raises(ValueError, match="metric"):
        paired_difference(a, b, metric="mINP")


def test_runs_on_other_queries_are_not_compared(tmp_path):
    a = fake_run(tmp_path, "a", [1, 0, 1], [1, 0.5, 1])
    b = fake_run(tmp_path, "b", [1, 1, 1], [1, 1, 1], query_index=[0, 2, 3])
    with pytest.raises(ValueError, match="'label a'.*'label b'.*same test queries"):
        ablation_table({"a": a, "b": b})


def test_missing_per_query_file_is_named(tmp_path):
    run = fake_run(tmp_path, "old", [1, 0], [1, 0.5], with_ci=False)
    (run.run_dir / "eval" / "test_best_per_query.json").unlink()
    with pytest.raises(RunMissing, match="test_best_per_query.json"):
        run.per_query()
    with pytest.raises(RunMissing, match="test_best_per_query.json"):
        ablation_table({"old": run})


def test_final_evaluation_writes_per_query_values_and_intervals(tiny_params):
    from tireid_core.engine import fit
    from tireid_core.experiment import build_experiment

    exp = build_experiment(tiny_params())
    result = fit(exp)
    run_dir = exp.run_dir
    run = FinishedRun("baseline", "full", "baseline", exp.params, run_dir,
                      json.loads((run_dir / "metrics.json").read_text()), result["history"])
    assert run.summary == result["summary"]
    pq = run.per_query()
    assert set(pq) == {"R@1", "AP", "query_index"}
    best = run.summary["best"]
    assert len(pq["R@1"]) == len(pq["AP"]) == len(pq["query_index"]) == run.summary["n_test_queries"]
    assert round(100 * np.mean(pq["R@1"]), 2) == pytest.approx(best["test"]["R@1"], abs=0.011)
    assert round(100 * np.mean(pq["AP"]), 2) == pytest.approx(best["test"]["mAP"], abs=0.011)
    assert set(best["test"]) == {"R@1", "R@5", "R@10", "rSum", "mAP", "mINP"}
    # the file holds values rounded to 6 decimals; the intervals were computed before rounding
    ci = {k: [v["low"], v["high"]] for k, v in best["test_ci95"].items()}  # scalars, so DVC lists them
    assert ci["R@1"] == pytest.approx(list(bootstrap_interval(pq["R@1"])), abs=0.011) == run.test_ci95()["R@1"]
    assert ci["mAP"] == pytest.approx(list(bootstrap_interval(pq["AP"])), abs=0.011)
    assert ci["R@1"][0] <= best["test"]["R@1"] <= ci["R@1"][1]
    record = json.loads((run.run_dir / "eval" / "test_best.json").read_text())["final"]
    assert "per_query" not in record
    table = ablation_table({"full": run})
    assert table.iloc[0]["ΔR@1 vs previous [95% CI]"] == "—"
    lo, hi = ci["mAP"]
    assert table.iloc[0]["mAP 95% CI"] == f"{lo:.1f}–{hi:.1f}"
