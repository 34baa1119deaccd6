"""Tiny datasets in each real on-disk format, generated into a temporary folder.

Why: the real datasets are licence-restricted, so tests cannot ship them. These builders reproduce their
layouts and awkward cases (mixed .jpg/.png, grayscale and RGBA files, an image with 3 captions, both ICFG
annotation names, RSTPReid's `img_path`, Market's -1 junk and 0000 distractors, same-id-same-camera gallery
entries) and, on request, planted problems. Images are made with Pillow at run time: no binary fixtures.

Every builder takes `variant`, a problem name or a tuple of names ("clean" plants nothing), and returns the
root to hand to the loader. The clean fixtures validate without errors (warnings only).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

_COLOURS = ["black", "white", "red", "navy", "grey", "green", "beige", "brown", "yellow", "purple"]


def write_image(path: Path, mode: str = "RGB", seed: int = 0, size=(16, 32)) -> None:
    """A small noise image (noise, so that truncating the file cuts into the pixel data)."""
    w, h = size
    shape = {"RGB": (h, w, 3), "RGBA": (h, w, 4), "L": (h, w)}[mode]
    arr = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def truncate_file(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def caption(i: int, j: int) -> str:
    """A distinct, 32-word description (RSTPReid promises at least 23 words)."""
    c = [_COLOURS[(i * 3 + j * 5 + k) % len(_COLOURS)] for k in range(5)]
    return (f"A person number {i} in view {j} wears a {c[0]} jacket over a {c[1]} shirt, {c[2]} trousers "
            f"and {c[3]} shoes, and carries a {c[4]} bag in the right hand while walking slowly.")


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _variants(variant) -> set[str]:
    v = {variant} if isinstance(variant, str) else set(variant)
    return v - {"clean"}


def _write_json(path: Path, records: list, malformed: bool) -> None:
    text = json.dumps(records, indent=1)
    if malformed:
        lines = text.splitlines()
        lines.insert(3, "  this is not json,")  # becomes line 4
        text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")


def _dataset_dir(tmp: Path, folder: str, layout: str) -> tuple[Path, Path]:
    """(dataset folder, root to pass): layout "parent" passes its parent, "self" the folder itself."""
    ddir = Path(tmp) / folder
    return ddir, (Path(tmp) if layout == "parent" else ddir)


# ------------------------------------------------------------------------------------ CUHK-PEDES

# (split, id, file_path, number of captions, image mode): all source sub-folders, mixed extensions,
# a grayscale and an RGBA image, and one image with 3 captions.
CUHK_RECORDS = [
    ("train", 1, "CUHK01/0001001.png", 2, "RGB"),
    ("train", 1, "train_query/p1_s1.jpg", 2, "RGB"),
    ("train", 2, "Market/0002_c1s1_000451_01.jpg", 3, "RGB"),
    ("train", 2, "cam_a/002_45.jpg", 2, "L"),
    ("train", 3, "CUHK03/3_1_01.png", 2, "RGBA"),
    ("train", 3, "cam_b/003_90.jpg", 2, "RGB"),
    ("val", 4, "test_query/p4_s1.jpg", 2, "RGB"),
    ("val", 4, "test_query/p4_s2.jpg", 2, "RGB"),
    ("test", 5, "CUHK01/0005001.png", 2, "RGB"),
    ("test", 5, "CUHK01/0005002.png", 2, "RGB"),
    ("test", 6, "Market/0006_c2s1_000002_01.jpg", 2, "RGB"),
    ("test", 6, "Market/0006_c3s1_000003_01.jpg", 2, "RGB"),
]
CUHK_VARIANTS = ("malformed_json", "missing_image", "missing_subfolder", "corrupt_image", "wrong_field",
                 "dev_split", "overlapping_ids", "missing_field", "wrong_type", "token_mismatch", "no_captions",
                 "empty_caption", "duplicate_path", "single_image", "noncontiguous_ids")


def _cuhk_records() -> list[dict]:
    out = []
    for i, (split, pid, fp, n, _) in enumerate(CUHK_RECORDS):
        caps = [caption(i, j) for j in range(n)]
        out.append({"split": split, "captions": caps, "file_path": fp,
                    "processed_tokens": [tokens(c) for c in caps], "id": pid})
    return out


def _write_cuhk_form(ddir: Path, v: set[str], json_name: str = "reid_raw.json") -> None:
    unknown = v - set(CUHK_VARIANTS)
    assert not unknown, f"unknown CUHK variant(s) {unknown}"
    recs = _cuhk_records()
    imgs = ddir / "imgs"
    for i, (_, _, fp, _, mode) in enumerate(CUHK_RECORDS):
        write_image(imgs / fp, mode, seed=i)

    if "wrong_field" in v:
        recs = [{("img_path" if k == "file_path" else k): x for k, x in r.items()} for r in recs]
    if "dev_split" in v:
        recs[7]["split"] = "dev"
    if "overlapping_ids" in v:
        recs[11]["id"] = 1  # a test image of train id 1
    if "missing_field" in v:
        del recs[3]["captions"]
    if "wrong_type" in v:
        recs[5]["id"] = "3"
    if "token_mismatch" in v:
        recs[0]["processed_tokens"] = recs[0]["processed_tokens"][:1]
    if "no_captions" in v:
        recs[9]["captions"], recs[9]["processed_tokens"] = [], []
    if "empty_caption" in v:
        recs[8]["captions"][1], recs[8]["processed_tokens"][1] = "   ", []
    if "duplicate_path" in v:
        recs[10]["file_path"] = recs[11]["file_path"]
    if "noncontiguous_ids" in v:
        recs[4]["id"] = recs[5]["id"] = 9  # train ids 1, 2, 9
    if "single_image" in v:
        del recs[1]  # train id 1 keeps one image

    _write_json(ddir / json_name, recs, "malformed_json" in v)
    if "missing_image" in v:
        (imgs / "Market/0006_c3s1_000003_01.jpg").unlink()
    if "missing_subfolder" in v:
        shutil.rmtree(imgs / "CUHK01")  # like the incomplete download of IRRA issue #49
    if "corrupt_image" in v:
        truncate_file(imgs / "CUHK01/0005002.png")
        (imgs / "Market/0006_c2s1_000002_01.jpg").write_bytes(b"this is not a JPEG file")


def make_cuhk(tmp, variant="clean", layout: str = "parent", json_name: str = "reid_raw.json") -> Path:
    """CUHK-PEDES: `<tmp>/CUHK-PEDES/{reid_raw.json, imgs/...}`; 12 images, ids 1-6 (train 1-3, val 4, test 5-6)."""
    ddir, root = _dataset_dir(tmp, "CUHK-PEDES", layout)
    _write_cuhk_form(ddir, _variants(variant), json_name)
    return root


# ------------------------------------------------------------------------------------ ICFG-PEDES

# (split, id, file_path): folders keep MSMT17's storage, which is not the ICFG split (record 3).
ICFG_RECORDS = [
    ("train", 0, "train/0000/0000_000_01_0303morning_0008_0.jpg"),
    ("train", 0, "train/0000/0000_001_05_0303noon_0102_1.jpg"),
    ("train", 1, "train/0001/0001_000_03_0303afternoon_0034_0.jpg"),
    ("train", 1, "test/0900/0900_002_07_0302noon_0200_0.jpg"),
    ("train", 2, "train/0002/0002_003_12_0303morning_0550_2.jpg"),
    ("train", 2, "train/0002/0002_004_14_0303noon_1027_1.jpg"),
    ("test", 3, "test/0003/0003_000_02_0304morning_0010_0.jpg"),
    ("test", 3, "test/0003/0003_001_09_0304noon_0020_0.jpg"),
    ("test", 4, "test/0004/0004_000_11_0304afternoon_0030_0.jpg"),
    ("test", 4, "test/0004/0004_002_13_0304afternoon_0040_1.jpg"),
]
ICFG_VARIANTS = ("no_annotation", "val_split", "two_captions", "wrong_field", "malformed_json", "missing_image")


def make_icfg(tmp, variant="clean", json_name: str = "ICFG-PEDES.json", layout: str = "parent") -> Path:
    """ICFG-PEDES: `<tmp>/ICFG-PEDES/{<json_name>, imgs/{train,test}/...}`; one caption per image."""
    v = _variants(variant)
    assert not v - set(ICFG_VARIANTS), f"unknown ICFG variant(s) {v - set(ICFG_VARIANTS)}"
    ddir, root = _dataset_dir(tmp, "ICFG-PEDES", layout)
    recs = []
    for i, (split, pid, fp) in enumerate(ICFG_RECORDS):
        write_image(ddir / "imgs" / fp, seed=100 + i)
        c = caption(100 + i, 0)
        recs.append({"split": split, "captions": [c], "file_path": fp, "processed_tokens": [tokens(c)], "id": pid})
    if "val_split" in v:
        recs[6]["split"] = "val"  # ICFG-PEDES has no val split
    if "two_captions" in v:
        recs[0]["captions"].append(caption(999, 1))
        recs[0]["processed_tokens"].append(tokens(recs[0]["captions"][1]))
    if "wrong_field" in v:
        recs = [{("img_path" if k == "file_path" else k): x for k, x in r.items()} for r in recs]
    if "missing_image" in v:
        (ddir / "imgs" / ICFG_RECORDS[2][2]).unlink()
    if "no_annotation" not in v:
        _write_json(ddir / json_name, recs, "malformed_json" in v)
    return root


# -------------------------------------------------------------------------------------- RSTPReid

# (split, id, img_path): flat folder; one file-name prefix differs from its id (informational).
RSTP_RECORDS = [
    ("train", 0, "0000_c1_0001.jpg"), ("train", 0, "0000_c3_0002.jpg"),
    ("train", 1, "0001_c2_0001.jpg"), ("train", 1, "0007_c9_0002.jpg"),
    ("train", 2, "0002_c14_0001.jpg"), ("train", 2, "0002_c5_0002.jpg"),
    ("val", 3, "0003_c1_0001.jpg"), ("val", 3, "0003_c2_0002.jpg"),
    ("test", 4, "0004_c6_0001.jpg"), ("test", 4, "0004_c7_0002.jpg"),
]
RSTP_VARIANTS = ("wrong_field", "three_captions", "early_release", "short_caption", "cjk_caption",
                 "missing_image", "malformed_json")


def make_rstpreid(tmp, variant="clean", layout: str = "parent") -> Path:
    """RSTPReid: `<tmp>/RSTPReid/{data_captions.json, imgs/<file>.jpg}`; `img_path`, two captions per image."""
    v = _variants(variant)
    assert not v - set(RSTP_VARIANTS), f"unknown RSTPReid variant(s) {v - set(RSTP_VARIANTS)}"
    ddir, root = _dataset_dir(tmp, "RSTPReid", layout)
    imgs = ddir / "imgs"
    rows = list(RSTP_RECORDS)
    if "early_release" in v:  # 3,901 train ids; one shared image content keeps it fast
        rows = [("train", pid, f"{pid:04d}_c1_0001.jpg") for pid in range(3901)]
        rows += [("val", 3901, "3901_c1_0001.jpg"), ("val", 3901, "3901_c2_0002.jpg"),
                 ("test", 3902, "3902_c1_0001.jpg"), ("test", 3902, "3902_c2_0002.jpg")]
    recs = []
    blob = None
    for i, (split, pid, fp) in enumerate(rows):
        if blob is None or "early_release" not in v:
            write_image(imgs / fp, seed=200 + i)
            blob = (imgs / fp).read_bytes()
        else:
            (imgs / fp).write_bytes(blob)
        recs.append({"id": pid, "img_path": fp, "split": split,
                     "captions": [caption(200 + i, 0), caption(200 + i, 1)]})
    if "wrong_field" in v:
        recs = [{("file_path" if k == "img_path" else k): x for k, x in r.items()} for r in recs]
    if "three_captions" in v:
        recs[0]["captions"].append(caption(998, 2))
    if "short_caption" in v:
        recs[2]["captions"][1] = "A man in a black coat."
    if "cjk_caption" in v:
        recs[4]["captions"][0] += " 他背着一个黑色的包。"
    if "missing_image" in v:
        (imgs / rows[-1][2]).unlink()
    _write_json(ddir / "data_captions.json", recs, "malformed_json" in v)
    return root


# ---------------------------------------------------------------------------- Market-1501 / Duke

# Market: train 3 ids / 5 images; query 3 ids; gallery 9 files = 5 real + 2 distractors (0000) + 2 junk (-1),
# with same-id-same-camera entries (0003 c1, 0005 c2). A Thumbs.db lies in train as in the real download.
MARKET_FILES = {
    "bounding_box_train": ["0002_c1s1_000451_03", "0002_c2s1_000301_01", "0007_c1s1_000551_01",
                           "0007_c3s3_015951_01", "0010_c6s2_122168_02"],
    "query": ["0003_c1s1_001051_00", "0005_c2s1_004051_00", "0011_c4s1_000100_00"],
    "bounding_box_test": ["0003_c4s2_040912_01", "0003_c1s1_001101_03", "0005_c3s1_004120_01",
                          "0005_c2s1_004100_02", "0011_c5s1_000200_01", "0000_c6s3_072045_04",
                          "0000_c1s1_000010_01", "-1_c1s4_013579_01", "-1_c3s1_000001_01"],
}
MARKET_LAYOUTS = {"torchreid": "market1501/Market-1501-v15.09.15", "torchreid-flat": "market1501",
                  "fastreid": "Market-1501-v15.09.15", "self": ""}
MARKET_VARIANTS = ("junk_in_query", "distractor_in_train", "bad_camera", "bad_name", "missing_query_folder",
                   "corrupt_image", "query_not_in_gallery", "same_camera_only", "mixed_ext", "overlapping_ids")

DUKE_FILES = {
    "bounding_box_train": ["0001_c1_f0046182", "0001_c2_f0046860", "0004_c8_f0123456", "0004_c5_f0102231"],
    "query": ["0005_c1_f0170455", "0008_c7_f0001000"],
    "bounding_box_test": ["0005_c6_f0171893", "0005_c1_f0170500", "0008_c2_f0001200", "0019_c3_f0000100"],
}
DUKE_LAYOUTS = {"torchreid": "dukemtmc-reid/DukeMTMC-reID", "plain": "DukeMTMC-reID", "self": ""}


def _write_reid_tree(ddir: Path, files: dict[str, list[str]], ext: str) -> None:
    k = 0
    for folder, names in files.items():
        (ddir / folder).mkdir(parents=True, exist_ok=True)
        for name in reversed(names):  # creation order must not matter
            e = ext if "." not in name else ""
            write_image(ddir / folder / f"{name}{e}", seed=300 + k)
            k += 1


def make_market(tmp, variant="clean", layout: str = "torchreid", ext: str = ".jpg") -> Path:
    """Market-1501 in one of the accepted layouts; returns the root the loader takes."""
    v = _variants(variant)
    assert not v - set(MARKET_VARIANTS), f"unknown Market variant(s) {v - set(MARKET_VARIANTS)}"
    ddir = Path(tmp) / MARKET_LAYOUTS[layout]
    files = {k: list(x) for k, x in MARKET_FILES.items()}
    if "junk_in_query" in v:
        files["query"].append("-1_c2s1_000001_00")
    if "distractor_in_train" in v:
        files["bounding_box_train"].append("0000_c1s1_000001_01")
    if "bad_camera" in v:
        files["bounding_box_test"].append("0003_c7s1_000001_01")
    if "bad_name" in v:
        files["query"].append("badname")
    if "query_not_in_gallery" in v:
        files["query"].append("0099_c1s1_000001_00")
    if "same_camera_only" in v:  # its only gallery image comes from the query's camera
        files["query"].append("0013_c2s1_000100_00")
        files["bounding_box_test"].append("0013_c2s1_000150_01")
    if "mixed_ext" in v:
        files["bounding_box_test"].append("0011_c6s1_000300_01.png")
    if "overlapping_ids" in v:
        files["bounding_box_test"].append("0007_c2s1_000001_01")
    _write_reid_tree(ddir, files, ext)
    (ddir / "bounding_box_train" / "Thumbs.db").write_bytes(b"\x00not an image")
    if "missing_query_folder" in v:
        shutil.rmtree(ddir / "query")
    if "corrupt_image" in v:
        truncate_file(ddir / "bounding_box_test" / f"0003_c4s2_040912_01{ext}")
    return Path(tmp)


def _reid_fixture(tmp, ddir: str, files: dict, planted: dict, variant, ext: str, name: str) -> Path:
    """A Market-style tree with the files of `files`, plus one planted file (folder, stem) per named variant."""
    v = _variants(variant)
    assert not v - set(planted), f"unknown {name} variant(s) {v - set(planted)}"
    files = {k: list(x) for k, x in files.items()}
    for variant_name in sorted(v):
        folder, stem = planted[variant_name]
        files[folder].append(stem)
    _write_reid_tree(Path(tmp) / ddir, files, ext)
    return Path(tmp)


DUKE_PLANTED = {"bad_camera": ("bounding_box_test", "0005_c9_f0170600"),
                "junk": ("bounding_box_test", "-1_c1_f0000001"),
                "overlapping_ids": ("query", "0001_c3_f0000100")}


def make_duke(tmp, variant="clean", layout: str = "torchreid") -> Path:
    """DukeMTMC-reID in one of the accepted layouts; cameras 1..8; returns the root the loader takes."""
    return _reid_fixture(tmp, DUKE_LAYOUTS[layout], DUKE_FILES, DUKE_PLANTED, variant, ".jpg", "Duke")


CUHK03_NP_FILES = {  # <pid>_c<view>_<index>.png, views 1 and 2 of one camera pair
    "bounding_box_train": ["0001_c1_1", "0001_c1_2", "0001_c2_6", "0003_c1_1", "0003_c2_7"],
    "query": ["0005_c1_2", "0005_c2_8", "0010_c1_1"],
    "bounding_box_test": ["0005_c1_1", "0005_c2_6", "0005_c2_9", "0010_c2_7", "0012_c1_3"],
}
CUHK03_NP_LAYOUTS = {"distributed": "cuhk03-np/{images}", "plain": "{images}"}
CUHK03_NP_PLANTED = {"bad_camera": ("bounding_box_test", "0005_c3_4"), "junk": ("bounding_box_test", "-1_c1_2"),
                     "overlapping_ids": ("query", "0003_c1_5")}


def make_cuhk03_np(tmp, variant="clean", layout: str = "distributed", images: str = "labeled") -> Path:
    """CUHK03-NP in the Market-style folders of its distribution (cameras 1..2, PNG); returns the root the loader
    takes. Both image kinds can live under one root (cuhk03-np/labeled, cuhk03-np/detected)."""
    return _reid_fixture(tmp, CUHK03_NP_LAYOUTS[layout].format(images=images), CUHK03_NP_FILES, CUHK03_NP_PLANTED,
                         variant, ".png", "CUHK03-NP")


# -------------------------------------------------------------------------------------- SimPEDES

def make_simpedes(tmp, variant="clean", meta: bool = True) -> Path:
    """SimPEDES layout: `<root>/{reid_raw.json, imgs/, market/ (PNG), meta.json}`; returns root.

    Text part = the CUHK fixture; Market tree built from it the generator's way (train ids -> train, test
    ids: first image -> query, rest -> gallery) plus one distractor and one junk file. meta.json has the
    generator's `images` and `market` keys. variant "wrong_meta_sizes" adds an image to meta.json only.
    """
    v = _variants(variant)
    root = Path(tmp) / "simpedes"
    _write_cuhk_form(root, v - {"wrong_meta_sizes"})
    images, market = [], {"bounding_box_train": 0, "query": 0, "bounding_box_test": 0, "distractors": 1, "junk": 1}
    seen = set()
    for i, (split, pid, fp, n, _) in enumerate(CUHK_RECORDS):
        folder = None
        if split == "train":
            folder = "bounding_box_train"
        elif split == "test":
            folder = "bounding_box_test" if pid in seen else "query"
            seen.add(pid)
        entry = {"file_path": fp, "id": pid, "split": split, "captions": [{} for _ in range(n)], "market_path": None}
        if folder:
            name = f"{pid:04d}_c{i % 6 + 1}s1_{25 * (i + 1):06d}_00.png"
            write_image(root / "market" / folder / name, seed=400 + i)
            entry["market_path"] = f"market/{folder}/{name}"
            market[folder] += 1
        images.append(entry)
    write_image(root / "market/bounding_box_test/0000_c1s1_000500_01.png", seed=450)
    write_image(root / "market/bounding_box_test/-1_c2s1_000525_02.png", seed=451)
    market["bounding_box_test"] += 2
    if "wrong_meta_sizes" in v:
        images.append({**images[0], "file_path": "CUHK01/0001009.png"})
    if meta:
        doc = {"generator": "simpedes-fixture", "seed": 0, "images": images, "market": market}
        (root / "meta.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return root
