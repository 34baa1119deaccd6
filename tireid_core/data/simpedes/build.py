"""Writing the whole dataset: CUHK-PEDES form (`reid_raw.json` + `imgs/`), texture atlases, the Market tree, the
RDE noise index and `meta.json` (the ground truth, with the content hash), atomically. Also reads meta back."""
from __future__ import annotations

import io
import json
import math
import os
import secrets
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tireid_core.data.simpedes import market
from tireid_core.data.simpedes.atlas import ATLAS_H, ATLAS_REGIONS, ATLAS_W, REGION_PART, paint_atlas
from tireid_core.data.simpedes.attributes import (ATTRIBUTE_NAMES, ATTRIBUTE_TABLES, COLOURS, LABELS,
                                                  PART_ATTRIBUTES, PARTS, VIEWS)
from tireid_core.data.simpedes.captions import caption, make_styles
from tireid_core.data.simpedes.files import content_hash, json_bytes, png_bytes, write_file
from tireid_core.data.simpedes.identities import attribute_frequencies, attribute_vector, build_identities
from tireid_core.data.simpedes.params import SimPEDESParams
from tireid_core.data.simpedes.render import camera_table, render
from tireid_core.data.simpedes.streams import T_CAP, T_IMG, T_NOISE, T_PLAN, stream

GENERATOR_VERSION = "1.0.0"
VIEW_PROBS = [0.4, 0.35, 0.25]  # front, back, side


def noise_index(n_pairs: int, rate: float, seed: int) -> np.ndarray:
    """RDE-form noisy correspondence: floor(rate*N) pairs drawn, their captions permuted among themselves.
    Entry i = index of the caption attached to pair i (identity when rate is 0)."""
    rng = stream(seed, T_NOISE)
    idx = np.arange(n_pairs, dtype=np.int64)
    m = int(math.floor(rate * n_pairs))
    if m > 0:
        drawn = np.sort(rng.choice(n_pairs, size=m, replace=False)).astype(np.int64)
        idx[drawn] = drawn[rng.permutation(m)]
    return idx


def _write_identity(p: SimPEDESParams, root: Path, g: int, ident: dict, cams, styles):
    """Write one split identity's atlas and images; returns its reid_raw records and its images
    (dicts with camera, k, png and the image's meta entry)."""
    attrs = ident["attributes"]
    atlas = paint_atlas(p.seed, attrs, ident["texture_key"])
    ident["texture"] = f"textures/{ident['id']:04d}.png"
    write_file(root, ident["texture"], png_bytes(atlas.image()))
    plan = stream(p.seed, T_PLAN, g)
    cam_seq = np.concatenate([plan.permutation(p.cameras) for _ in range(-(-p.images_per_id // p.cameras))])
    views = plan.choice(len(VIEWS), size=p.images_per_id, p=VIEW_PROBS)
    records, images = [], []
    for k in range(p.images_per_id):
        cam = int(cam_seq[k]) + 1
        view = VIEWS[int(views[k])]
        arr, gt = render(stream(p.seed, T_IMG, g, k), atlas, attrs, view, cams[cam - 1], p)
        png = png_bytes(arr)
        file_path = f"cam{cam}/{ident['id']:04d}_c{cam}_v{VIEWS.index(view)}_{k}.png"
        write_file(root, "imgs/" + file_path, png)
        captions, tokens, cap_meta = [], [], []
        # distinct annotators per image where there are enough styles, like CUHK-PEDES' two annotators
        order = stream(p.seed, T_CAP, g, k).permutation(p.annotator_styles)
        for j in range(p.captions_per_image):
            style = styles[int(order[j % p.annotator_styles])]
            text, toks, cm = caption(style, stream(p.seed, T_CAP, g, k, j + 1), attrs, gt, p.caption_error_rate)
            captions.append(text)
            tokens.append(toks)
            cap_meta.append(cm)
        records.append({"split": ident["split"], "captions": captions, "file_path": file_path,
                        "processed_tokens": tokens, "id": ident["id"]})
        meta = {"file_path": file_path, "id": ident["id"], "split": ident["split"], "camera": cam,
                "image_in_id": k, **gt, "captions": cap_meta, "market_path": None}
        images.append({"camera": cam, "png": png, "meta": meta, "k": k})
    return records, images


def _write_noise(p: SimPEDESParams, root: Path, n_pairs: int) -> dict | None:
    """The noise index over the train pairs (only when noise_rate > 0); returns its meta entry."""
    if p.noise_rate <= 0:
        return None
    idx = noise_index(n_pairs, p.noise_rate, p.seed)
    buf = io.BytesIO()
    np.save(buf, idx, allow_pickle=False)
    write_file(root, "noise_index.npy", buf.getvalue())
    return {"file": "noise_index.npy", "rate": p.noise_rate, "n_pairs": n_pairs,
            "drawn": int(math.floor(p.noise_rate * n_pairs)), "noisy": int((idx != np.arange(n_pairs)).sum())}


def build(p: SimPEDESParams, root: Path) -> dict:
    """Write the whole dataset under `root` (a fresh folder) and return the meta dict."""
    identities = build_identities(p)
    cams = camera_table(p)
    styles = make_styles(p)
    records, img_meta, market_entries = [], [], []
    for g, ident in enumerate(identities):
        recs, images = _write_identity(p, root, g, ident, cams, styles)
        records += recs
        img_meta += [im["meta"] for im in images]
        market_entries += market.identity_entries(ident, images)
    extras, extra_entries = market.render_extras(p, cams)
    counts = market.write_market(root, market_entries + extra_entries)  # also sets the images' market_path

    write_file(root, "reid_raw.json", json_bytes(records))
    n_pairs = sum(len(r["captions"]) for r in records if r["split"] == "train")
    noise = _write_noise(p, root, n_pairs)

    for ident in identities:
        ident["attribute_vector"] = attribute_vector(ident["attributes"])
        del ident["texture_key"]
    meta = {
        "generator": "simpedes", "version": GENERATOR_VERSION, "params": asdict(p), "seed": p.seed,
        "parts": list(PARTS), "labels": list(LABELS), "views": list(VIEWS),
        "atlas": {"size": [ATLAS_H, ATLAS_W], "regions": {k: list(v) for k, v in ATLAS_REGIONS.items()},
                  "region_part": REGION_PART},
        "attribute_names": list(ATTRIBUTE_NAMES), "part_attributes": {k: list(v) for k, v in PART_ATTRIBUTES.items()},
        "attribute_tables": ATTRIBUTE_TABLES, "attribute_frequencies": attribute_frequencies(identities),
        "colours": {k: list(v) for k, v in COLOURS.items()}, "cameras": cams, "styles": styles,
        "identities": identities, "images": img_meta, "extras": extras, "market": counts,
        "train_pairs": n_pairs, "noise": noise,
    }
    meta["content_hash"] = content_hash(root)
    write_file(root, "meta.json", json_bytes(meta))
    return meta


def _sibling_dir(out_dir: Path, kind: str) -> Path:
    """A fresh hidden folder next to out_dir. os.mkdir honours the umask (mkdtemp would make it 0700,
    and the dataset folder keeps its mode after the rename)."""
    while True:
        path = out_dir.parent / f".{out_dir.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def generate(params: SimPEDESParams, out_dir: Path) -> dict:
    """Generate the dataset into `out_dir` atomically: build in a temporary sibling folder, then swap it in.
    A crash leaves any previous `out_dir` untouched and no half-written dataset behind."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling_dir(out_dir, "tmp")
    try:
        meta = build(params, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out_dir.exists():
        old = _sibling_dir(out_dir, "old")
        os.replace(out_dir, old / "data")
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return meta


def load_meta(root) -> dict:
    """The ground truth written next to the dataset (meta.json)."""
    with open(Path(root) / "meta.json", encoding="utf-8") as f:
        return json.load(f)


def token_part_labels(meta: dict, image_index: int, caption_index: int) -> list[str]:
    """Part label of each processed token of caption `caption_index` of image `image_index` (reid_raw order)."""
    return list(meta["images"][image_index]["captions"][caption_index]["part_labels"])
