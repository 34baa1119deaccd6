"""Core helpers the notebooks call instead of carrying logic: part labels, figure saving, row comparisons."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tireid_core import analysis  # noqa: E402
from tireid_core.data.simpedes import load_meta  # noqa: E402
from tireid_core.data.datasets import load_text_image_dataset  # noqa: E402
from tireid_core.experiment import build_eval_set  # noqa: E402
from tireid_core.runs import FinishedRun, identical_rows  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def test_query_tokens_and_part_labels_follow_the_queries(tiny_simpedes):
    test = build_eval_set(load_text_image_dataset("simpedes", tiny_simpedes), "test")
    tokens, labels = analysis.query_tokens_and_part_labels(tiny_simpedes, test)
    assert len(tokens) == len(labels) == len(test.captions)
    meta = load_meta(tiny_simpedes)
    i, j = test.caption_refs[0]
    assert labels[0] == meta["images"][i]["captions"][j]["part_labels"]
    assert all(len(t) == len(lab) for t, lab in zip(tokens, labels))
    assert {"head", "upper", "lower", "shoes"} & {lab for labs in labels for lab in labs}


def test_figure_saver_writes_only_when_given_a_folder(tmp_path):
    fig = plt.figure()
    assert analysis.FigureSaver(None).save(fig, "a.png") is fig
    assert not list(tmp_path.iterdir())
    analysis.FigureSaver(tmp_path / "figs").save(fig, "a.png")
    assert (tmp_path / "figs" / "a.png").stat().st_size > 0


def test_identical_rows_are_reported(tiny_params):
    a, b, c = (tiny_params(section="ssan", row=r) for r in ("full", "full", "global_only"))
    runs = {name: FinishedRun("ssan", name, name, p, Path("."), {}, []) for name, p in
            (("x", a), ("y", b), ("z", c))}
    b.out_dir, b.row = "elsewhere", "y"
    assert identical_rows(runs) == [("x", "y")]


# ----------------------------------------------------------------------------- part labels of a tokenizer's tokens

CAPTION = "A man wearing a red T-shirt, blue pants and shoes."
WORDS = ["a", "man", "wearing", "a", "red", "t-shirt", "blue", "pants", "and", "shoes"]  # word_tokens(CAPTION)
LABELS = ["none", "none", "none", "none", "upper", "upper", "lower", "lower", "none", "shoes"]


def _word_units(tokenizer, caption):
    """How many word units NAFS gets from the caption: positions 1.. of [CLS] … [SEP], [SEP] and padding excluded."""
    ids, mask, _ = tokenizer.encode_batch_pieces([caption], 64)
    return int((mask[0, 1:] & (ids[0, 1:] != tokenizer.sep_id)).sum())


def test_tokenized_part_labels_with_a_word_vocabulary():
    from tireid_core.data.tokenizers import WordTokenizer, WordVocab, word_tokens

    assert word_tokens(CAPTION) == WORDS
    vocab = WordVocab(["a", "man", "red", "t-shirt", "blue", "pants"])  # "wearing", "and", "shoes": deleted
    for cls_sep in (False, True):
        tokens, labels = analysis.tokenized_part_labels(WordTokenizer(vocab, cls_sep=cls_sep), CAPTION, WORDS, LABELS)
        assert tokens == ["A", "man", "a", "red", "T-shirt", "blue", "pants"]
        assert labels == ["none", "none", "none", "upper", "upper", "lower", "lower"]
    assert _word_units(WordTokenizer(vocab, cls_sep=True), CAPTION) == len(tokens)
    assert vocab.kept(WORDS) == [t in vocab.index for t in WORDS]  # the SSAN path: same words kept


def test_tokenized_part_labels_with_wordpiece(tiny_bert_dir):
    from tireid_core.data.tokenizers import HFTokenizer

    tok = HFTokenizer(str(tiny_bert_dir))
    # The tiny vocabulary has no "t" and no "-": BERT's pre-tokeniser cuts "T-shirt" into T, -, shirt, the first two
    # become [UNK] (still word units of the model); "," and "." are tokens of their own.
    assert tok.tokenizer.convert_ids_to_tokens(tok.encode(CAPTION))[5:9] == ["red", "[UNK]", "[UNK]", "shirt"]
    tokens, labels = analysis.tokenized_part_labels(tok, CAPTION, WORDS, LABELS)
    assert tokens == ["A", "man", "wearing", "a", "red", "T", "-", "shirt", ",", "blue", "pants", "and", "shoes", "."]
    assert labels == ["none", "none", "none", "none", "upper", "upper", "none", "upper", "none", "lower", "lower",
                      "none", "shoes", "none"]
    assert _word_units(tok, CAPTION) == len(tokens)
    # WordPieces of one word share its label
    tokens, labels = analysis.tokenized_part_labels(tok, "Black shirts.", ["black", "shirts"], ["upper", "upper"])
    assert tokens == ["Black", "shirt", "s", "."] and labels == ["upper", "upper", "upper", "none"]


def test_tokenized_part_labels_rejects_mismatched_labels():
    import pytest

    from tireid_core.data.tokenizers import WordTokenizer, WordVocab

    with pytest.raises(ValueError, match="10 words but 2 labels"):
        analysis.tokenized_part_labels(WordTokenizer(WordVocab(["a"])), CAPTION, WORDS, LABELS[:2])


# ----------------------------------------------------------------------------- claims, recipes, curves


def test_claim_verdict_reads_the_interval():
    import pytest

    up = {"diff": 3.5, "low": 1.25, "high": 5.75}
    down = {"diff": -3.5, "low": -5.75, "high": -1.25}
    noise = {"diff": 0.5, "low": -1.0, "high": 2.0}
    edge = {"diff": 1.0, "low": 0.0, "high": 2.0}
    assert analysis.claim_verdict("parts beat global", up, profile="tiny") == \
        "parts beat global: reproduced on SimPEDES tiny: +3.50 R@1 [+1.25, +5.75]"
    assert analysis.claim_verdict("parts beat global", down, profile="tiny") == \
        "parts beat global: contradicted on SimPEDES tiny: -3.50 R@1 [-5.75, -1.25]"
    assert analysis.claim_verdict("parts beat global", noise) == (
        "parts beat global: not reproduced on SimPEDES demo: the difference +0.50 R@1 [-1.00, +2.00] is within noise "
        "(the interval contains 0)")
    assert "not reproduced" in analysis.claim_verdict("x", edge)  # an interval touching 0 contains it
    assert "reproduced on SimPEDES demo: -3.50 mAP" in analysis.claim_verdict("x", down, "lower", metric="mAP")
    assert "contradicted" in analysis.claim_verdict("x", up, "lower")
    with pytest.raises(ValueError, match="direction"):
        analysis.claim_verdict("x", up, "better")
    with pytest.raises(ValueError, match="not an interval"):
        analysis.claim_verdict("x", {"diff": 1.0, "low": 2.0, "high": 0.0})


def test_agreement_line_says_whether_the_interval_contains_zero():
    assert analysis.agreement_line("a vs b", {"diff": 0.5, "low": -1.0, "high": 2.0}).endswith("agree within noise")
    assert "does not contain 0" in analysis.agreement_line("a vs b", {"diff": 3.0, "low": 1.0, "high": 5.0})


def test_curve_trend_over_the_last_two_epochs():
    history = [{"epoch": e, "val/R@1": v} for e, v in enumerate([10.0, 20.0, 24.0, 25.5])]
    assert analysis.curve_trend(history) == {"from_epoch": 2, "to_epoch": 4, "gain": 5.5, "trend": "still climbing"}
    flat = history[:2] + [{"epoch": 2, "val/R@1": 20.5}, {"epoch": 3, "val/R@1": 20.9}]
    assert analysis.curve_trend(flat)["trend"] == "flat"
    short = history[:2]  # fewer epochs than the span: the gain over what there is
    assert analysis.curve_trend(short) == {"from_epoch": 1, "to_epoch": 2, "gain": 10.0, "trend": "still climbing"}
    assert analysis.curve_trend([{"epoch": 0, "train/loss": 1.0}])["trend"] == "too few epochs"
    assert analysis.curve_trend_line("row", history) == "row: val/R@1 +5.50 from epoch 2 to 4: still climbing"
    fig = analysis.curves_figure({"a": history, "b": flat, "no val": [{"epoch": 0}]})
    assert len(fig.axes[0].lines) == 2


def test_recipe_lines():
    from tireid_core.params import load_run_params

    ssan = {r: load_run_params("ssan", REPO / "params.yaml", row=r, profile="tiny") for r in ("global_only", "full")}
    runs = {r: FinishedRun("ssan", r, r, p, Path("."), {}, []) for r, p in ssan.items()}
    t = ssan["full"].train
    (line,) = analysis.recipe_summary(runs)
    assert line == f"all 2 rows share one recipe: {analysis.recipe_line(t)}"
    assert f"{t.epochs} epochs, batch size {t.batch_size}, lr {t.lr:g}, {t.schedule} schedule" in line
    assert f"backbone_lr_mult {t.backbone_lr_mult:g}" in line
    ssan["full"].train.epochs += 1
    lines = analysis.recipe_summary(runs)
    assert lines[0].startswith("WARNING") and len(lines) == 3


def test_budget_caveat_names_the_runs_still_climbing():
    from types import SimpleNamespace

    climbing = SimpleNamespace(label="a", history=[{"epoch": e, "val/R@1": v} for e, v in enumerate([1.0, 5.0, 9.0])])
    flat = SimpleNamespace(label="b", history=[{"epoch": e, "val/R@1": v} for e, v in enumerate([9.0, 9.2, 9.5])])
    assert analysis.budget_caveat([flat]) == ""
    line = analysis.budget_caveat([climbing, flat])
    assert "a is still climbing" in line and "b" not in line.split("caveat:")[1].split("is still")[0]


def test_metrics_table_orders_recall_by_rank_and_counts_epochs_from_one():
    summary = {"best": {"epoch": 0, "test": {"R@1": 1.0, "R@10": 3.0, "R@5": 2.0, "mAP": 4.0}},
               "last": {"epoch": 2, "test": {"R@1": 1.5, "R@10": 3.5, "R@5": 2.5, "mAP": 4.5}}}
    table = analysis.metrics_table(summary)
    assert list(table.columns) == ["R@1", "R@5", "R@10", "mAP"]
    assert list(table.index) == ["best (epoch 1)", "last (epoch 3)"]


def test_part_value_frequencies_count_equal_looks():
    from tireid_core.analysis import part_value_frequencies

    meta = {"part_attributes": {"lower": ["lower_type", "lower_colour"], "shoes": ["shoes_colour"]},
            "identities": [
                {"id": 1, "attributes": {"lower_type": "jeans", "lower_colour": "blue", "shoes_colour": "white"}},
                {"id": 2, "attributes": {"lower_type": "jeans", "lower_colour": "blue", "shoes_colour": "black"}},
                {"id": 3, "attributes": {"lower_type": "jeans", "lower_colour": "black", "shoes_colour": "black"}},
                {"id": 4, "attributes": {"lower_type": "skirt", "lower_colour": "blue", "shoes_colour": "black"}}]}
    freq = part_value_frequencies(meta)
    assert freq[1] == {"lower": 0.5, "shoes": 0.25}  # blue jeans: 2 of 4; white shoes: 1 of 4
    assert freq[3] == {"lower": 0.25, "shoes": 0.75}


def test_tsne_figure_draws_each_kind_with_its_own_marker():
    import torch

    from tireid_core.analysis import tsne_figure

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(24, 8, generator=g)
    pids = [i % 4 for i in range(24)]
    kinds = ["image"] * 12 + ["text"] * 12
    fig = tsne_figure({"model": (feats, pids, kinds)}, n_ids=4, seed=0)
    ax = fig.axes[0]
    assert "markers: o image, ^ text" in ax.get_title()
    assert sum(len(c.get_offsets()) for c in ax.collections) == 24  # every point once
    plain = tsne_figure({"model": (feats, pids)}, n_ids=4, seed=0)
    assert "markers" not in plain.axes[0].get_title()
