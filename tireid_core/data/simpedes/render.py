"""Rendering one image of an identity from its atlas: per-camera colour shift and scene, background clutter,
box jitter, occlusion, illumination, blur and sensor noise, plus the image's ground truth (view, boxes,
per-part visibility)."""
from __future__ import annotations

import numpy as np

from tireid_core.data.simpedes.atlas import ATLAS_H, ATLAS_W, Atlas
from tireid_core.data.simpedes.attributes import LABELS
from tireid_core.data.simpedes.body import body_map, person_box
from tireid_core.data.simpedes.params import SimPEDESParams
from tireid_core.data.simpedes.streams import T_CAM, stream


def camera_table(p: SimPEDESParams):
    """Per-camera colour gain/bias, scene colours and blur: the same shirt looks different per camera."""
    cams = []
    for c in range(p.cameras):
        rng = stream(p.seed, T_CAM, c)
        cams.append({
            "camera": c + 1,
            "gain": [round(float(x), 4) for x in 1 + 0.16 * rng.uniform(-1, 1, 3)],
            "bias": [round(float(x), 2) for x in rng.uniform(-14, 14, 3)],
            "wall": [int(x) for x in rng.integers(80, 190) + rng.integers(-25, 26, 3)],  # greyish scenes
            "floor": [int(x) for x in rng.integers(60, 160) + rng.integers(-15, 16, 3)],
            "blur": bool(rng.random() < 0.5),
            "noise": round(float(rng.uniform(2.0, 6.0)), 3),
        })
    return cams


def _background(rng, cam, h, w):
    img = np.empty((h, w, 3), np.float32)
    img[:] = np.asarray(cam["wall"], np.float32) + rng.normal(0, 12, 3)
    fy = int(h * rng.uniform(0.6, 0.8))
    img[fy:] = np.asarray(cam["floor"], np.float32) + rng.normal(0, 10, 3)
    for _ in range(int(rng.integers(2, 6))):  # clutter: signs, poles, other objects
        y0, x0 = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 2))
        y1 = min(h, y0 + int(rng.integers(4, h // 2)))
        x1 = min(w, x0 + int(rng.integers(2, w // 2)))
        img[y0:y1, x0:x1] = rng.uniform(40, 200) + rng.uniform(-40, 40, 3)
    return img


def _occluder(rng, h, w):
    """A random occluding rectangle (bench/car below, passer-by or pole at a side, or anywhere)."""
    kind = int(rng.integers(3))
    if kind == 0:
        y0 = int(h * rng.uniform(0.55, 0.8))
        x0 = int(w * rng.uniform(0, 0.3))
        return y0, x0, h, min(w, x0 + int(w * rng.uniform(0.6, 1.0)))
    if kind == 1:
        bw = int(w * rng.uniform(0.3, 0.55))
        x0 = 0 if rng.random() < 0.5 else w - bw
        y0 = int(h * rng.uniform(0, 0.4))
        return y0, x0, min(h, y0 + int(h * rng.uniform(0.4, 0.8))), x0 + bw
    bh, bw = int(h * rng.uniform(0.15, 0.35)), int(w * rng.uniform(0.4, 0.9))
    y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    return y0, x0, y0 + bh, x0 + bw


def render(rng, atlas: Atlas, attrs, view, cam, p: SimPEDESParams, scale=1.0, shift=(0.0, 0.0),
           allow_occlusion=True):
    """Render one image of an identity from its atlas. Returns (uint8 HxWx3, ground-truth dict)."""
    h, w = p.height, p.width
    img = _background(rng, cam, h, w)
    s = scale * (1 + p.jitter * rng.uniform(-1, 1))
    dy = int(round((shift[0] + p.jitter * 0.5 * rng.uniform(-1, 1)) * h))
    dx = int(round((shift[1] + p.jitter * 0.5 * rng.uniform(-1, 1)) * w))
    y0, x0, bh, bw = person_box(h, w, s, dy, dx)
    ay, ax, mask = body_map(view, attrs["build"], attrs["bag_type"], attrs["lower_type"] == "skirt", bh, bw)
    facing = "left"
    if view == "side" and rng.random() < 0.5:
        ay, ax, mask, facing = ay[:, ::-1], ax[:, ::-1], mask[:, ::-1], "right"
    person = atlas.rgb[ay, ax]
    plab = np.where(mask, atlas.part[ay, ax], 0)
    full_counts = np.bincount(plab[mask], minlength=len(LABELS))

    # paste with clipping: jitter may push the box partly out of frame, like a loose detection
    sy0, sx0, sy1, sx1 = max(0, y0), max(0, x0), min(h, y0 + bh), min(w, x0 + bw)
    labels = np.zeros((h, w), np.uint8)
    if sy1 > sy0 and sx1 > sx0:
        m = mask[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
        img[sy0:sy1, sx0:sx1][m] = person[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0][m]
        labels[sy0:sy1, sx0:sx1] = plab[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
    img *= rng.uniform(0.85, 1.15)  # illumination, before the occluder so both see the same light

    occ = None
    if allow_occlusion and rng.random() < p.occlusion:
        occ = _occluder(rng, h, w)
        oy0, ox0, oy1, ox1 = occ
        img[oy0:oy1, ox0:ox1] = rng.uniform(20, 230, 3) + rng.normal(0, 8, (oy1 - oy0, 1, 1))
        labels[oy0:oy1, ox0:ox1] = 0
    vis_counts = np.bincount(labels.ravel(), minlength=len(LABELS))

    img = img * np.asarray(cam["gain"], np.float32) + np.asarray(cam["bias"], np.float32)
    if cam["blur"]:
        img[1:-1] = 0.25 * img[:-2] + 0.5 * img[1:-1] + 0.25 * img[2:]
        img[:, 1:-1] = 0.25 * img[:, :-2] + 0.5 * img[:, 1:-1] + 0.25 * img[:, 2:]
    img += rng.normal(0, cam["noise"], img.shape)
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    visibility = {part: round(float(vis_counts[i]) / max(1, int(full_counts[i])), 4)
                  for i, part in enumerate(LABELS) if i > 0 and full_counts[i] > 0}
    pixels = {part: int(vis_counts[i]) for i, part in enumerate(LABELS) if i > 0 and full_counts[i] > 0}
    gt = {"view": view, "facing": facing if view == "side" else None,
          "person_box": [int(y0), int(x0), int(y0 + bh), int(x0 + bw)],
          "occlusion_box": None if occ is None else [int(v) for v in occ],
          "visibility": visibility, "visible_pixels": pixels}
    return out, gt


def visible_texels(image: dict, attrs: dict, height: int, width: int) -> np.ndarray:
    """The atlas texels (ATLAS_H x ATLAS_W bool) one rendered image shows: sampled by its body map, inside the frame
    and outside its occluder. `image` is the image's meta.json entry (view, facing, person_box, occlusion_box),
    `attrs` its identity's attributes, height x width the rendered image size. Everything else of the atlas (the back
    of a person seen from the front, say) is invisible in that image: what a texture regressor has to hallucinate."""
    y0, x0, y1, x1 = image["person_box"]
    ay, ax, mask = body_map(image["view"], attrs["build"], attrs["bag_type"], attrs["lower_type"] == "skirt",
                            y1 - y0, x1 - x0)
    if image.get("facing") == "right":  # render() mirrors the side view's map for a person facing right
        ay, ax, mask = ay[:, ::-1], ax[:, ::-1], mask[:, ::-1]
    rows, cols = np.arange(y0, y1)[:, None], np.arange(x0, x1)[None, :]
    shown = mask & (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    if image.get("occlusion_box") is not None:
        oy0, ox0, oy1, ox1 = image["occlusion_box"]
        shown &= ~((rows >= oy0) & (rows < oy1) & (cols >= ox0) & (cols < ox1))
    out = np.zeros((ATLAS_H, ATLAS_W), bool)
    out[ay[shown], ax[shown]] = True
    return out
