"""Real-format loaders on tiny generated fixtures (tests/fixtures_real.py): layouts, conventions, errors."""
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from fixtures_real import (CUHK_RECORDS, ICFG_RECORDS, RSTP_RECORDS, make_cuhk, make_cuhk03_np, make_duke, make_icfg,
                           make_market,
                           make_rstpreid, make_simpedes, truncate_file, write_image)
from tireid_core.data.datasets import (KNOWN_SIZES, RDE_TRAIN_PAIRS, load_cuhk_pedes, load_dukemtmc_reid,
                                       load_icfg_pedes, load_market1501, load_reid_dataset, load_rstpreid,
                                       load_text_image_dataset, rde_noise_index, read_image, relabel,
                                       write_manifest)
from tireid_core.data.records import DatasetError


# ------------------------------------------------------------------------------------ read_image

@pytest.mark.parametrize("mode,name", [("RGB", "a.jpg"), ("L", "g.jpg"), ("RGBA", "t.png")])
def test_read_image_returns_rgb(tmp_path, mode, name):
    write_image(tmp_path / name, mode)
    im = read_image(tmp_path / name)
    assert im.mode == "RGB" and im.size == (16, 32)


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="nowhere.jpg"):
        read_image(tmp_path / "nowhere.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="junk.jpg"):
        read_image(tmp_path / "junk.jpg")
    write_image(tmp_path / "cut.png")
    truncate_file(tmp_path / "cut.png")
    Image.open(tmp_path / "cut.png")  # the header still parses: only a full decode notices
    with pytest.raises(DatasetError, match="cut.png"):
        read_image(tmp_path / "cut.png")


# ------------------------------------------------------------------------------------ CUHK-PEDES

@pytest.mark.parametrize("layout", ["parent", "self"])
@pytest.mark.parametrize("json_name", ["reid_raw.json", "CUHK-PEDES.json"])
def test_cuhk_layouts_and_names(tmp_path, layout, json_name):
    ds = load_cuhk_pedes(make_cuhk(tmp_path, layout=layout, json_name=json_name))
    assert ds.name == "cuhk-pedes" and ds.root == tmp_path / "CUHK-PEDES"
    assert [e.file_path for e in ds.images] == [r[2] for r in CUHK_RECORDS]  # annotation order


def test_cuhk_records(tmp_path):
    ds = load_cuhk_pedes(make_cuhk(tmp_path))
    counts = {s: (len({e.pid for e in ds.split(s)}), len(ds.split(s)), sum(len(e.captions) for e in ds.split(s)))
              for s in ("train", "val", "test")}
    assert counts == {"train": (3, 6, 13), "val": (1, 2, 4), "test": (2, 4, 8)}
    e = ds.images[0]
    assert e.path.is_absolute() and e.path.is_file() and e.path == tmp_path / "CUHK-PEDES/imgs/CUHK01/0001001.png"
    assert e.pid == 1  # 1-based id kept as stored
    assert e.tokens is not None and len(e.tokens) == len(e.captions)
    assert {p.suffix for p in (x.path for x in ds.images)} == {".jpg", ".png"}
    # IRRA order: JSON order, captions in list order; the 3-caption image contributes 3 pairs
    pairs = ds.pairs("train")
    assert len(pairs) == 13
    assert [p.image_index for p in pairs][:7] == [0, 0, 1, 1, 2, 2, 2]
    assert pairs[4].caption == ds.images[2].captions[0]


def test_cuhk_grayscale_and_rgba_load_as_rgb(tmp_path):
    ds = load_cuhk_pedes(make_cuhk(tmp_path))
    modes = {Image.open(e.path).mode for e in ds.images}
    assert {"L", "RGBA"} <= modes
    assert {read_image(e.path).mode for e in ds.images} == {"RGB"}


def test_cuhk_malformed_json_names_file_and_line(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_cuhk_pedes(make_cuhk(tmp_path, "malformed_json"))
    assert "reid_raw.json" in str(err.value) and "line 4" in str(err.value) and "column" in str(err.value)


@pytest.mark.parametrize("variant,words", [
    ("missing_field", ["record 3", "'captions'"]),
    ("wrong_type", ["record 5", "'id'", "str"]),
    ("token_mismatch", ["record 0", "'processed_tokens'"]),
    ("no_captions", ["record 9", "'captions'"]),
    ("dev_split", ["record 7", "'split'", "'dev'"]),
    ("wrong_field", ["'img_path'", "wrong loader?"]),
])
def test_cuhk_bad_records_name_file_index_and_field(tmp_path, variant, words):
    with pytest.raises(DatasetError) as err:
        load_cuhk_pedes(make_cuhk(tmp_path, variant))
    msg = str(err.value)
    assert "reid_raw.json" in msg
    for w in words:
        assert w in msg


def test_cuhk_missing_images_grouped_per_subfolder(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_cuhk_pedes(make_cuhk(tmp_path / "a", "missing_image"))
    assert "imgs/Market/" in str(err.value) and "0006_c3s1_000003_01.jpg" in str(err.value)
    with pytest.raises(DatasetError) as err:
        load_cuhk_pedes(make_cuhk(tmp_path / "b", "missing_subfolder"))
    msg = str(err.value)
    assert "imgs/CUHK01/: 3 of 3" in msg and "does not exist" in msg


def test_cuhk_loader_does_not_decode(tmp_path):
    ds = load_cuhk_pedes(make_cuhk(tmp_path, "corrupt_image"))  # existence only: cheap
    bad = [e.path for e in ds.images if e.path.name == "0005002.png"][0]
    with pytest.raises(DatasetError, match="0005002.png"):
        read_image(bad)


def test_cuhk_missing_annotation(tmp_path):
    (tmp_path / "CUHK-PEDES").mkdir()
    with pytest.raises(DatasetError, match="reid_raw.json or CUHK-PEDES.json"):
        load_cuhk_pedes(tmp_path)


# ------------------------------------------------------------------------------ ICFG-PEDES / RSTPReid

@pytest.mark.parametrize("json_name", ["ICFG-PEDES.json", "ICFG_PEDES.json"])
def test_icfg_both_annotation_names(tmp_path, json_name):
    ds = load_icfg_pedes(make_icfg(tmp_path, json_name=json_name))
    assert [e.file_path for e in ds.images] == [r[2] for r in ICFG_RECORDS]
    assert all(len(e.captions) == 1 for e in ds.images)
    assert sorted({e.pid for e in ds.split("train")}) == [0, 1, 2]  # 0-based, kept as stored
    assert ds.split("val") == []
    assert ds.images[3].split == "train" and ds.images[3].file_path.startswith("test/")  # folder is not the split


def test_icfg_no_annotation_names_both(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_icfg_pedes(make_icfg(tmp_path, "no_annotation"))
    assert "ICFG-PEDES.json" in str(err.value) and "ICFG_PEDES.json" in str(err.value)


@pytest.mark.parametrize("variant,words", [("val_split", ["record 6", "'val'"]),
                                           ("two_captions", ["record 0", "expected exactly 1"]),
                                           ("wrong_field", ["wrong loader?"])])
def test_icfg_bad_records(tmp_path, variant, words):
    with pytest.raises(DatasetError) as err:
        load_icfg_pedes(make_icfg(tmp_path, variant))
    assert "ICFG-PEDES.json" in str(err.value)
    assert all(w in str(err.value) for w in words)


def test_rstpreid(tmp_path):
    ds = load_rstpreid(make_rstpreid(tmp_path, layout="self"))
    assert [e.file_path for e in ds.images] == [r[2] for r in RSTP_RECORDS]
    assert all(len(e.captions) == 2 and e.tokens is None for e in ds.images)
    assert ds.images[3].pid == 1 and ds.images[3].path.name == "0007_c9_0002.jpg"  # the id field wins
    assert len(ds.pairs("train")) == 12


@pytest.mark.parametrize("variant,words", [("wrong_field", ["'file_path'", "wrong loader?"]),
                                           ("three_captions", ["record 0", "expected exactly 2"]),
                                           ("missing_image", ["imgs/", "0004_c7_0002.jpg"])])
def test_rstpreid_errors(tmp_path, variant, words):
    with pytest.raises(DatasetError) as err:
        load_rstpreid(make_rstpreid(tmp_path, variant))
    assert "data_captions.json" in str(err.value)
    assert all(w in str(err.value) for w in words)


def test_text_registry(tmp_path):
    assert load_text_image_dataset("cuhk-pedes", make_cuhk(tmp_path / "c")).name == "cuhk-pedes"
    assert load_text_image_dataset("icfg-pedes", make_icfg(tmp_path / "i")).name == "icfg-pedes"
    assert load_text_image_dataset("rstpreid", make_rstpreid(tmp_path / "r")).name == "rstpreid"
    ds = load_text_image_dataset("simpedes", make_simpedes(tmp_path / "s"))
    assert ds.name == "simpedes" and len(ds.images) == len(CUHK_RECORDS)
    with pytest.raises(ValueError) as err:
        load_text_image_dataset("cuhk", tmp_path)
    assert all(n in str(err.value) for n in ("cuhk-pedes", "icfg-pedes", "rstpreid", "simpedes"))


# ---------------------------------------------------------------------------------- Market / Duke

@pytest.mark.parametrize("layout", ["torchreid", "torchreid-flat", "fastreid", "self"])
def test_market_layouts(tmp_path, layout):
    ds = load_market1501(make_market(tmp_path, layout=layout))
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (5, 3, 7)


def test_market_conventions(tmp_path):
    ds = load_market1501(make_market(tmp_path))
    assert [im.pid for im in ds.train] == [2, 2, 7, 7, 10]  # raw pids, sorted names, Thumbs.db ignored
    assert [im.camid for im in ds.train] == [0, 1, 0, 2, 5]  # 0-based
    names = [im.path.name for im in ds.gallery]
    assert names == sorted(names)
    assert not any(im.pid == -1 for im in ds.gallery)  # junk dropped
    assert sum(im.pid == 0 for im in ds.gallery) == 2  # distractors kept
    assert (3, 0) in {(im.pid, im.camid) for im in ds.gallery}  # same id, same camera as a query: kept
    assert relabel(im.pid for im in ds.train) == {2: 0, 7: 1, 10: 2}


def test_market_png_and_mixed_extensions(tmp_path):
    ds = load_market1501(make_market(tmp_path / "p", ext=".png"))
    assert {im.path.suffix for im in ds.train + ds.query + ds.gallery} == {".png"}
    ds = load_market1501(make_market(tmp_path / "m", "mixed_ext"))
    assert len(ds.gallery) == 8


@pytest.mark.parametrize("variant,words", [
    ("junk_in_query", ["-1_c2s1_000001_00.jpg", "junk"]),
    ("distractor_in_train", ["0000_c1s1_000001_01.jpg", "distractor"]),
    ("bad_camera", ["0003_c7s1_000001_01.jpg", "camera"]),
    ("bad_name", ["badname.jpg", "does not parse"]),
    ("missing_query_folder", ["query"]),
])
def test_market_errors_name_the_file(tmp_path, variant, words):
    with pytest.raises(DatasetError) as err:
        load_market1501(make_market(tmp_path, variant))
    assert all(w in str(err.value) for w in words)


def test_market_not_found(tmp_path):
    with pytest.raises(DatasetError, match="bounding_box_train"):
        load_market1501(tmp_path)


@pytest.mark.parametrize("layout", ["torchreid", "plain", "self"])
def test_duke(tmp_path, layout):
    ds = load_dukemtmc_reid(make_duke(tmp_path, layout=layout))
    assert [im.path.name for im in ds.train] == sorted(im.path.name for im in ds.train)
    assert [(im.pid, im.camid) for im in ds.train] == [(1, 0), (1, 1), (4, 4), (4, 7)]  # camera 8 -> 7
    assert (len(ds.query), len(ds.gallery)) == (2, 4)


def test_duke_errors(tmp_path):
    with pytest.raises(DatasetError, match="0005_c9_f0170600.jpg"):
        load_dukemtmc_reid(make_duke(tmp_path / "a", "bad_camera"))
    with pytest.raises(DatasetError, match="-1_c1_f0000001.jpg"):
        load_dukemtmc_reid(make_duke(tmp_path / "b", "junk"))  # Duke has no junk ids: never silently dropped


@pytest.mark.parametrize("layout", ["distributed", "plain"])
@pytest.mark.parametrize("images", ["labeled", "detected"])
def test_cuhk03_np(tmp_path, layout, images):
    root = make_cuhk03_np(tmp_path, layout=layout, images=images)
    ds = load_reid_dataset(f"cuhk03-np-{images}", root)
    assert ds.name == f"cuhk03-np-{images}" and ds.root.name == images
    assert [(im.pid, im.camid) for im in ds.train] == [(1, 0), (1, 0), (1, 1), (3, 0), (3, 1)]  # view 2 -> camera 1
    assert (len(ds.query), len(ds.gallery)) == (3, 5)
    assert all(im.path.suffix == ".png" for im in ds.train + ds.query + ds.gallery)


def test_cuhk03_np_kinds_are_kept_apart(tmp_path):
    make_cuhk03_np(tmp_path, images="labeled")
    with pytest.raises(DatasetError, match="cuhk03-np-detected: no bounding_box_train/"):
        load_reid_dataset("cuhk03-np-detected", tmp_path)  # never falls back to the labeled boxes


def test_cuhk03_np_errors(tmp_path):
    with pytest.raises(DatasetError, match="0005_c3_4.png: camera 3 outside 1..2"):
        load_reid_dataset("cuhk03-np-labeled", make_cuhk03_np(tmp_path / "a", "bad_camera"))
    with pytest.raises(DatasetError, match="-1_c1_2.png: junk id -1 in gallery"):
        load_reid_dataset("cuhk03-np-labeled", make_cuhk03_np(tmp_path / "b", "junk"))


def test_reid_registry(tmp_path):
    assert load_reid_dataset("market1501", make_market(tmp_path / "m")).name == "market1501"
    assert load_reid_dataset("dukemtmc-reid", make_duke(tmp_path / "d")).name == "dukemtmc-reid"
    ds = load_reid_dataset("simpedes-market", make_simpedes(tmp_path / "s"))
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (6, 2, 3)
    with pytest.raises(ValueError, match="market1501"):
        load_reid_dataset("market", tmp_path)


# ---------------------------------------------------------------------------------- derived files

def test_known_sizes_match_rde_pairs():
    for name, n in RDE_TRAIN_PAIRS.items():
        assert KNOWN_SIZES[name]["train"]["captions"] == n
    assert sum(s["images"] for s in KNOWN_SIZES["cuhk-pedes"].values()) == 40206
    g = KNOWN_SIZES["market1501"]["gallery"]
    assert g["files"] - g["junk"] == g["images"]
    for kind, images in (("labeled", 7368 + 1400 + 5328), ("detected", 7365 + 1400 + 5332)):  # 767/700 protocol
        sizes = KNOWN_SIZES[f"cuhk03-np-{kind}"]
        assert sum(s["images"] for s in sizes.values()) == images
        assert (sizes["train"]["ids"], sizes["query"]["ids"]) == (767, 700)


def test_rde_noise_index(tmp_path):
    perm = np.random.default_rng(0).permutation(13).astype(np.int64)
    np.save(tmp_path / "ok.npy", perm)
    out = rde_noise_index(tmp_path / "ok.npy", 13)
    assert out.dtype == np.int64 and (out == perm).all()
    with pytest.raises(DatasetError, match="ok.npy.*12 pairs"):
        rde_noise_index(tmp_path / "ok.npy", 12)
    np.save(tmp_path / "dup.npy", np.array([0, 1, 1, 3], dtype=np.int64))
    with pytest.raises(DatasetError, match="dup.npy.*not a permutation"):
        rde_noise_index(tmp_path / "dup.npy", 4)
    np.save(tmp_path / "float.npy", np.arange(4, dtype=np.float32))
    with pytest.raises(DatasetError, match="float.npy.*integer"):
        rde_noise_index(tmp_path / "float.npy", 4)
    with pytest.raises(DatasetError, match="absent.npy"):
        rde_noise_index(tmp_path / "absent.npy", 4)


def test_write_manifest(tmp_path):
    root = make_rstpreid(tmp_path / "data", layout="self")
    m = write_manifest(root, tmp_path / "a" / "manifest.json")
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == m
    paths = [f["path"] for f in m["files"]]
    assert paths == sorted(paths) and "data_captions.json" in paths and "imgs/0000_c1_0001.jpg" in paths
    assert m["n_files"] == len(RSTP_RECORDS) + 1
    f = m["files"][0]
    data = (root / f["path"]).read_bytes()
    assert f["size"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
    assert write_manifest(root, tmp_path / "b.json")["sha256"] == m["sha256"]  # deterministic
    inside = write_manifest(root, root / "manifest.json")  # inside the tree: does not list itself
    assert inside == m
