"""Loader, metric and run-folder gaps found by trying the project as a user: each case failed before its fix."""
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from fixtures_real import make_cuhk, make_icfg, make_market
from tireid_core.data.datasets import load_cuhk_pedes, load_icfg_pedes, load_market1501
from tireid_core.data.records import DatasetError
from tireid_core.engine import DivergedError, fit
from tireid_core.experiment import build_experiment, drop_wordless_captions
from tireid_core.metrics import retrieval_metrics
from tireid_core.runs import RunMissing, load_run


def test_two_digit_cameras_are_read_whole(tmp_path):
    root = make_market(tmp_path)
    folder = next(Path(root).rglob("bounding_box_test"))
    src = next(folder.glob("*.jpg"))
    shutil.copy(src, folder / "0003_c12s1_000001_01.jpg")
    with pytest.raises(DatasetError, match=r"0003_c12s1_000001_01.jpg.*camera 12"):
        load_market1501(root)


def test_an_empty_query_folder_is_an_error(tmp_path):
    root = make_market(tmp_path)
    for f in next(Path(root).rglob("query")).glob("*"):
        f.unlink()
    with pytest.raises(DatasetError, match=r"no images in query/"):
        load_market1501(root)


@pytest.mark.parametrize("bad", ["../outside.jpg", "/etc/passwd"])
def test_paths_outside_the_image_folder_are_refused(tmp_path, bad):
    root = make_cuhk(tmp_path)
    ann = next(Path(root).rglob("reid_raw.json"))
    records = json.loads(ann.read_text())
    records[0]["file_path"] = bad
    ann.write_text(json.dumps(records))
    with pytest.raises(DatasetError, match="must be a path inside the image folder"):
        load_cuhk_pedes(root)


def test_two_accepted_annotation_names_at_once_are_ambiguous(tmp_path):
    root = make_icfg(tmp_path, json_name="ICFG-PEDES.json")
    ann = next(Path(root).rglob("ICFG-PEDES.json"))
    shutil.copy(ann, ann.with_name("ICFG_PEDES.json"))
    with pytest.raises(DatasetError, match=r"both .*ICFG-PEDES.json and .*ICFG_PEDES.json exist"):
        load_icfg_pedes(root)


def test_string_ids_in_the_metrics_api_are_named():
    with pytest.raises(TypeError, match=r"query_pids must hold integer ids, got strings such as 'a'"):
        retrieval_metrics(torch.zeros(2, 2), ["a", "b"], [1, 2])


def test_wordless_training_captions_are_dropped_and_counted(tiny_params):
    exp = build_experiment(tiny_params())
    pairs = list(exp.train_set.pairs)
    blank = [type(p)(p.image_index, p.pid, p.path, text, p.tokens) for p, text in zip(pairs, ("...", "\u200b", " "))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = drop_wordless_captions(blank + pairs)
    assert kept == pairs
    assert any("dropping 3 training caption(s) without any word" in str(w.message) for w in caught)


def test_the_transformer_text_encoder_follows_max_words(tiny_params):
    exp = build_experiment(tiny_params("baseline.model.text_encoder=transformer", "baseline.data.max_words=100"))
    assert exp.model.text_encoder.max_len == 100


def test_a_failed_rerun_leaves_the_folder_marked_unfinished(tiny_params, tmp_path):
    sets = [f"baseline.out_dir={tmp_path / 'runs'}"]
    fit(build_experiment(tiny_params(*sets)))
    assert (tmp_path / "runs" / "metrics.json").exists()
    with pytest.raises(DivergedError):
        fit(build_experiment(tiny_params(*sets, "baseline.train.lr=1e30", "baseline.train.warmup_epochs=0")))
    assert not (tmp_path / "runs" / "metrics.json").exists()  # no old result beside the new parameters


def test_resumed_curves_equal_uninterrupted_ones(tiny_params, tmp_path):
    class Stop(Exception):
        pass

    def stop(epoch, record):
        if epoch == 0:
            raise Stop

    def curve(run_dir):
        lines = (run_dir / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
        header = lines[0].split("\t")
        return [tuple(v for h, v in zip(header, line.split("\t")) if h != "timestamp") for line in lines[1:]]

    full = build_experiment(tiny_params("baseline.train.epochs=3", f"baseline.out_dir={tmp_path / 'a'}"))
    fit(full)
    part = build_experiment(tiny_params("baseline.train.epochs=3", f"baseline.out_dir={tmp_path / 'b'}"))
    with pytest.raises(Stop):
        fit(part, on_epoch_end=stop)
    fit(build_experiment(tiny_params("baseline.train.epochs=3", f"baseline.out_dir={tmp_path / 'b'}")), resume=True)
    assert curve(tmp_path / "b") == curve(tmp_path / "a")
    assert [row[0] for row in curve(tmp_path / "a")] == ["0", "1", "2"]
