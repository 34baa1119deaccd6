"""SimPEDES generator: determinism, real on-disk formats, ground truth, noise index, atomic write, params."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tireid_core.data import simpedes as sp
from tireid_core.data.simpedes import (SimPEDESParams, content_hash, expected_stripes, generate, load_meta,
                                      token_part_labels, validate)
from tireid_core.data.tokenizers import word_tokens

TINY = dict(ids_train=6, ids_val=3, ids_test=3, images_per_id=3, distractors=3, junk=2,
            near_twin_rate=0.5, noise_rate=0.5)
MARKET_NAME = re.compile(r"([-\d]+)_c(\d)s(\d)_(\d{6})_(\d{2})\.png$")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("sp") / "simpedes"
    meta = generate(SimPEDESParams(**TINY), out)
    return out, meta


@pytest.fixture(scope="module")
def records(tiny):
    return json.loads((tiny[0] / "reid_raw.json").read_text())


def test_same_seed_is_byte_identical_and_seed_changes_hash(tiny, tmp_path):
    root, meta = tiny
    again = generate(SimPEDESParams(**TINY), tmp_path / "again")
    assert _files(root) == _files(tmp_path / "again")
    assert again["content_hash"] == meta["content_hash"] == content_hash(root)
    other = generate(SimPEDESParams(**{**TINY, "seed": 1}), tmp_path / "other")
    assert other["content_hash"] != meta["content_hash"]


def test_cuhk_form_splits_ids_and_captions(tiny, records):
    root, _ = tiny
    assert [sorted(r) for r in records[:1]] == [["captions", "file_path", "id", "processed_tokens", "split"]]
    ids = {s: {r["id"] for r in records if r["split"] == s} for s in ("train", "val", "test")}
    assert ids["train"] == set(range(1, 7)) and ids["val"] == {7, 8, 9} and ids["test"] == {10, 11, 12}
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert len(records) == 12 * 3
    for r in records:
        assert len(r["captions"]) == 2 and len(r["processed_tokens"]) == 2
        assert all(c.strip() for c in r["captions"])
        img = Image.open(root / "imgs" / r["file_path"])
        assert img.mode == "RGB" and img.size == (32, 96)
        assert re.fullmatch(r"cam\d/\d{4}_c\d_v\d_\d+\.png", r["file_path"])


def test_tokens_and_part_labels_align(tiny, records):
    meta = load_meta(tiny[0])
    seen = set()
    for i, r in enumerate(records):
        for j, (cap, toks) in enumerate(zip(r["captions"], r["processed_tokens"])):
            assert toks == word_tokens(cap) and all(t == t.lower() and re.fullmatch(r"[a-z0-9-]+", t) for t in toks)
            labels = token_part_labels(meta, i, j)
            assert len(labels) == len(toks) and set(labels) <= set(sp.LABELS)
            seen |= set(labels)
            info = meta["images"][i]["captions"][j]
            for part in info["mentioned"]:  # only visible parts are described
                assert meta["images"][i]["visibility"][part] >= 0.5
    assert {"upper", "lower", "none"} <= seen


def test_meta_ground_truth(tiny, records):
    root, meta = tiny
    assert meta == load_meta(root)
    assert meta["params"]["seed"] == 0 and meta["version"] == sp.GENERATOR_VERSION
    assert len(meta["images"]) == len(records)
    for r, im in zip(records, meta["images"]):
        assert (r["file_path"], r["id"], r["split"]) == (im["file_path"], im["id"], im["split"])
        assert im["view"] in sp.VIEWS and 1 <= im["camera"] <= 4
    for ident in meta["identities"]:
        assert (root / ident["texture"]).is_file()
        assert len(ident["attribute_vector"]) == len(meta["attribute_names"])
    for name, freq in meta["attribute_frequencies"].items():
        assert abs(sum(freq.values()) - 1) < 1e-4, name


def test_near_twins_differ_in_one_or_two_parts(tiny):
    meta = tiny[1]
    by_id = {i["id"]: i for i in meta["identities"]}
    twins = [i for i in meta["identities"] if i["twin_of"] is not None]
    assert twins, "TINY uses near_twin_rate=0.5, so some twins are expected"
    for t in twins:
        src = by_id[t["twin_of"]]
        assert src["split"] == t["split"] and src["twin_of"] is None
        differ = [p for p in sp.PARTS
                  if sp.identities.part_values(t["attributes"], p) != sp.identities.part_values(src["attributes"], p)]
        assert 1 <= len(differ) <= 2 and differ == t["changed_parts"]
        assert t["attributes"]["gender"] == src["attributes"]["gender"]


def test_market_tree(tiny, records):
    root, meta = tiny
    m = root / "market"
    parsed = {}
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        files = sorted((m / folder).iterdir())
        assert files and all(f.is_file() and not f.is_symlink() for f in files)
        parsed[folder] = [(int(g.group(1)), int(g.group(2))) for g in map(MARKET_NAME.match, (f.name for f in files))]
        assert all(1 <= cam <= 6 for _, cam in parsed[folder])
    train_ids = {r["id"] for r in records if r["split"] == "train"}
    test_ids = {r["id"] for r in records if r["split"] == "test"}
    assert {pid for pid, _ in parsed["bounding_box_train"]} == train_ids
    assert {pid for pid, _ in parsed["query"]} == test_ids
    gallery = parsed["bounding_box_test"]
    assert sum(pid == 0 for pid, _ in gallery) == 3 and sum(pid == -1 for pid, _ in gallery) == 2
    assert {pid for pid, _ in gallery} == test_ids | {0, -1}
    for pid, cam in parsed["query"]:  # every query has a positive from another camera
        assert any(g == pid and c != cam for g, c in gallery)
    assert meta["market"]["bounding_box_test"] == len(gallery)
    # Market files are copies of the CUHK-form images
    for im in meta["images"]:
        if im["market_path"]:
            assert (root / im["market_path"]).read_bytes() == (root / "imgs" / im["file_path"]).read_bytes()


def test_noise_index_is_rde_form(tiny, records, tmp_path):
    root, meta = tiny
    n = sum(len(r["captions"]) for r in records if r["split"] == "train")
    idx = np.load(root / "noise_index.npy")
    assert idx.dtype == np.int64 and idx.shape == (n,)
    assert np.array_equal(np.sort(idx), np.arange(n))
    moved = np.flatnonzero(idx != np.arange(n))
    assert 0 < len(moved) <= n // 2 == meta["noise"]["drawn"]
    assert meta["noise"]["noisy"] == len(moved)
    # the captions themselves are not altered
    clean = generate(SimPEDESParams(**{**TINY, "noise_rate": 0.0}), tmp_path / "clean")
    assert (tmp_path / "clean/reid_raw.json").read_bytes() == (root / "reid_raw.json").read_bytes()
    assert clean["noise"] is None and not (tmp_path / "clean/noise_index.npy").exists()
    # drawn pairs only: with every pair drawn most move, and entry i is the caption now at pair i
    full = sp.noise_index(1000, 1.0, seed=3)
    assert np.array_equal(np.sort(full), np.arange(1000)) and (full != np.arange(1000)).sum() > 950
    assert np.array_equal(sp.noise_index(10, 0.0, seed=3), np.arange(10))


def test_atomic_write(tmp_path, monkeypatch):
    params = SimPEDESParams(**{**TINY, "ids_train": 2, "ids_val": 1, "ids_test": 1, "noise_rate": 0.0})
    out = tmp_path / "data"
    real_render, calls = sp.build.render, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("boom")
        return real_render(*a, **k)

    monkeypatch.setattr(sp.build, "render", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        generate(params, out)
    assert list(tmp_path.iterdir()) == []  # neither out_dir nor a temporary folder is left behind

    monkeypatch.setattr(sp.build, "render", real_render)
    generate(params, out)
    before = _files(out)
    calls.clear()
    monkeypatch.setattr(sp.build, "render", flaky)
    with pytest.raises(RuntimeError):
        generate(SimPEDESParams(**{**TINY, "seed": 7}), out)
    assert _files(out) == before and [p.name for p in tmp_path.iterdir()] == ["data"]

    monkeypatch.setattr(sp.build, "render", real_render)
    meta = generate(SimPEDESParams(**{**TINY, "seed": 7}), out)  # an existing out_dir is replaced
    assert content_hash(out) == meta["content_hash"] and [p.name for p in tmp_path.iterdir()] == ["data"]


@pytest.mark.parametrize("key,value", [
    ("ids_train", -3), ("ids_test", 0), ("images_per_id", 1), ("captions_per_image", 0), ("cameras", 7),
    ("cameras", 1), ("occlusion", 1.5), ("noise_rate", -0.1), ("jitter", "0.1"), ("distractors", -1),
    ("seed", 1.5), ("height", True),
])
def test_params_validation_names_the_key(key, value):
    with pytest.raises(ValueError, match=rf"simpedes\.{key}\b"):
        SimPEDESParams.from_dict({key: value})


@pytest.mark.parametrize("key,value", [
    ("images_per_id", 100), ("cameras", np.int64(7)), ("caption_error_rate", float("nan")), ("width", 11.0),
    ("near_twin_rate", None), ("junk", "3"),
])
def test_one_validation_for_construction_and_from_dict(key, value):
    """Direct construction, from_dict and validate share one check, and its message names the key."""
    for make in (lambda: SimPEDESParams(**{key: value}), lambda: SimPEDESParams.from_dict({key: value}),
                 lambda: validate({key: value})):
        with pytest.raises(ValueError, match=rf"^simpedes\.{key} must be .*, got "):
            make()


def test_validate_checks_split_total_and_normalises():
    with pytest.raises(ValueError, match=r"simpedes\.ids_train \+ simpedes\.ids_val \+ simpedes\.ids_test"):
        validate({"ids_train": 9000, "ids_val": 900})  # + the default ids_test (100) > 9999
    with pytest.raises(ValueError, match=r"unknown key\(s\) simpedes\.colour, simpedes\.out_dir"):
        validate({"out_dir": "data", "colour": 1, "seed": 0})
    out = validate({"seed": np.int32(3), "jitter": 0, "noise_rate": np.float32(0.5)})
    assert out == {"seed": 3, "jitter": 0.0, "noise_rate": 0.5}
    assert [type(v) for v in out.values()] == [int, float, float]


def test_expected_stripes_follow_the_body_layout():
    six = expected_stripes(6)
    assert six == {"head": [0], "upper": [1, 2], "lower": [3, 4], "shoes": [5]}  # = analysis.EXPECTED_STRIPES_6
    assert expected_stripes(3) == {"head": [0], "upper": [1], "lower": [2], "shoes": [2]}
    assert expected_stripes(2) == {"head": [0], "upper": [0], "lower": [1], "shoes": [1]}
    assert expected_stripes(1) == {"head": [0], "upper": [0], "lower": [0], "shoes": [0]}
    for n in (2, 3, 4, 5, 6, 8, 12, 24):
        got = expected_stripes(n)
        assert list(got) == ["head", "upper", "lower", "shoes"]
        for part, stripes in got.items():  # every part gets a contiguous, non-empty run of stripes
            assert stripes and stripes == list(range(stripes[0], stripes[-1] + 1)), (n, part)
        for above, below in zip(got.values(), list(got.values())[1:]):  # top to bottom, overlapping at most 1
            assert above[0] <= below[0] and above[-1] <= below[0] + 1, (n, got)
    # the vertical extents are the same for every view and build in the current layout
    assert all(expected_stripes(6, view=v, build=b) == six
               for v in sp.VIEWS for b in sp.ATTRIBUTE_TABLES["build"]["values"])
    # the rule's threshold: the legs fill 48 % of the bottom sixth, so a lower threshold adds it
    assert expected_stripes(6, min_overlap=1 / 3)["lower"] == [3, 4, 5]
    assert expected_stripes(6, view="back", bag="backpack")["bag"] == [1, 2]
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="n_stripes"):
            expected_stripes(bad)
    with pytest.raises(ValueError, match="min_overlap"):
        expected_stripes(6, min_overlap=0)


def test_expected_stripes_are_derived_from_the_painted_layout(monkeypatch):
    """Moving the painted rectangles moves the stripes: nothing is hard-coded."""
    def layout(view, build, bag, skirt):  # a person that is all head, then one with shoes at the top
        return [("head_front", (0.0, 1.0, 0.2, 0.8), None, False, False)]

    monkeypatch.setattr(sp.body, "_layers", layout)
    assert expected_stripes(4) == {"head": [0, 1, 2, 3]}
    monkeypatch.setattr(sp.body, "_layers", lambda *a: [("shoes", (0.0, 0.3, 0.2, 0.8), None, False, False),
                                                        ("legs_front", (0.5, 1.0, 0.2, 0.8), None, False, False)])
    assert expected_stripes(2) == {"lower": [1], "shoes": [0]}


def test_params_unknown_key_and_defaults():
    with pytest.raises(ValueError, match="unknown key.*ids_trian"):
        SimPEDESParams.from_dict({"ids_trian": 3})
    assert SimPEDESParams.from_dict({}) == SimPEDESParams()
    p = SimPEDESParams.from_dict({"ids_train": np.int64(5), "occlusion": 0})
    assert type(p.ids_train) is int and type(p.occlusion) is float


def test_cli_reads_params_section(tmp_path, tiny):
    section = {k: v for k, v in TINY.items()} | {"out_dir": "gen/simpedes"}
    (tmp_path / "params.yaml").write_text(json.dumps({"simpedes": section, "other": {"x": 1}}))  # JSON is YAML
    sp.main(["--params", str(tmp_path / "params.yaml")])
    assert content_hash(tmp_path / "gen/simpedes") == tiny[1]["content_hash"]
    sp.main(["--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "elsewhere")])
    assert load_meta(tmp_path / "elsewhere")["content_hash"] == tiny[1]["content_hash"]


def test_output_folder_honours_umask(tiny):
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(tiny[0].stat().st_mode) == 0o777 & ~mask


def test_visible_texels_follow_the_view_frame_and_occluder(tiny):
    """SAN's analysis scores invisible atlas parts against visible ones: a front image shows no back region, a back
    image no front one, and an occluder or the frame edge hides texels."""
    root, meta = tiny
    attrs = {i["id"]: i["attributes"] for i in meta["identities"]}
    h, w = meta["params"]["height"], meta["params"]["width"]
    masks = sp.region_masks()
    by_view = {}
    for im in meta["images"]:
        if im["occlusion_box"] is None:
            by_view.setdefault(im["view"], im)
    assert {"front", "back"} <= set(by_view)
    for view, shown, hidden in (("front", "front", "back"), ("back", "back", "front")):
        im = by_view[view]
        vis = sp.visible_texels(im, attrs[im["id"]], h, w)
        assert vis.shape == masks["torso_front"].shape and vis.dtype == bool
        for part in ("torso", "legs", "head"):
            assert vis[masks[f"{part}_{shown}"]].any(), (view, part)
            assert not vis[masks[f"{part}_{hidden}"]].any(), (view, part)
        assert not vis[~np.logical_or.reduce(list(masks.values()))].any()  # never outside the layout's regions
        covered = dict(im, occlusion_box=[0, 0, h, w])
        assert not sp.visible_texels(covered, attrs[im["id"]], h, w).any()
        y0, x0, y1, x1 = im["person_box"]
        lower_half_out = dict(im, person_box=[y0 + h // 2, x0, y1 + h // 2, x1])  # the box slides down, out of frame
        assert sp.visible_texels(lower_half_out, attrs[im["id"]], h, w).sum() < vis.sum()
    for im in meta["images"]:  # an image whose parts show no pixel shows no texel, and vice versa
        assert sp.visible_texels(im, attrs[im["id"]], h, w).any() == (sum(im["visible_pixels"].values()) > 0)
