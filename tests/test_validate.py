"""The dataset validator: planted problems are reported in plain words, all in one run, with exit code 1."""
import json

import pytest

from fixtures_real import make_cuhk, make_cuhk03_np, make_duke, make_icfg, make_market, make_rstpreid, make_simpedes
from tireid_core.data.datasets import KNOWN_SIZES
from tireid_core.data.validate import Report, _compare_sizes, main, validate_dataset

BUILDERS = {"cuhk-pedes": make_cuhk, "icfg-pedes": make_icfg, "rstpreid": make_rstpreid,
            "market1501": make_market, "dukemtmc-reid": make_duke, "cuhk03-np-labeled": make_cuhk03_np,
            "cuhk03-np-detected": lambda tmp, *a, **k: make_cuhk03_np(tmp, *a, images="detected", **k)}


def run_cli(capsys, *args):
    code = main(list(args))
    return code, capsys.readouterr().out


@pytest.mark.parametrize("name", list(BUILDERS))
def test_clean_fixture_passes(tmp_path, capsys, name):
    root = BUILDERS[name](tmp_path)
    code, out = run_cli(capsys, "--dataset", name, "--root", str(root), "--decode-images", "--no-size-check")
    assert code == 0, out
    assert "Result: OK" in out and "ERROR" not in out
    assert "train" in out


def test_clean_cuhk_warnings(tmp_path):
    r = validate_dataset("cuhk-pedes", make_cuhk(tmp_path), decode_images=True, check_sizes=False)
    assert r.ok
    text = "\n".join(r.warnings)
    assert "1 image with a caption count other than 2: record 2 (3 captions)" in text
    assert "mixed image extensions: .jpg 8, .png 4" in text
    assert "not stored as RGB" in text and "L: 1" in text and "RGBA: 1" in text
    assert r.counts == {"train": {"ids": 3, "images": 6, "captions": 13}, "val": {"ids": 1, "images": 2, "captions": 4},
                        "test": {"ids": 2, "images": 4, "captions": 8}}


def test_modes_and_decoding_need_the_flag(tmp_path):
    root = make_cuhk(tmp_path, "corrupt_image")
    quick = validate_dataset("cuhk-pedes", root, check_sizes=False)
    assert quick.ok and not any("RGB" in w for w in quick.warnings)
    assert any("--decode-images" in m for m in quick.info)
    full = validate_dataset("cuhk-pedes", root, decode_images=True, check_sizes=False)
    assert any("2 images cannot be decoded" in e and "0005002.png" in e and "0006_c2s1_000002_01.jpg" in e
               for e in full.errors)


PLANTED = [
    # (dataset, variant, level, words that must appear in one message)
    ("cuhk-pedes", "malformed_json", "E", ["reid_raw.json", "malformed JSON at line 4"]),
    ("cuhk-pedes", "missing_image", "E", ["missing images", "imgs/Market/", "0006_c3s1_000003_01.jpg"]),
    ("cuhk-pedes", "missing_subfolder", "E", ["imgs/CUHK01/", "3 of 3", "folder does not exist"]),
    ("cuhk-pedes", "wrong_field", "E", ["'img_path' instead of 'file_path'", "wrong loader?", "12 records"]),
    ("cuhk-pedes", "dev_split", "E", ["'split' is 'dev'", "index 7"]),
    ("cuhk-pedes", "overlapping_ids", "E", ["in both train and test", "disjoint"]),
    ("cuhk-pedes", "missing_field", "E", ["missing field 'captions'", "index 3"]),
    ("cuhk-pedes", "wrong_type", "E", ["'id' must be an int", "index 5"]),
    ("cuhk-pedes", "token_mismatch", "E", ["'processed_tokens' has 1 token lists for 2 captions"]),
    ("cuhk-pedes", "no_captions", "E", ["no caption", "index 9"]),
    ("cuhk-pedes", "noncontiguous_ids", "E", ["train ids are not contiguous from 1", "missing 3"]),
    ("cuhk-pedes", "empty_caption", "W", ["without any word", "record 8 caption 1"]),
    ("cuhk-pedes", "duplicate_path", "W", ["more than one record", "Market/0006_c3s1_000003_01.jpg"]),
    ("cuhk-pedes", "single_image", "W", ["train id with a single image", "1369, 4116, 6116"]),
    ("icfg-pedes", "no_annotation", "E", ["ICFG-PEDES.json or ICFG_PEDES.json"]),
    ("icfg-pedes", "val_split", "E", ["'split' is 'val'", "train/test"]),
    ("icfg-pedes", "two_captions", "E", ["2 captions, expected exactly 1"]),
    ("icfg-pedes", "missing_image", "E", ["imgs/train/", "1 of 5"]),
    ("rstpreid", "wrong_field", "E", ["'file_path' instead of 'img_path'", "wrong loader?"]),
    ("rstpreid", "three_captions", "E", ["3 captions, expected exactly 2"]),
    ("rstpreid", "early_release", "E", ["3,901 ids", "early RSTPReid release", "issue #2"]),
    ("rstpreid", "short_caption", "W", ["shorter than 23 words", "record 2 caption 1"]),
    ("rstpreid", "cjk_caption", "W", ["CJK characters", "record 4 caption 0"]),
    ("rstpreid", "clean", "W", ["prefix differs", "0007_c9_0002.jpg has id 1", "informational"]),
    ("market1501", "junk_in_query", "E", ["query/", "junk id -1 in query", "-1_c2s1_000001_00.jpg"]),
    ("market1501", "distractor_in_train", "E", ["bounding_box_train/", "distractor id 0 in train"]),
    ("market1501", "bad_camera", "E", ["camera 7 outside 1..6", "0003_c7s1_000001_01.jpg"]),
    ("market1501", "bad_name", "E", ["does not parse", "badname.jpg"]),
    ("market1501", "missing_query_folder", "E", ["lacks the folder(s) query"]),
    ("market1501", "overlapping_ids", "E", ["in both train and query/gallery", "7"]),
    ("market1501", "query_not_in_gallery", "W", ["without any image in the gallery", "99"]),
    ("market1501", "same_camera_only", "W", ["query's own camera", "0013_c2s1_000100_00.jpg"]),
    ("market1501", "mixed_ext", "W", ["mixed image extensions", ".png 1"]),
    ("dukemtmc-reid", "bad_camera", "E", ["camera 9 outside 1..8", "0005_c9_f0170600.jpg"]),
    ("dukemtmc-reid", "junk", "E", ["junk id -1 in gallery"]),
    ("cuhk03-np-labeled", "bad_camera", "E", ["camera 3 outside 1..2", "0005_c3_4.png"]),
    ("cuhk03-np-labeled", "junk", "E", ["junk id -1 in gallery"]),
    ("cuhk03-np-detected", "overlapping_ids", "E", ["in both train and query/gallery", "3"]),
]


@pytest.mark.parametrize("name,variant,level,words", PLANTED, ids=[f"{p[0]}-{p[1]}" for p in PLANTED])
def test_planted_problem_reported(tmp_path, capsys, name, variant, level, words):
    root = BUILDERS[name](tmp_path, variant)
    code, out = run_cli(capsys, "--dataset", name, "--root", str(root), "--no-size-check")
    prefix = "ERROR: " if level == "E" else "WARNING: "
    lines = [ln for ln in out.splitlines() if ln.startswith(prefix)]
    assert any(all(w in ln for w in words) for ln in lines), out
    assert code == (1 if level == "E" else 0), out


def test_all_problems_collected_in_one_run(tmp_path, capsys):
    root = make_cuhk(tmp_path, ("missing_subfolder", "dev_split", "overlapping_ids", "token_mismatch", "wrong_type",
                                "empty_caption"))
    report_file = tmp_path / "out" / "report.json"
    code, out = run_cli(capsys, "--dataset", "cuhk-pedes", "--root", str(root), "--no-size-check",
                        "--json", str(report_file))
    assert code == 1
    for words in ("imgs/CUHK01/", "'split' is 'dev'", "in both train and test", "processed_tokens", "'id' must be",
                  "without any word"):
        assert words in out, words
    rep = json.loads(report_file.read_text())
    assert rep["ok"] is False and len(rep["errors"]) == 5 and rep["counts"]["train"]["images"] == 5


def test_size_check_default_on_for_real_datasets(tmp_path, capsys):
    """A fixture is not a full download: with the default size check it fails, in plain words."""
    root = make_icfg(tmp_path)
    code, out = run_cli(capsys, "--dataset", "icfg-pedes", "--root", str(root))
    assert code == 1
    assert "ERROR: split sizes differ from the expected table" in out and "train images 6 (expected 34,674)" in out
    code, _ = run_cli(capsys, "--dataset", "icfg-pedes", "--root", str(root), "--no-size-check")
    assert code == 0
    with pytest.raises(SystemExit):  # the two size flags exclude each other
        main(["--dataset", "icfg-pedes", "--root", str(root), "--expect-full", "--no-size-check"])


def test_cuhk_paper_figures_are_reported_not_failed():
    r = Report("cuhk-pedes", "/x", counts={s: dict(v) for s, v in KNOWN_SIZES["cuhk-pedes"].items()})
    r.counts["train"]["captions"] = 68108
    r.counts["test"]["captions"] = 6146  # total 80,412 = 40,206 x 2
    _compare_sizes(r, KNOWN_SIZES["cuhk-pedes"])
    assert r.ok and any("paper figures" in w for w in r.warnings)


def test_simpedes_sizes_from_meta(tmp_path):
    root = make_simpedes(tmp_path / "a")
    for name in ("simpedes", "simpedes-market"):
        r = validate_dataset(name, root, decode_images=True)
        assert r.ok, r.format()
        assert r.expected and any("match the expected table" in m for m in r.info)
    r = validate_dataset("simpedes", make_simpedes(tmp_path / "b", "wrong_meta_sizes"))
    assert any("train images 6 (expected 7)" in e for e in r.errors)
    r = validate_dataset("simpedes", make_simpedes(tmp_path / "c", meta=False))
    assert r.ok and r.expected is None and any("no expected split sizes" in m for m in r.info)


def test_generated_simpedes_validates(tiny_simpedes):
    """The real generator's output passes, with sizes taken from its own meta.json."""
    for name in ("simpedes", "simpedes-market"):
        r = validate_dataset(name, tiny_simpedes)
        assert r.ok, r.format()
        assert r.expected is not None and any("match the expected table" in m for m in r.info), r.format()


def test_unknown_dataset():
    with pytest.raises(ValueError, match="cuhk-pedes"):
        validate_dataset("cuhk", "/nowhere")
