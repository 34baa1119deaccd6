"""Figures and tables the notebooks show; kept here so every notebook draws them the same way."""
from __future__ import annotations

import textwrap
from pathlib import Path

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
    vals = [c for c in ("val/R@1", "val/mAP", "test/R@1", "test/mAP") if c in df.columns]
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


# ----------------------------------------------------------------------------- SimPEDES


def simpedes_identity_grid(root: str | Path, meta: dict, pids: list[int], max_images: int = 4):
    """For each identity: its texture atlas, then its rendered images (camera / view in the title),
    then the first caption of each image under the row."""
    root = Path(root)
    by_id: dict[int, list[tuple[int, dict]]] = {}
    for i, im in enumerate(meta["images"]):
        by_id.setdefault(im["id"], []).append((i, im))
    reid = __import__("json").loads((root / "reid_raw.json").read_text())
    fig, axes = plt.subplots(len(pids), max_images + 1, figsize=(1.6 * (max_images + 1) + 3.5, 2.6 * len(pids)),
                             squeeze=False)
    for row, pid in enumerate(pids):
        ident = meta["identities"][pid - 1]
        ax = axes[row, 0]
        ax.imshow(read_image(root / ident["texture"]), interpolation="nearest")
        twin = f" (twin of {ident['twin_of']})" if ident.get("twin_of") else ""
        ax.set_title(f"id {pid} atlas{twin}", fontsize=7)
        ax.axis("off")
        captions = []
        for col, (i, im) in enumerate(by_id[pid][:max_images], start=1):
            ax = axes[row, col]
            ax.imshow(read_image(root / "imgs" / im["file_path"]))
            occl = " occl." if im.get("occlusion_box") else ""
            ax.set_title(f"cam {im['camera']} {im['view']}{occl}", fontsize=7)
            ax.axis("off")
            captions.append(f"[{col}] {reid[i]['captions'][0]}")
        for col in range(len(by_id[pid][:max_images]) + 1, max_images + 1):
            axes[row, col].axis("off")
        axes[row, -1].text(1.08, 0.5, "\n".join(textwrap.fill(c, 48) for c in captions), fontsize=6.5,
                           va="center", transform=axes[row, -1].transAxes)
    fig.tight_layout()
    return fig


def caption_statistics(dataset) -> pd.DataFrame:
    """Caption length (words) and vocabulary per split."""
    from tireid_core.data.tokenizers import word_tokens

    rows = {}
    for split in ("train", "val", "test"):
        toks = [word_tokens(c) for e in dataset.split(split) for c in e.captions]
        if not toks:
            continue
        lengths = pd.Series([len(t) for t in toks])
        rows[split] = {
            "captions": len(toks),
            "mean words": round(lengths.mean(), 1),
            "min words": int(lengths.min()),
            "max words": int(lengths.max()),
            "vocabulary": len({w for t in toks for w in t}),
        }
    return pd.DataFrame(rows).T


def attribute_frequency_figure(meta: dict, attributes: list[str]):
    """Share of identities per attribute value: the skew that CMR's commonality scores should find."""
    fig, axes = plt.subplots(1, len(attributes), figsize=(3.2 * len(attributes), 3), squeeze=False)
    for ax, name in zip(axes[0], attributes):
        freq = pd.Series(meta["attribute_frequencies"][name]).sort_values(ascending=False)
        freq.plot.bar(ax=ax, color="steelblue")
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("share of identities")
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    return fig


def token_label_table(meta: dict, reid_raw: list, image_index: int, caption_index: int = 0) -> pd.DataFrame:
    """The per-token part labels of one caption (what SSAN/CMR attention is scored against)."""
    tokens = reid_raw[image_index]["processed_tokens"][caption_index]
    labels = meta["images"][image_index]["captions"][caption_index]["part_labels"]
    return pd.DataFrame({"token": tokens, "part": labels}).T
