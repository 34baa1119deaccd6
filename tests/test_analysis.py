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
