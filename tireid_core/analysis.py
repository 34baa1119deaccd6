"""Figures and tables the notebooks show; kept here so every notebook draws them the same way."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # notebooks render inline anyway; scripts and tests need no display
import matplotlib.pyplot as plt
import pandas as pd
import torch

from tireid_core.data.datasets import read_image


def pick_queries(n_queries: int, k: int, seed: int = 0) -> list[int]:
    """A seeded, spread-out choice of query indices (not cherry-picked)."""
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_queries, generator=g)[:k].tolist())


def retrieval_figure(evalset, scores: torch.Tensor, queries: list[int], topk: int = 10):
    """Top-k gallery images for text queries; green frame = same identity, red = wrong.

    Ranking uses the project's tie rule (stable sort, ties by ascending gallery index).
    """
    topk = min(topk, scores.shape[1])
    fig, axes = plt.subplots(len(queries), topk + 1, figsize=(1.3 * (topk + 1) + 2.5, 2.4 * len(queries)), squeeze=False)
    for row, q in enumerate(queries):
        order = torch.sort(scores[q], descending=True, stable=True).indices[:topk].tolist()
        ax = axes[row, 0]
        ax.axis("off")
        ax.text(0, 0.5, "\n".join(textwrap.wrap(evalset.captions[q], 28)[:9]), fontsize=7, va="center")
        for col, g in enumerate(order, start=1):
            ax = axes[row, col]
            ax.imshow(read_image(evalset.image_paths[g]))
            ok = evalset.image_pids[g] == evalset.caption_pids[q]
            for spine in ax.spines.values():
                spine.set_edgecolor("limegreen" if ok else "red")
                spine.set_linewidth(3)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{col}", fontsize=7)
    fig.tight_layout()
    return fig


def history_frame(history: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(history).set_index("epoch")


def plot_history(history: list[dict]):
    """Training loss terms and validation R@1 / mAP per epoch."""
    df = history_frame(history)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    df[[c for c in df.columns if c.startswith("train/")]].plot(ax=a, marker="o")
    a.set_title("training losses")
    vals = [c for c in ("val/R1", "val/mAP", "test/R1", "test/mAP") if c in df.columns]
    if vals:
        df[vals].plot(ax=b, marker="o")
        b.set_title("selection split metrics (%)")
    fig.tight_layout()
    return fig


def metrics_table(summary: dict) -> pd.DataFrame:
    """best / last rows of a run's metrics.json as a table."""
    rows = {}
    for row in ("best", "last"):
        if row in summary:
            rows[f"{row} (epoch {summary[row]['epoch'] + 1})"] = summary[row]["test"]
    return pd.DataFrame(rows).T


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure atomically (figures are pipeline outputs too)."""
    from tireid_core.io import atomic_write_bytes
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


REFERENCE_RESULTS = Path(__file__).resolve().parent.parent / "references" / "reference_results.yaml"


def reference_results(method: str, dataset: str | None = None) -> pd.DataFrame:
    """Numbers the papers report (references/reference_results.yaml), for side-by-side tables."""
    import yaml

    rows = yaml.safe_load(REFERENCE_RESULTS.read_text())["results"]
    rows = [r for r in rows if r.get("method") == method and (dataset is None or r.get("dataset") == dataset)]
    if not rows:
        raise KeyError(f"no reference results for method={method!r} dataset={dataset!r} in {REFERENCE_RESULTS}")
    return pd.DataFrame(rows)
