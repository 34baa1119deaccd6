"""Figures and tables the notebooks show; kept here so every notebook draws them the same way."""
from __future__ import annotations

import io
import json
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
    # train/diag_* are logged diagnostics (CMR's margins), not loss terms
    df[[c for c in df.columns if c.startswith("train/") and not c.startswith("train/diag_")]].plot(ax=a, marker="o")
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
    table = pd.DataFrame(rows).T
    order = [k for k in ("R@1", "R@5", "R@10", "rSum", "mAP", "mINP") if k in table.columns]
    return table[order + [c for c in table.columns if c not in order]]


class FigureSaver:
    """Writes figures into `folder` (the pipeline's run), or nowhere when `folder` is None (interactive use never
    overwrites DVC-tracked outputs). Returns the figure, so notebooks still show it."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder is not None else None

    def save(self, fig, name: str):
        if self.folder is not None:
            save_figure(fig, self.folder / name)
        return fig


def dataset_counts(exp) -> pd.DataFrame:
    """Training pairs (images for image ReID), identities and the val/test query × gallery sizes of an experiment."""
    def size(s):
        if s is None:
            return "—"
        return f"{len(s.query)} × {len(s.gallery)}" if hasattr(s, "query") else f"{len(s.captions)} × {len(s.image_paths)}"

    counts = {"train pairs" if exp.text_image else "train images": len(exp.train_set), "train identities": exp.num_classes,
              "val queries × gallery": size(exp.val_set), "test queries × gallery": size(exp.test_set)}
    return pd.Series(counts, name=exp.params.data.dataset).to_frame()


def parameter_counts(model) -> pd.DataFrame:
    """Parameters per top-level module of a model, in millions."""
    sizes = {name: sum(p.numel() for p in mod.parameters()) for name, mod in model.named_children()}
    return pd.Series(sizes, name="parameters").to_frame().assign(M=lambda d: (d.parameters / 1e6).round(3))


def protocol_line(record: dict) -> str:
    """One sentence with the conventions of a metrics record (queries, gallery, AP convention, ties)."""
    return (f"queries: {record['n_queries_valid']} valid, {record['n_queries_skipped']} skipped; gallery "
            f"{record['gallery_size']}; AP convention: {record['ap_convention']}; tie rule: {record['tie_rule']}; "
            f"first positive tied with a negative: {record['tie_diagnostic']}")


def paper_table(ref: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Reported numbers as method × metric (R@1, R@5, R@10 first), methods in their file order."""
    table = ref.pivot_table(index="method", columns="metric", values="value").reindex(ref.method.unique())
    order = [k for k in ("R@1", "R@5", "R@10", "mAP", "mINP") if k in table.columns]
    table = table[order + [c for c in table.columns if c not in order]]
    table.index = [f"{prefix}: {m}" for m in table.index]
    return table


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure atomically (figures are pipeline outputs too)."""
    from tireid_core.io import atomic_write_bytes

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
    reid = json.loads((root / "reid_raw.json").read_text())
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


def part_value_frequencies(meta: dict) -> dict[int, dict[str, float]]:
    """For every identity and body part, the share of the dataset's identities whose part looks the same (equal values
    of all the part's attributes, e.g. lower = (trousers, black)): how common that person's part is. The ground truth
    CMR's learned commonality is scored against."""
    from collections import Counter

    parts = meta["part_attributes"]
    values = {ident["id"]: {part: tuple(ident["attributes"][a] for a in names) for part, names in parts.items()}
              for ident in meta["identities"]}
    counts = {part: Counter(v[part] for v in values.values()) for part in parts}
    n = len(values)
    return {pid: {part: counts[part][v[part]] / n for part in parts} for pid, v in values.items()}


def query_tokens_and_part_labels(root: str | Path, evalset) -> tuple[list[list[str]], list[list[str]]]:
    """SimPEDES's processed tokens and per-token part labels of every query of a split (the generator's own lookup)."""
    from tireid_core.data.simpedes import load_meta, token_part_labels

    meta = load_meta(Path(root))
    reid_raw = json.loads((Path(root) / "reid_raw.json").read_text())
    tokens = [reid_raw[i]["processed_tokens"][j] for i, j in evalset.caption_refs]
    labels = [token_part_labels(meta, i, j) for i, j in evalset.caption_refs]
    return tokens, labels


def token_label_table(meta: dict, reid_raw: list, image_index: int, caption_index: int = 0) -> pd.DataFrame:
    """The per-token part labels of one caption (what SSAN/CMR attention is scored against)."""
    tokens = reid_raw[image_index]["processed_tokens"][caption_index]
    labels = meta["images"][image_index]["captions"][caption_index]["part_labels"]
    return pd.DataFrame({"token": tokens, "part": labels}).T


# ----------------------------------------------------------------------------- embeddings and attention


def intra_class_ratio(feats: torch.Tensor, pids) -> float:
    """Textual intra-class variance as one number: mean distance of each (L2-normalised) embedding to its identity
    centroid, divided by the mean distance between identity centroids. Lower = tighter identities."""
    x = torch.nn.functional.normalize(feats.float(), dim=1)
    pids = torch.as_tensor(pids)
    ids = pids.unique()
    centroids = torch.stack([x[pids == p].mean(0) for p in ids])
    within = torch.cat([(x[pids == p] - centroids[i]).norm(dim=1) for i, p in enumerate(ids)]).mean()
    between = torch.pdist(centroids).mean()
    return float(within / between)


def tsne_figure(embeddings: dict[str, tuple], n_ids: int = 10, seed: int = 0):
    """t-SNE of embeddings of `n_ids` identities (the same, seeded choice for every model), one panel per model, with
    the intra-class ratio in each title. Each value is (features, pids) or (features, pids, kinds): `kinds` names each
    point's group (e.g. "image" / "text" for both modalities in one space), drawn with its own marker."""
    from sklearn.manifold import TSNE

    first_pids = next(iter(embeddings.values()))[1]
    all_ids = sorted(set(first_pids))
    g = torch.Generator().manual_seed(seed)
    chosen = sorted(all_ids[i] for i in torch.randperm(len(all_ids), generator=g)[:n_ids].tolist())
    fig, axes = plt.subplots(1, len(embeddings), figsize=(5 * len(embeddings), 4.6), squeeze=False)
    palette = plt.get_cmap("tab10" if n_ids <= 10 else "tab20")
    for ax, (name, (feats, pids, *rest)) in zip(axes[0], embeddings.items()):
        kinds = rest[0] if rest else [""] * len(pids)
        markers = dict(zip(sorted(set(kinds)), "o^sDv"))
        keep = [i for i, p in enumerate(pids) if p in chosen]
        x = torch.nn.functional.normalize(feats[keep].float(), dim=1).numpy()
        xy = TSNE(n_components=2, perplexity=min(30, max(5, len(keep) // 4)), random_state=seed, init="pca").fit_transform(x)
        for c, p in enumerate(chosen):
            for kind, marker in markers.items():
                sel = [j for j, i in enumerate(keep) if pids[i] == p and kinds[i] == kind]
                ax.scatter(xy[sel, 0], xy[sel, 1], s=18, color=palette(c % palette.N), marker=marker,
                           label=str(p) if kind == next(iter(markers)) else None)
        ratio = intra_class_ratio(feats[keep], [pids[i] for i in keep])
        legend = ", ".join(f"{m} {k}" for k, m in markers.items()) if len(markers) > 1 else ""
        ax.set_title(f"{name}\nintra/inter distance ratio {ratio:.3f}" + (f"\nmarkers: {legend}" if legend else ""),
                     fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, -1].legend(title="identity", fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def word_part_agreement(gates: list, labels: list[list[str]], expected: dict[str, list[int]]) -> dict:
    """Score word→part attention against per-token part labels.

    `expected`: the stripes each body part occupies (`tireid_core.data.simpedes.expected_stripes(K)`).

    gates: per caption an (n_words × K) array of gate values; labels: the words' part labels. A labelled word agrees
    when its strongest gate is one of the stripes its part occupies. Returns the agreement, the chance level of a
    uniformly random choice (|expected stripes| / K averaged over the scored words), and the label × stripe mean gates.
    """
    import numpy as np

    hits, chance, rows = [], [], {}
    for g, labs in zip(gates, labels):
        g = np.asarray(g)
        for word_gates, lab in zip(g, labs):
            rows.setdefault(lab, []).append(word_gates)
            if lab in expected:
                hits.append(int(word_gates.argmax()) in expected[lab])
                chance.append(len(expected[lab]) / g.shape[1])
    table = pd.DataFrame({lab: np.mean(v, axis=0) for lab, v in rows.items()}).T
    table.columns = [f"stripe {k}" for k in range(table.shape[1])]
    return {"agreement": float(np.mean(hits)) if hits else float("nan"),
            "chance": float(np.mean(chance)) if chance else float("nan"),
            "n_words": len(hits), "mean_gates": table}


def query_attention_figure(image, maps, names: list[str], tokens: list[str], token_weights, title: str = ""):
    """One sample's attention per query in both modalities: the image with each query's patch weights (h×w, upsampled
    to the image) laid over it, and below a queries × tokens heat map of the caption."""
    import numpy as np

    maps = torch.as_tensor(maps, dtype=torch.float32)
    height, width = np.asarray(image).shape[:2]
    up = torch.nn.functional.interpolate(maps[:, None], size=(height, width), mode="bilinear", align_corners=False)
    fig = plt.figure(figsize=(max(1.1 * (len(names) + 1), 0.32 * len(tokens) + 2), 6.2))
    grid = fig.add_gridspec(2, len(names) + 1, height_ratios=[1.4, 1])
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(image)
    ax.set_title("image", fontsize=7)
    ax.axis("off")
    for k, name in enumerate(names):
        ax = fig.add_subplot(grid[0, k + 1])
        ax.imshow(image)
        ax.imshow(up[k, 0].numpy(), cmap="jet", alpha=0.5)
        ax.set_title(name, fontsize=7)
        ax.axis("off")
    heatmap_figure(np.asarray(token_weights), names, tokens, "caption: weight of each token per query",
                   ax=fig.add_subplot(grid[1, :]))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def heatmap_figure(matrix, row_labels: list[str], col_labels: list[str], title: str, ax=None):
    """A small annotated heat map (word→part gates, part→part attention)."""
    import numpy as np
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(0.45 * len(col_labels) + 2, 0.35 * len(row_labels) + 1.2))
    sns.heatmap(np.asarray(matrix), ax=ax, xticklabels=col_labels, yticklabels=row_labels, cmap="viridis",
                annot=len(col_labels) * len(row_labels) <= 60, fmt=".2f", cbar=True)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    return ax.figure


# ----------------------------------------------------------------------------- part labels of a tokenizer's tokens


def _word_spans(caption: str, words: list[str]) -> list[tuple[int, int] | None]:
    """Character span of each word of `words` (lower-case word tokens, e.g. SimPEDES `processed_tokens`) in `caption`,
    found left to right as whole words; None for a word that cannot be found after the previous one."""
    import re

    lower, position, spans = caption.lower(), 0, []
    for word in words:
        match = re.compile(rf"(?<![a-z0-9]){re.escape(word.lower())}(?![a-z0-9])").search(lower, position)
        if match is None:
            spans.append(None)
            continue
        spans.append(match.span())
        position = match.end()
    return spans


def tokenized_part_labels(tokenizer, caption: str, words: list[str],
                          word_labels: list[str]) -> tuple[list[str], list[str]]:
    """The caption's tokens as `tokenizer` cuts it, each with the part label of the word it lies in.

    `words` / `word_labels`: the caption's word tokens and their labels (SimPEDES `processed_tokens` and `part_labels`,
    see `query_tokens_and_part_labels`). Works with any tokenizer that has `encode_with_offsets` (WordTokenizer,
    HFTokenizer): every token whose character span lies inside a word's span takes that word's label (all WordPieces
    of a word, an [UNK] standing for it); a token without a letter or digit (punctuation, "-" of "t-shirt" as BERT
    splits it) or outside every word is "none". The tokens the tokenizer adds ([CLS], [SEP]) are left out, so for a
    [CLS] … [SEP] layout the i-th entry is the model's i-th word unit (NAFS `text_unit_slices()["words"]`, positions
    1.. of the caption); out-of-vocabulary words a word vocabulary deletes are absent, as they are from the model.

    Returns (tokens, labels): the tokens as their text in the caption ("[UNK]"-free), one label per token.
    """
    if len(words) != len(word_labels):
        raise ValueError(f"{len(words)} words but {len(word_labels)} labels")
    spans = [(s, lab) for s, lab in zip(_word_spans(caption, words), word_labels) if s is not None]
    _, offsets = tokenizer.encode_with_offsets(caption)  # None only for added tokens ([CLS], [SEP])
    tokens, labels = [], []
    for span in offsets:
        if span is None:
            continue
        start, end = span
        text = caption[start:end]
        label = "none"
        if any(ch.isalnum() for ch in text):
            label = next((lab for (lo, hi), lab in spans if lo <= start and end <= hi), "none")
        tokens.append(text)
        labels.append(label)
    return tokens, labels


# ----------------------------------------------------------------------------- claims, recipes, curves


def format_difference(diff: dict, metric: str = "R@1") -> str:
    """"+x.xx R@1 [+lo, +hi]" of a paired difference ({"diff", "low", "high"} in points)."""
    return f"{diff['diff']:+.2f} {metric} [{diff['low']:+.2f}, {diff['high']:+.2f}]"


def claim_verdict(name: str, diff: dict, direction: str = "higher", *, dataset: str = "SimPEDES",
                  profile: str = "demo", metric: str = "R@1") -> str:
    """One sentence on a paper's claim, from the paired difference (claimed model minus the one it should beat, as
    `runs.paired_difference` returns it) and its 95 % interval.

    direction "higher": the claim is that the difference is above 0 ("lower": below). Reproduced when the whole
    interval lies on the claimed side of 0, contradicted when it lies wholly on the other side, otherwise not
    reproduced (the interval contains 0: the data cannot tell the two apart).
    """
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction must be 'higher' or 'lower', got {direction!r}")
    low, high = float(diff["low"]), float(diff["high"])
    if not (low <= high) or any(v != v for v in (low, high, float(diff["diff"]))):
        raise ValueError(f"not an interval: {diff!r}")
    where = f"{dataset} {profile}".strip()
    text = format_difference(diff, metric)
    claimed_side = low > 0 if direction == "higher" else high < 0
    other_side = high < 0 if direction == "higher" else low > 0
    if claimed_side:
        return f"{name}: reproduced on {where}: {text}"
    if other_side:
        return f"{name}: contradicted on {where}: {text}"
    return f"{name}: not reproduced on {where}: the difference {text} is within noise (the interval contains 0)"


def agreement_line(name: str, diff: dict, metric: str = "R@1") -> str:
    """For two runs that should agree: the paired difference and whether its 95 % interval contains 0."""
    contains = float(diff["low"]) <= 0.0 <= float(diff["high"])
    verdict = ("the interval contains 0: they agree within noise" if contains else
               "the interval does not contain 0: they differ by more than query-sampling noise")
    return f"{name}: {format_difference(diff, metric)}; {verdict}"


def recipe_line(train) -> str:
    """The training recipe of a run's `train` parameters in one line (epochs, batch, lr, schedule, backbone_lr_mult)."""
    schedule = train.schedule
    if schedule in ("step", "epoch_multistep") and train.milestones:
        schedule += f" (×{train.gamma:g} at epochs {', '.join(str(m) for m in train.milestones)})"
    return (f"{train.epochs} epochs, batch size {train.batch_size}, lr {train.lr:g}, {schedule} schedule with "
            f"{train.warmup_epochs} warm-up epoch{'s' if train.warmup_epochs != 1 else ''}, "
            f"backbone_lr_mult {train.backbone_lr_mult:g}")


def recipe_summary(runs: dict) -> list[str]:
    """Lines saying which recipe the runs ({name: FinishedRun}) trained with: one line when all share it, else one
    line per recipe with the rows that use it."""
    by_recipe: dict[str, list[str]] = {}
    for run in runs.values():
        by_recipe.setdefault(recipe_line(run.params.train), []).append(run.label)
    if len(by_recipe) == 1:
        return [f"all {len(runs)} rows share one recipe: {next(iter(by_recipe))}"]
    return ["WARNING: the rows do not share one recipe"] + [f"{', '.join(labels)}: {line}"
                                                         for line, labels in by_recipe.items()]


def metric_curve(history: list[dict], key: str = "val/R@1") -> pd.Series:
    """`key` per epoch (1-based) of a run's history; empty when the run did not log it."""
    points = {int(h["epoch"]) + 1: float(h[key]) for h in history if key in h}
    return pd.Series(points, name=key, dtype=float).sort_index()


def curve_trend(history: list[dict], key: str = "val/R@1", span: int = 2, climbing: float = 1.0) -> dict:
    """Gain of `key` over the last `span` epochs (fewer when the run is shorter): {"from_epoch", "to_epoch", "gain",
    "trend"}, trend "still climbing" when the gain is at least `climbing` points, else "flat"."""
    curve = metric_curve(history, key)
    if len(curve) < 2:
        return {"from_epoch": None, "to_epoch": None, "gain": float("nan"), "trend": "too few epochs"}
    first = curve.index[max(0, len(curve) - 1 - span)]
    last = curve.index[-1]
    gain = float(curve[last] - curve[first])
    return {"from_epoch": int(first), "to_epoch": int(last), "gain": gain,
            "trend": "still climbing" if gain >= climbing else "flat"}


def curve_trend_line(label: str, history: list[dict], key: str = "val/R@1", span: int = 2,
                     climbing: float = 1.0) -> str:
    t = curve_trend(history, key, span, climbing)
    if t["from_epoch"] is None:
        return f"{label}: {key} logged for fewer than 2 epochs"
    return f"{label}: {key} {t['gain']:+.2f} from epoch {t['from_epoch']} to {t['to_epoch']}: {t['trend']}"


def budget_caveat(runs: list, key: str = "val/R@1") -> str:
    """A plain sentence when a comparison involves runs still climbing at their last epoch (see `curve_trend`): their
    gap measures the demo budget as much as the components. Empty when every run's curve is flat."""
    climbing = [run.label for run in runs if curve_trend(run.history, key)["trend"] == "still climbing"]
    if not climbing:
        return ""
    return (f"  caveat: {'; '.join(climbing)} {'is' if len(climbing) == 1 else 'are'} still climbing at the last epoch, "
            "so this difference reflects the short demo budget as well as the components")


def curves_figure(histories: dict[str, list[dict]], key: str = "val/R@1"):
    """`key` per epoch, one line per run ({label: history}); runs that did not log it are left out."""
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for label, history in histories.items():
        curve = metric_curve(history, key)
        if len(curve):
            ax.plot(curve.index, curve.values, marker="o", label=label)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(key + " (%)")
    ax.set_title(f"{key} per epoch")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- image ReID


def cmc_figure(curves: dict[str, list[float]], max_rank: int = 20):
    """CMC curves (percent at ranks 1..max_rank), one line per run ({label: the metrics record's "cmc" list})."""
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for label, cmc in curves.items():
        ranks = list(range(1, min(max_rank, len(cmc)) + 1))
        ax.plot(ranks, cmc[:len(ranks)], marker=".", label=label)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_xlabel("rank")
    ax.set_ylabel("matches within rank (%)")
    ax.set_title("CMC")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig


def image_rows_figure(rows: list[list], titles: list[list[str]], column_names: list[str] | None = None):
    """A grid of images, one list per row: PIL images, H x W x 3 arrays, or 3 x H x W tensors in [-1, 1] (textures)."""
    n_cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.7 * n_cols, 2.0 * len(rows)), squeeze=False)
    for i, (row, names) in enumerate(zip(rows, titles)):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.axis("off")
            if j >= len(row):
                continue
            img = row[j]
            if isinstance(img, torch.Tensor):
                img = ((img.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
            ax.imshow(img, interpolation="nearest")
            ax.set_title(names[j], fontsize=7)
    if column_names:
        for j, name in enumerate(column_names):
            axes[0, j].set_title(f"{name}\n{axes[0, j].get_title()}", fontsize=7)
    fig.tight_layout()
    return fig


def reid_retrieval_figure(evalset, scores: torch.Tensor, queries: list[int], topk: int = 10):
    """Top-k gallery images for query images (first column), after the protocol's same-identity-same-camera
    exclusion; green frame = same identity, red = another (pid 0 = distractor). Ties: the project's stable rule."""
    topk = min(topk, len(evalset.gallery))
    fig, axes = plt.subplots(len(queries), topk + 1, figsize=(1.1 * (topk + 1), 2.3 * len(queries)), squeeze=False)
    for row, q in enumerate(queries):
        query = evalset.query[q]
        kept = torch.tensor([not (g.pid == query.pid and g.camid == query.camid) for g in evalset.gallery])
        order = torch.sort(scores[q].masked_fill(~kept, float("-inf")), descending=True, stable=True).indices
        order = [g for g in order.tolist() if kept[g]][:topk]
        axes[row, 0].imshow(read_image(query.path))
        axes[row, 0].set_title(f"query id {query.pid}\ncam {query.camid + 1}", fontsize=7)
        for col in range(topk + 1):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
        for col, g in enumerate(order, start=1):
            ax = axes[row, col]
            ax.imshow(read_image(evalset.gallery[g].path))
            ok = evalset.gallery[g].pid == query.pid
            for spine in ax.spines.values():
                spine.set_edgecolor("limegreen" if ok else "red")
                spine.set_linewidth(3)
            ax.set_title(f"{col}", fontsize=7)
    fig.tight_layout()
    return fig
