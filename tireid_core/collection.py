"""The collection as a whole: one leaderboard over every paper's finished runs, each paper's headline claims with
their verdicts, the papers' reported numbers beside them, and the paper figures under stable names.

    board = leaderboard(PAPERS)                   # method × key row: test R@1 / mAP with 95 % intervals, budget
    claims = claim_table(PAPERS)                  # each headline claim: paired difference, interval, verdict
    export_figures(PAPERS, "figures")             # figures/<paper>/<name>.png, copied from the notebooks' outputs

It reads finished runs only (`tireid_core.runs`) and never trains. The analysis notebooks check every ablation step;
this module keeps the one or two claims per paper a reader should see first.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tireid_core.analysis import claim_verdict, reference_results
from tireid_core.io import atomic_write_bytes
from tireid_core.methods import get_method
from tireid_core.params import load_run_params, resolve_params_file
from tireid_core.runs import FinishedRun, RunMissing, load_run, paired_difference


@dataclass(frozen=True)
class PaperFigure:
    """One figure a paper's notebook regenerates: what it corresponds to in the paper (or the paper's analysis), the
    stable file name under figures/<paper>/, the file the notebook writes (relative to the method's run folder) and the
    DVC stage that writes it."""

    paper_item: str
    name: str
    source: str
    stage: str


@dataclass(frozen=True)
class Paper:
    """A paper of the collection. `method`: the params.yaml section whose rows the leaderboard shows (a two-stage paper
    names its evaluated stage); `rows`: its key rows, the full model first; `claims`: (claim, the row it should beat,
    the claimed row); `reported`: method names in references/reference_results.yaml (the paper's own, or its
    lineage's where the paper's are not available)."""

    key: str
    title: str
    method: str
    rows: tuple[str, ...]
    status: str
    claims: tuple[tuple[str, str, str], ...] = ()
    reported: tuple[str, ...] = ()
    figures: tuple[PaperFigure, ...] = ()


PAPERS: tuple[Paper, ...] = (
    Paper("baseline", "Global dual encoder (ID + CMPM), the collection's reference", "baseline", ("full",),
          "the project's own reference model; no paper to be faithful to",
          figures=(PaperFigure("retrieval examples", "retrieval_examples.png", "figures/retrieval.png", "baseline"),)),
    Paper("ssan", "SSAN (Ding et al. 2021)", "ssan", ("full", "global_only", "parts_wam", "parts_wam_nonlocal"),
          "faithful to the official code (zifyloo/SSAN, read line by line; its quirks are flags, docs/ssan.md §7); "
          "checked by hand-worked tests of every loss and module, not by running the official code on the same weights",
          claims=(("parts + compound ranking beat global (full vs global_only)", "global_only", "full"),
                  ("part features + word attention beat global (parts_wam vs global_only)", "global_only", "parts_wam")),
          reported=("SSAN",),
          figures=(PaperFigure("Tables III/IV: per-similarity R@1 (S_g, S_l, S_n, S_all)", "per_similarity_r1.png",
                           "figures/per_similarity_r1.png", "ssan"),
                   PaperFigure("textual intra-class variance (t-SNE, with and without the compound ranking loss)",
                           "tsne_text_intra_class.png", "analysis/figures/tsne_text_intra_class.png", "ssan_analysis"),
                   PaperFigure("word-to-part attention (WAM)", "word_part_attention.png",
                           "analysis/figures/word_part_attention.png", "ssan_analysis"),
                   PaperFigure("multi-view non-local part relations", "part_relation_attention.png",
                           "analysis/figures/part_relation_attention.png", "ssan_analysis"),
                   PaperFigure("retrieval examples", "retrieval_examples.png", "figures/retrieval.png", "ssan"))),
    Paper("nafs", "NAFS (Gao et al. 2021)", "nafs", ("full", "global_only", "single_scale", "full_scale"),
          "faithful to the official code (TencentYoutuResearch/PersonReID-NAFS; quirks as flags, docs/nafs.md §7); "
          "the text units were checked side by side with the official code on identical weights",
          claims=(("full-scale + CNL beat global (full vs global_only)", "global_only", "full"),
                  ("full scale beats single scale (full_scale vs single_scale)", "single_scale", "full_scale")),
          reported=("NAFS",),
          figures=(PaperFigure("Table 1: R@1 of S_glob, S_loc and S", "per_score_r1.png", "figures/per_score_r1.png",
                           "nafs"),
                   PaperFigure("Fig. 4: word-region attention at three scales", "fig4_word_region_attention.png",
                           "analysis/figures/word_region_attention.png", "nafs_analysis"),
                   PaperFigure("RVN gain as a function of K", "rvn_vs_k.png", "analysis/figures/rvn_vs_k.png",
                           "nafs_analysis"),
                   PaperFigure("retrieval examples", "retrieval_examples.png", "figures/retrieval.png", "nafs"))),
    Paper("san", "SAN (Jin et al. 2020), image ReID", "san", ("full", "resnet", "san_basic"),
          "faithful to the official code (microsoft's SAN repository; quirks as flags, docs/san.md); the exact "
          "SimPEDES atlas replaces the paper's pseudo-texture targets",
          claims=(("SAN beats the ResNet baseline (full vs resnet)", "resnet", "full"),
                  ("the texture decoder helps (san_basic vs resnet)", "resnet", "san_basic")),
          reported=("SAN", "SAN (released code)"),
          figures=(PaperFigure("texture reconstructions (input, regressed texture, target)", "texture_grid.png",
                           "analysis/figures/texture_grid.png", "san_analysis"),
                   PaperFigure("CMC curves, baseline vs SAN", "cmc.png", "analysis/figures/cmc.png", "san_analysis"))),
    Paper("cmr", "CMR (Park et al. 2024)", "cmr", ("full", "global_only", "coarse_fine_fixed"),
          "a labelled reconstruction: no code and no paper body were available (docs/cmr.md); every choice is a "
          "parameter",
          claims=(("parts and L_CMR beat global only (full vs global_only)", "global_only", "full"),
                  ("L_CMR beats a fixed margin (full vs coarse_fine_fixed)", "coarse_fine_fixed", "full")),
          reported=("PLOT", "IRRA"),  # CMR's own numbers were not available: its lineage's
          figures=(PaperFigure("commonality scores per fine part (histograms)", "commonality_histograms.png",
                           "analysis/figures/commonality_histograms.png", "cmr_analysis"),
                   PaperFigure("learned commonality vs SimPEDES part frequency", "commonality_vs_frequency.png",
                           "analysis/figures/commonality_vs_frequency.png", "cmr_analysis"),
                   PaperFigure("retrieval examples", "retrieval_examples.png", "figures/retrieval.png", "cmr"))),
    Paper("lcr2s", "LCR²S (Yan et al. 2023)", "lcr2s", ("full", "single_view", "feature_kd", "relation_kd"),
          "a labelled reconstruction: no official code, the paper body was not available (docs/lcr2s.md); the "
          "student is evaluated, the teacher only as a labelled oracle in its notebooks",
          claims=(("the full student beats the single-view student (full vs single_view)", "single_view", "full"),),
          reported=("LCR2S",),
          figures=(PaperFigure("t-SNE of test embeddings (single-view, teacher oracle, student)", "tsne.png",
                           "analysis/figures/tsne.png", "lcr2s_analysis"),
                   PaperFigure("MHAF attention on the sample vs its supports", "mhaf_attention.png",
                           "analysis/figures/mhaf_attention.png", "lcr2s_analysis"),
                   PaperFigure("retrieval examples, full student", "retrieval_examples.png", "figures/retrieval.png",
                           "lcr2s"))),
)


def paper(key: str) -> Paper:
    for p in PAPERS:
        if p.key == key:
            return p
    raise KeyError(f"no paper {key!r}; known: {', '.join(p.key for p in PAPERS)}")


def _runs(p: Paper, params_file, profile: str, sets) -> tuple[dict[str, FinishedRun], list[str]]:
    """The paper's key runs that exist, and a line per missing one naming the command that produces it."""
    runs, missing = {}, []
    for row in p.rows:
        try:
            runs[row] = load_run(p.method, row, params_file, profile, sets)
        except RunMissing as err:
            missing.append(f"{p.key} {row}: {err}")
    return runs, missing


def _ci(run: FinishedRun, metric: str) -> str:
    ci = run.summary["best"]["test_ci95"][metric]
    return f"[{ci['low']:.1f}, {ci['high']:.1f}]"


def leaderboard(papers=PAPERS, params_file=None, profile: str = "demo", sets=None) -> tuple[pd.DataFrame, list[str]]:
    """(table, missing): one line per paper and key row with test R@1 and mAP of the checkpoint selected on val, their
    95 % bootstrap intervals over test queries, and the budget the row had; `missing` names the runs not trained yet
    (with the command that trains them), so nothing is left out silently."""
    lines, missing = [], []
    for p in papers:
        runs, gone = _runs(p, params_file, profile, sets)
        missing += gone
        for row, run in runs.items():
            best, train = run.summary["best"], run.params.train
            lines.append({"paper": p.title, "row": row, "label": run.label,
                          "task": "image ReID" if get_method(p.method).task == "image_reid" else "text → image",
                          "R@1": best["test"]["R@1"], "R@1 95% CI": _ci(run, "R@1"),
                          "mAP": best["test"]["mAP"], "mAP 95% CI": _ci(run, "mAP"),
                          "epochs": train.epochs, "batch": train.batch_size, "lr": train.lr,
                          "selected epoch": best["epoch"] + 1})
    return pd.DataFrame(lines), missing


def claim_table(papers=PAPERS, params_file=None, profile: str = "demo", sets=None) -> pd.DataFrame:
    """Each paper's headline claims on this data: the paired test R@1 difference (claimed row minus the row it should
    beat) with its paired-bootstrap 95 % interval and the verdict sentence of `analysis.claim_verdict`."""
    lines = []
    for p in papers:
        runs, _ = _runs(p, params_file, profile, sets)
        for claim, worse, better in p.claims:
            if worse not in runs or better not in runs:
                lines.append({"paper": p.title, "claim": claim, "difference [95% CI]": "—",
                              "verdict": "not checked: a run is missing (see the missing runs above)"})
                continue
            diff = paired_difference(runs[worse], runs[better])
            dataset = runs[better].params.data.dataset
            verdict = claim_verdict(claim, diff, dataset="SimPEDES" if dataset.startswith("simpedes") else dataset,
                                    profile=profile)
            lines.append({"paper": p.title, "claim": claim,
                          "difference [95% CI]": f"{diff['diff']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]",
                          "verdict": verdict.split(": ")[1]})
    return pd.DataFrame(lines)


def status_table(papers=PAPERS) -> pd.DataFrame:
    """What each paper's implementation is: faithful to official code (and how that was checked) or a reconstruction."""
    return pd.DataFrame([{"paper": p.title, "implementation": p.status} for p in papers]).set_index("paper")


def reported_table(papers=PAPERS, metrics=("R@1", "mAP")) -> pd.DataFrame:
    """The numbers the papers (or the sources that report them) give on the real datasets, one line per paper, method,
    dataset and backbone, with the source and its evidence level. Paper figures, never mixed with demo figures."""
    frames = []
    for p in papers:
        for method in p.reported:
            try:
                ref = reference_results(method)
            except KeyError:
                continue
            ref = ref[(ref.metric.isin(metrics)) & (ref.get("protocol", pd.Series(index=ref.index)).isna())]
            if "backbone" not in ref:
                ref = ref.assign(backbone="")
            ref = ref.assign(paper=p.title, backbone=ref.backbone.fillna(""))
            frames.append(ref)
    if not frames:
        return pd.DataFrame()
    ref = pd.concat(frames)
    table = ref.pivot_table(index=["paper", "method", "dataset", "backbone"], columns="metric", values="value",
                            aggfunc="first")
    info = ref.groupby(["paper", "method", "dataset", "backbone"]).agg(
        source=("source", "first"), evidence=("evidence", "first"))
    return table.join(info)


def comparison_figure(board: pd.DataFrame, metric: str = "R@1"):
    """Every paper's key rows with their 95 % intervals (one panel per task: text→image and image ReID differ)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    tasks = list(dict.fromkeys(board["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 0.45 * len(board) + 1.5), squeeze=False)
    palette = dict(zip(dict.fromkeys(board["paper"]), sns.color_palette("colorblind", board["paper"].nunique())))
    for ax, task in zip(axes[0], tasks):
        part = board[board["task"] == task].reset_index(drop=True)
        labels = [f"{r.paper.split(' (')[0]}: {r.row}" for r in part.itertuples()]
        bounds = [tuple(float(v) for v in s.strip("[]").split(", ")) for s in part[f"{metric} 95% CI"]]
        for i, (value, (low, high), name) in enumerate(zip(part[metric], bounds, part["paper"])):
            ax.errorbar(value, i, xerr=[[value - low], [high - value]], fmt="o", color=palette[name], capsize=3)
        ax.set_yticks(range(len(part)), labels)
        ax.invert_yaxis()
        ax.set_xlabel(f"test {metric} (%), 95 % bootstrap interval over test queries")
        ax.set_title(task)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def figure_sources(papers=PAPERS, params_file=None, profile: str = "demo") -> list[tuple[Paper, PaperFigure, Path]]:
    """(paper, figure, the file its notebook writes) for every listed paper figure."""
    params_file = resolve_params_file(params_file)
    out = []
    for p in papers:
        run_folder = Path(load_run_params(p.method, params_file, profile=profile).out_dir)
        out += [(p, f, run_folder / f.source) for f in p.figures]
    return out


def export_figures(papers=PAPERS, out_root: str | Path = "figures", params_file=None, profile: str = "demo") -> list:
    """Copy every paper figure to ``<out_root>/<paper>/<name>`` (atomically) and return (paper, figure, path) rows.

    A figure whose notebook has not run is an error naming the stage to run, not a gap in the folder."""
    rows = []
    missing = [(p, f, src) for p, f, src in figure_sources(papers, params_file, profile) if not src.is_file()]
    if missing:
        raise RunMissing("paper figures not produced yet: " + "; ".join(
            f"{src} (run `dvc repro {f.stage}`)" for _, f, src in missing))
    out_root = Path(out_root)
    if out_root.exists():
        shutil.rmtree(out_root)  # a figure dropped from the list must not linger
    for p, f, src in figure_sources(papers, params_file, profile):
        atomic_write_bytes(out_root / p.key / f.name, src.read_bytes())
        rows.append((p.key, f.paper_item, str(out_root / p.key / f.name)))
    return rows


def figures_table(papers=PAPERS) -> pd.DataFrame:
    """The README's table: paper figure → stable file → the stage that draws it → the command that redraws only it."""
    return pd.DataFrame([{"paper": p.title, "figure": f.paper_item, "file": f"figures/{p.key}/{f.name}",
                          "stage": f.stage, "regenerate": f"dvc repro {f.stage} collection"}
                         for p in papers for f in p.figures])
