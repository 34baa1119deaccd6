"""Texture atlas: one canonical UV-like image per identity, from which every rendered image samples.

The atlas has a fixed layout of regions (head front/back, torso front/back, sleeve, legs front/back, shoes, bag)
and a per-texel part label, which is how rendered pixels get their ground-truth part. Each part is painted from
its own random stream, so a near twin's unchanged parts match its source texel for texel.
"""
from __future__ import annotations

import numpy as np

from tireid_core.data.simpedes.attributes import COLOURS, HAIR_COLOURS, LABELS, PARTS, SKIN
from tireid_core.data.simpedes.streams import T_TEX, stream

ATLAS_H, ATLAS_W = 72, 64
ATLAS_REGIONS = {  # name: (y0, y1, x0, x1) in atlas pixels
    "head_front": (0, 16, 0, 16), "head_back": (0, 16, 16, 32), "bag": (0, 16, 32, 48),
    "shoes": (0, 8, 48, 64), "torso_front": (16, 40, 0, 16), "torso_back": (16, 40, 16, 32),
    "sleeve": (16, 40, 32, 40), "legs_front": (40, 68, 0, 16), "legs_back": (40, 68, 16, 32),
}
REGION_PART = {"head_front": "head", "head_back": "head", "bag": "bag", "shoes": "shoes",
               "torso_front": "upper", "torso_back": "upper", "sleeve": "upper",
               "legs_front": "lower", "legs_back": "lower"}


def region_masks() -> dict[str, np.ndarray]:
    """{region: ATLAS_H x ATLAS_W bool mask} of the layout's regions (the rest of the atlas is never rendered)."""
    out = {}
    for name, (y0, y1, x0, x1) in ATLAS_REGIONS.items():
        mask = np.zeros((ATLAS_H, ATLAS_W), bool)
        mask[y0:y1, x0:x1] = True
        out[name] = mask
    return out


class Atlas:
    """RGB atlas plus a per-texel part label (straps belong to the bag, long hair to the head).

    A blank atlas carries each region's own part (REGION_PART); painting relabels the texels it covers with
    another part (a coat over the top of the legs, straps over the torso)."""

    def __init__(self):
        self.rgb = np.full((ATLAS_H, ATLAS_W, 3), 127.0, np.float32)
        self.part = np.zeros((ATLAS_H, ATLAS_W), np.uint8)
        for name, (y0, y1, x0, x1) in ATLAS_REGIONS.items():
            self.part[y0:y1, x0:x1] = LABELS.index(REGION_PART[name])

    def view(self, region):
        y0, y1, x0, x1 = ATLAS_REGIONS[region]
        return self.rgb[y0:y1, x0:x1], self.part[y0:y1, x0:x1]

    def fill(self, region, rgb, rng, rows=slice(None), cols=slice(None), part=None, grain=5.0):
        """Paint a (sub-)region with a fabric colour: base colour, texel grain and soft vertical shading."""
        img, lab = self.view(region)
        sub = img[rows, cols]
        h, w = sub.shape[:2]
        shade = np.linspace(1.04, 0.94, h, dtype=np.float32)[:, None, None]
        sub[...] = np.asarray(rgb, np.float32) * shade + rng.normal(0, grain, (h, w, 1)).astype(np.float32)
        if part is not None:
            lab[rows, cols] = LABELS.index(part)

    def image(self) -> np.ndarray:
        """The atlas as a uint8 RGB image (what is written to textures/)."""
        return np.clip(np.rint(self.rgb), 0, 255).astype(np.uint8)


def paint_atlas(seed, attrs, texture_key) -> Atlas:
    """Draw the identity's atlas; each part has its own stream so a twin's unchanged parts match its source."""
    at = Atlas()
    skin = SKIN[attrs["skin"]]
    r = {part: stream(seed, T_TEX, texture_key, i) for i, part in enumerate(PARTS)}

    # lower body (legs region, rows 0..27); shorts and skirts show skin below
    lc = COLOURS[attrs["lower_colour"]]
    cut = {"shorts": 12, "skirt": 15}.get(attrs["lower_type"], 28)
    for region in ("legs_front", "legs_back"):
        at.fill(region, lc, r["lower"], rows=slice(0, cut))
        if cut < 28:
            at.fill(region, skin, r["lower"], rows=slice(cut, 28), grain=2.0)
        if attrs["lower_type"] == "jeans":  # seams and denim streaks
            img, _ = at.view(region)
            img[:cut, [3, 12]] *= 0.8
            img[:cut] += r["lower"].normal(0, 6, (1, 16, 1)).astype(np.float32)

    # shoes
    at.fill("shoes", COLOURS[attrs["shoes_colour"]], r["shoes"])
    img, _ = at.view("shoes")
    img[6:] *= 0.7  # soles

    # upper body: torso front/back and sleeve (arm); t-shirts show the forearm, hands are skin
    uc, u2 = COLOURS[attrs["upper_colour"]], COLOURS.get(attrs["upper_colour2"])
    ru = r["upper"]
    for region in ("torso_front", "torso_back", "sleeve"):
        at.fill(region, uc, ru)
        img, _ = at.view(region)
        if attrs["upper_pattern"] == "striped":
            img[1::5] = np.asarray(u2, np.float32)
            img[2::5] = np.asarray(u2, np.float32)
        elif attrs["upper_pattern"] == "checked":
            img[1::6] = np.asarray(u2, np.float32)
            img[:, 1::6] = np.asarray(u2, np.float32)
        if attrs["upper_type"] == "sweater":
            img[::2] *= 0.92  # knit rows
    img, _ = at.view("sleeve")
    sleeve_end = 9 if attrs["upper_type"] == "t-shirt" else 21
    img[sleeve_end:] = np.asarray(skin, np.float32)
    front, _ = at.view("torso_front")
    if attrs["upper_pattern"] == "logo":  # front only: visible from the front, not from the back
        front[6:12, 5:11] = np.asarray(u2, np.float32)
    if attrs["upper_type"] == "t-shirt":
        front[0:2, 6:10] = np.asarray(skin, np.float32)  # neckline
    if attrs["upper_type"] == "jacket":  # open front with zipper
        front[:, 7:9] = front[:, 7:9] * 0.55 + 60
    if attrs["upper_type"] == "coat":  # long: covers the top of the legs, buttons down the front
        front[3::5, 7:9] = 30
        for region in ("legs_front", "legs_back"):
            at.fill(region, uc, ru, rows=slice(0, 10), part="upper")
    if attrs["upper_type"] == "shirt":
        front[0:3, 6:10] = np.asarray(uc, np.float32) * 0.8  # collar

    # carried object: the bag texture, plus straps painted over the torso
    if attrs["bag_type"] != "none":
        bc = COLOURS[attrs["bag_colour"]]
        rb = r["bag"]
        at.fill("bag", bc, rb)
        img, _ = at.view("bag")
        img[0:2] *= 0.75  # top edge / flap
        if attrs["bag_type"] == "backpack":
            img[7, 2:14] *= 0.6  # pocket seam
            for region in ("torso_front", "torso_back"):
                at.fill(region, np.asarray(bc) * 0.9, rb, rows=slice(0, 18), cols=slice(3, 5), part="bag")
                at.fill(region, np.asarray(bc) * 0.9, rb, rows=slice(0, 18), cols=slice(11, 13), part="bag")
        elif attrs["bag_type"] == "shoulder bag":  # a diagonal strap across the chest and back
            for region in ("torso_front", "torso_back"):
                img, lab = at.view(region)
                for y in range(0, 18):
                    x = min(15, max(0, 1 + (y * 14) // 18))
                    img[y, x] = np.asarray(bc, np.float32) * 0.9
                    lab[y, x] = LABELS.index("bag")
        else:
            img[0:4, 4:12] = np.asarray(bc, np.float32) * 0.6  # handle

    # head: skin face, hair, hat; long hair also falls over the back of the torso
    rh = r["head"]
    hair = HAIR_COLOURS[attrs["hair_colour"]]
    at.fill("head_front", skin, rh, grain=2.0)
    at.fill("head_back", skin if attrs["hair_style"] == "bald" else hair, rh)
    hf, _ = at.view("head_front")
    hf[7, 4:6] = 35
    hf[7, 10:12] = 35  # eyes
    if attrs["hair_style"] != "bald":
        at.fill("head_front", hair, rh, rows=slice(0, 4))
        if attrs["hair_style"] == "long":
            at.fill("head_front", hair, rh, rows=slice(0, 16), cols=slice(0, 2))
            at.fill("head_front", hair, rh, rows=slice(0, 16), cols=slice(14, 16))
            at.fill("torso_back", hair, rh, rows=slice(0, 7), cols=slice(2, 14), part="head")
        elif attrs["hair_style"] == "ponytail":
            at.fill("torso_back", hair, rh, rows=slice(0, 6), cols=slice(6, 10), part="head")
        else:
            hb, _ = at.view("head_back")
            hb[13:] = np.asarray(skin, np.float32)  # neck below short hair
    if attrs["hat"] != "none":
        hc = COLOURS[attrs["hat_colour"]]
        rows = {"cap": 4, "beanie": 6, "sunhat": 5}[attrs["hat"]]
        at.fill("head_front", hc, rh, rows=slice(0, rows))
        at.fill("head_back", hc, rh, rows=slice(0, rows))
        hf, _ = at.view("head_front")
        if attrs["hat"] == "cap":
            hf[4, 2:14] = np.asarray(hc, np.float32) * 0.7  # brim
        if attrs["hat"] == "sunhat":
            hf[5, :] = np.asarray(hc, np.float32) * 0.8
    return at

