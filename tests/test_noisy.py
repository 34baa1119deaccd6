"""Noisy correspondence (`tireid_core.data.noisy`): captions move between training pairs only, exactly as the index
says; a bad index file or bad settings get a clear error; the copy loads with the ordinary loader."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tireid_core.data.datasets import DatasetError, load_simpedes
from tireid_core.data.noisy import apply_noise_index, load_noisy_settings, train_pairs, write_noisy_copy
from tireid_core.params import ParamsError

REPO = Path(__file__).resolve().parent.parent


def records():
    return [{"id": 1, "file_path": "a.png", "split": "train", "captions": ["a0", "a1"], "processed_tokens": [["a0"], ["a1"]]},
            {"id": 2, "file_path": "t.png", "split": "test", "captions": ["t0"]},
            {"id": 3, "file_path": "b.png", "split": "train", "captions": ["b0"], "processed_tokens": [["b0"]]}]


def test_pairs_are_train_captions_in_file_then_list_order():
    assert train_pairs(records()) == [(0, 0), (0, 1), (2, 0)]


def test_pair_i_takes_the_caption_of_pair_index_i_and_nothing_else_moves():
    src = records()
    out, noisy = apply_noise_index(src, np.array([2, 1, 0]))  # pairs 0 and 2 swap captions; pair 1 keeps its own
    assert noisy == 2
    assert out[0]["captions"] == ["b0", "a1"] and out[2]["captions"] == ["a0"]
    assert out[0]["processed_tokens"] == [["b0"], ["a1"]] and out[2]["processed_tokens"] == [["a0"]]
    assert out[1] == src[1] and [r["id"] for r in out] == [1, 2, 3]  # test split and identities untouched
    assert src[0]["captions"] == ["a0", "a1"]  # the input is not modified
    with pytest.raises(DatasetError, match="2 entries for 3 training pairs"):
        apply_noise_index(src, np.array([1, 0]))


def test_noisy_copy_of_simpedes_loads_and_only_training_captions_move(tiny_simpedes, tmp_path):
    out = tmp_path / "noisy" / "0.5"
    record = write_noisy_copy("simpedes", tiny_simpedes, out, rate=0.5, seed=0)
    clean, noisy = load_simpedes(tiny_simpedes), load_simpedes(out)
    clean_raw = json.loads((tiny_simpedes / "reid_raw.json").read_text())
    noisy_raw = json.loads((out / "reid_raw.json").read_text())
    n = len(train_pairs(clean_raw))
    assert record["n_pairs"] == n and 0 < record["noisy_pairs"] <= n // 2
    moved = sum(a != b for (r, c) in train_pairs(clean_raw)
                for a, b in [(clean_raw[r]["captions"][c], noisy_raw[r]["captions"][c])])
    assert 0 < moved <= record["noisy_pairs"]  # a moved caption can equal the original (same text twice)
    for a, b in zip(clean_raw, noisy_raw):
        assert (a["id"], a["file_path"], a["split"]) == (b["id"], b["file_path"], b["split"])
        if a["split"] != "train":
            assert a == b
    assert sorted(c for r in clean_raw if r["split"] == "train" for c in r["captions"]) == \
        sorted(c for r in noisy_raw if r["split"] == "train" for c in r["captions"])  # permuted, none lost
    index = np.load(out / "noise_index.npy")
    clean_pairs, noisy_pairs = clean.pairs("train"), noisy.pairs("train")  # what training reads, in IRRA order
    assert [p.pid for p in noisy_pairs] == [p.pid for p in clean_pairs]  # images keep their identities
    assert [p.caption for p in noisy_pairs] == [clean_pairs[j].caption for j in index]
    assert [p.caption for p in noisy.pairs("test")] == [p.caption for p in clean.pairs("test")]
    assert json.loads((out / "noise.json").read_text())["noisy_pairs"] == record["noisy_pairs"]
    assert index.shape == (n,)


def test_an_rde_index_file_is_checked_and_a_failed_copy_leaves_nothing(tiny_simpedes, tmp_path):
    raw = json.loads((tiny_simpedes / "reid_raw.json").read_text())
    n = len(train_pairs(raw))
    good = tmp_path / "good.npy"
    np.save(good, np.roll(np.arange(n, dtype=np.int64), 1))
    record = write_noisy_copy("simpedes", tiny_simpedes, tmp_path / "from_file", index_file=good)
    assert record["noisy_pairs"] == n and record["index_file"] == str(good)
    short = tmp_path / "short.npy"
    np.save(short, np.arange(n - 1, dtype=np.int64))
    with pytest.raises(DatasetError, match=f"has {n - 1} entries but the train split has {n} pairs"):
        write_noisy_copy("simpedes", tiny_simpedes, tmp_path / "bad", index_file=short)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.*"))
    with pytest.raises(ValueError, match="either a noise rate"):
        write_noisy_copy("simpedes", tiny_simpedes, tmp_path / "both", rate=0.2, index_file=good)


def test_settings_are_checked(tmp_path):
    settings = load_noisy_settings(REPO / "params.yaml")
    assert settings.run_sets("ssan", 0.2) == ["ssan.data.root=data/simpedes_noisy/0.2",
                                             "ssan.out_dir=runs/demo/noisy/0.2/ssan"]
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    for bad, match in (({"rates": [0.0, 0.2]}, "rate 0 is the clean run"), ({"methods": ["san"]}, "not a text-image"),
                       ({"extra": 1}, "expected keys")):
        section = {**data["noisy_correspondence"], **bad}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({**data, "noisy_correspondence": section}))
        with pytest.raises(ParamsError, match=match):
            load_noisy_settings(tmp_path / "params.yaml")
