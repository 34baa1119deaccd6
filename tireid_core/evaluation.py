"""Evaluation of an `Experiment` on one split: features as dicts, every named score matrix, its metrics.

Text-to-image: captions are the queries, each split image once is the gallery (`retrieval_metrics`). Image ReID:
query images against gallery images, same identity and camera excluded (`reid_metrics`). Encoding runs in eval mode,
float32, no autocast; the model's `similarities` turns the feature dicts into named query × gallery scores.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from tireid_core import distributed as dist
from tireid_core.data.pairs import ImageDataset
from tireid_core.experiment import Experiment, TextImageEvalSet
from tireid_core.io import atomic_torch_save, load_checkpoint, load_model_state, write_json
from tireid_core.metrics import metrics_record, reid_metrics, retrieval_metrics
from tireid_core.runtime import image_batch, to_device
from tireid_core.stats import bootstrap_interval

SUMMARY_KEYS = ("R@1", "R@5", "R@10", "rSum", "mAP", "mINP")
REPORTED_KEYS = SUMMARY_KEYS + ("mAP_trapezoid",)  # summaries and curves; the last only with eval.also_trapezoid_map


def _concat(chunks: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}


def _cpu_float(feats: dict) -> dict:
    return {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in feats.items()}


@torch.no_grad()
def encode_images(exp: Experiment, paths: list, device: torch.device, model: nn.Module, desc: str,
                  progress: bool = True) -> dict:
    bs = exp.params.eval.batch_size
    images = ImageDataset(paths, exp.image_loader(train=False))
    chunks = []
    for start in tqdm(range(0, len(images), bs), desc=desc, leave=False, disable=not progress or dist.rank() != 0):
        batch = image_batch(torch.stack([images[i] for i in range(start, min(start + bs, len(images)))]), device,
                            exp.params.train.channels_last)
        chunks.append(_cpu_float(model.encode_images(batch)))
    return _concat(chunks)


@torch.no_grad()
def encode_texts(exp: Experiment, captions: list[str], device: torch.device, model: nn.Module, desc: str,
                 progress: bool = True) -> dict:
    bs, collate = exp.params.eval.batch_size, exp.collate()
    chunks = []
    for start in tqdm(range(0, len(captions), bs), desc=desc, leave=False, disable=not progress or dist.rank() != 0):
        chunks.append(_cpu_float(model.encode_texts(to_device(collate.tokenize(captions[start:start + bs]), device))))
    return _concat(chunks)


def encode_eval_set(exp: Experiment, evalset, device: torch.device, model: nn.Module | None = None,
                    progress: bool = True):
    """(gallery features, query features) of a split, each a dict of float32 CPU tensors (`progress`: the bars;
    notebooks turn them off)."""
    model = model or exp.model
    was_training = model.training
    model.eval()
    try:
        if isinstance(evalset, TextImageEvalSet):
            gallery = encode_images(exp, evalset.image_paths, device, model, f"{evalset.split} images", progress)
            queries = encode_texts(exp, evalset.captions, device, model, f"{evalset.split} texts", progress)
        else:
            gallery = encode_images(exp, [im.path for im in evalset.gallery], device, model,
                                    f"{evalset.split} gallery", progress)
            queries = encode_images(exp, [im.path for im in evalset.query], device, model, f"{evalset.split} query",
                                    progress)
    finally:
        model.train(was_training)
    return gallery, queries


def score_metrics(exp: Experiment, evalset, scores: dict[str, torch.Tensor],
                  per_query_for: str | None = None) -> dict[str, dict]:
    """Metrics of every named query × gallery score matrix; the one named `per_query_for` also gets the per-query
    values behind its R@1 and mAP (key "per_query", see `retrieval_metrics`)."""
    e = exp.params.eval
    if per_query_for is not None and per_query_for not in scores:
        raise KeyError(f"no score matrix named {per_query_for!r} (have {sorted(scores)})")
    if isinstance(evalset, TextImageEvalSet):
        qp, gp = torch.tensor(evalset.caption_pids), torch.tensor(evalset.image_pids)

        def metrics(s, convention, per_query=False):
            return retrieval_metrics(s, qp, gp, ap_convention=convention, tie_mode=e.tie_mode, per_query=per_query)
    else:
        q, g = evalset.query, evalset.gallery
        ids = [torch.tensor([getattr(im, a) for im in ims]) for ims, a in ((q, "pid"), (g, "pid"), (q, "camid"),
                                                                           (g, "camid"))]
        if e.tie_mode != "stable":
            raise ValueError(f"{exp.params.method}.eval.tie_mode: image ReID supports only the stable tie rule")

        def metrics(s, convention, per_query=False):
            return reid_metrics(-s, *ids, ap_convention=convention, per_query=per_query)
    out = {name: metrics(s, e.ap_convention, name == per_query_for) for name, s in scores.items()}
    if e.also_trapezoid_map:
        for name, s in scores.items():
            out[name]["mAP_trapezoid"] = metrics(s, "trapezoid")["mAP"]
    return out


def evaluate(exp: Experiment, evalset, device: torch.device, model: nn.Module | None = None,
             per_query_for: str | None = None) -> dict:
    """Metrics per similarity the model exposes ("final" first), with the features and score matrices
    (`per_query_for`: see `score_metrics`)."""
    model = model or exp.model
    gallery, queries = encode_eval_set(exp, evalset, device, model)
    with torch.no_grad():
        scores = model.similarities(gallery, queries)
    return {"metrics": score_metrics(exp, evalset, scores, per_query_for), "gallery_feats": gallery,
            "query_feats": queries, "scores": scores}


def summary(m: dict) -> dict:
    """The headline numbers of a metrics dict (image ReID has no rSum)."""
    return {k: round(float(m[k]), 2) for k in REPORTED_KEYS if k in m}


def per_query_record(per_query: dict) -> dict:
    """JSON-ready per-query values (`retrieval_metrics(..., per_query=True)["per_query"]`), rounded to 6 decimals."""
    return {"R@1": [round(float(v), 6) for v in per_query["R@1"]],
            "AP": [round(float(v), 6) for v in per_query["AP"]],
            "query_index": [int(i) for i in per_query["query_index"]]}


def bootstrap_ci95(per_query: dict) -> dict:
    """95 % percentile-bootstrap intervals (1000 resamples of the test queries, seed 0) of R@1 and mAP, in percent."""
    return {"R@1": list(bootstrap_interval(per_query["R@1"], n_resamples=1000, level=0.95, seed=0)),
            "mAP": list(bootstrap_interval(per_query["AP"], n_resamples=1000, level=0.95, seed=0))}


def final_evaluation(exp: Experiment, device: torch.device, history: list, best: dict) -> dict:
    """Evaluate the last and the selected (best) models on test; write metrics, eval records and test features.

    For the selected model's "final" scores, the per-query hit@1 and AP go to eval/test_best_per_query.json and their
    bootstrap intervals to metrics.json ["best"]["test_ci95"], so that ablation tables can show which gaps are noise.
    """
    params, model = exp.params, exp.model
    run_dir = exp.run_dir
    context = {
        "dataset": params.data.dataset,
        "split": "test",
        "direction": "t2i" if exp.text_image else "i2i",
        "similarity": getattr(model, "similarity", "cosine"),
        "precision": "fp32",
        "selection_split": params.train.selection_split if exp.val_set is not None else "last",
        "seed": params.train.seed,
    }
    last_eval = evaluate(exp, exp.test_set, device)
    last_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best_path = run_dir / "checkpoints" / "best.pt"
    load_model_state(model, load_checkpoint(best_path), best_path)
    best_eval = evaluate(exp, exp.test_set, device, per_query_for="final")
    per_query = best_eval["metrics"]["final"].pop("per_query")  # the eval records keep their usual keys
    summary_out: dict = {}
    for row, ev, epoch in (("best", best_eval, best["epoch"]), ("last", last_eval, len(history) - 1)):
        recs = {name: metrics_record(m, row=row, epoch=epoch, **context) for name, m in ev["metrics"].items()}
        write_json(run_dir / "eval" / f"test_{row}.json", recs)
        summary_out[row] = {"epoch": epoch, "test": summary(ev["metrics"]["final"])}
        if row == "best" and any("val/R@1" in h for h in history):
            summary_out[row]["val"] = {k: round(history[epoch][f"val/{k}"], 2) for k in REPORTED_KEYS
                                       if f"val/{k}" in history[epoch]}
    write_json(run_dir / "eval" / "test_best_per_query.json", per_query_record(per_query))
    # {"low", "high"} rather than a pair: DVC reads only scalars, so `dvc metrics show` / `dvc exp show` list them
    summary_out["best"]["test_ci95"] = {k: {"low": lo, "high": hi}
                                        for k, (lo, hi) in bootstrap_ci95(per_query).items()}
    summary_out["selection_split"] = context["selection_split"]
    summary_out["n_test_queries"] = int(best_eval["metrics"]["final"]["n_queries_valid"])
    write_json(run_dir / "history.json", history)
    # Features of the selected model, as the model's named dicts: analysis notebooks read this file.
    save_features(run_dir / "features_test.pt", best_eval["gallery_feats"], best_eval["query_feats"])
    write_json(run_dir / "metrics.json", summary_out)  # last: its presence marks a finished run
    model.load_state_dict(last_state)  # leave the model as trained
    return {"summary": summary_out, "best_eval": best_eval, "last_eval": last_eval, "history": history}


def save_features(path: Path, gallery: dict, queries: dict) -> None:
    atomic_torch_save({"gallery": gallery, "queries": queries}, path)


def load_features(path: Path) -> tuple[dict, dict]:
    """(gallery, queries) feature dicts written by `final_evaluation`."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    return data["gallery"], data["queries"]
