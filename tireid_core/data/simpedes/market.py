"""The Market-1501 tree: train ids in bounding_box_train, test ids split into query and gallery, plus gallery
extras (distractors: pid 0000, unseen identities; junk: pid -1, bad detections), in Market's file naming."""
from __future__ import annotations

from pathlib import Path

from tireid_core.data.simpedes.atlas import paint_atlas
from tireid_core.data.simpedes.attributes import VIEWS
from tireid_core.data.simpedes.files import png_bytes, write_file
from tireid_core.data.simpedes.identities import sample_identity
from tireid_core.data.simpedes.params import SimPEDESParams
from tireid_core.data.simpedes.render import render
from tireid_core.data.simpedes.streams import T_EXTRA, stream

EXTRAS_SEED_OFFSET = 1_000_003  # keeps the extras' atlases apart from the split identities'


def market_name(pid, cam, frame, box):
    return f"{pid:04d}_c{cam}s1_{frame:06d}_{box:02d}.png" if pid >= 0 else f"-1_c{cam}s1_{frame:06d}_{box:02d}.png"


def choose_queries(images):
    """Indices of query images for one test id: the first image of each camera, as long as every query
    keeps a gallery image of the same id from another camera; at most half of the id's images."""
    queries, seen = [], set()
    for k, im in enumerate(images):
        if im["camera"] in seen or len(queries) >= len(images) // 2:
            continue
        trial = queries + [k]
        gallery_cams = {im2["camera"] for j, im2 in enumerate(images) if j not in trial}
        if all(gallery_cams - {images[q]["camera"]} for q in trial):
            queries, seen = trial, seen | {im["camera"]}
    return queries


def identity_entries(ident, images) -> list[tuple]:
    """Market entries (folder, pid, camera, box, png, meta entry) of one split identity's images
    (dicts with camera, k, png, meta); val ids are not in the Market tree."""
    if ident["split"] == "train":
        return [("bounding_box_train", ident["id"], im["camera"], im["k"], im["png"], im["meta"]) for im in images]
    if ident["split"] == "test":
        q = set(choose_queries(images))
        return [("query" if i in q else "bounding_box_test", ident["id"], im["camera"], im["k"], im["png"],
                 im["meta"]) for i, im in enumerate(images)]
    return []


def render_extras(p: SimPEDESParams, cams) -> tuple[list[dict], list[tuple]]:
    """Gallery extras: `distractors` unseen identities, then `junk` fragments. Returns their meta entries and
    their Market entries."""
    extras, entries = [], []
    for d in range(p.distractors + p.junk):
        rng = stream(p.seed, T_EXTRA, d)
        attrs = sample_identity(rng)
        atlas = paint_atlas(p.seed + EXTRAS_SEED_OFFSET, attrs, d)
        cam = int(rng.integers(p.cameras)) + 1
        view = VIEWS[int(rng.integers(len(VIEWS)))]
        junk = d >= p.distractors
        if junk:  # a fragment: far too large and off-centre, as a bad detector box would be
            arr, gt = render(rng, atlas, attrs, view, cams[cam - 1], p, scale=rng.uniform(1.6, 2.4),
                             shift=(rng.uniform(-0.5, 0.5), rng.uniform(-0.4, 0.4)), allow_occlusion=False)
        else:
            arr, gt = render(rng, atlas, attrs, view, cams[cam - 1], p)
        extras.append({"kind": "junk" if junk else "distractor", "attributes": attrs, "camera": cam, **gt})
        entries.append(("bounding_box_test", -1 if junk else 0, cam, d % 100, png_bytes(arr), extras[-1]))
    return extras, entries


def write_market(root: Path, entries) -> dict:
    """Write the entries under market/ (frame numbers in entry order), set each meta entry's `market_path`,
    and return the file counts."""
    counts = {"bounding_box_train": 0, "query": 0, "bounding_box_test": 0, "distractors": 0, "junk": 0}
    names = set()
    for n, (folder, pid, cam, box, png, meta_entry) in enumerate(entries):
        name = market_name(pid, cam, 25 * (n + 1), box)
        assert name not in names, name
        names.add(name)
        write_file(root, f"market/{folder}/{name}", png)
        counts[folder] += 1
        counts["distractors"] += pid == 0
        counts["junk"] += pid == -1
        meta_entry["market_path"] = f"market/{folder}/{name}"
    return counts
