"""SimPEDES: a deterministic, procedurally generated text-image person dataset (spec: simpedes.md).

The real benchmarks are licence-restricted downloads, so this module builds a small stand-in that a CPU
can train on in minutes and that exercises what the papers rely on: part-structured appearance, several
cameras and views, several annotator styles, skewed attribute frequencies, near-twin identities, and
ground truth real datasets lack (texture atlases, per-token part labels, occlusion boxes).

Everything is written in the real on-disk formats (CUHK-PEDES `reid_raw.json` + `imgs/`, a Market-1501
tree, RDE noise-index file), so real-data loaders read it unchanged.

Determinism: every random draw comes from `np.random.default_rng([seed, TAG, ...keys])`, a sub-stream per
identity / image / caption, so one identity's draws never depend on how many draws another one made.
Only numpy, Pillow and the standard library are used.

Reading order: parameters -> attribute tables -> identities -> texture atlas -> body maps and rendering
-> captions -> Market tree -> noise index -> `generate` (atomic write) -> CLI.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import secrets
import shutil
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from tireid_core.data.tokenizers import word_tokens

GENERATOR_VERSION = "1.0.0"

# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimPEDESParams:
    """All knobs of the generator; defaults are the CPU demo. Validated on construction."""

    seed: int = 0
    ids_train: int = 400
    ids_val: int = 100
    ids_test: int = 100
    images_per_id: int = 4
    captions_per_image: int = 2
    height: int = 96
    width: int = 32
    cameras: int = 4
    annotator_styles: int = 4
    occlusion: float = 0.3
    jitter: float = 0.1
    near_twin_rate: float = 0.2
    caption_error_rate: float = 0.05
    noise_rate: float = 0.0
    distractors: int = 20
    junk: int = 10

    def __post_init__(self):
        def bad(key, what):
            raise ValueError(f"simpedes.{key} must be {what}, got {getattr(self, key)!r}")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        lower_bounds = {  # key: (minimum, description)
            "seed": (0, "a non-negative integer"),
            "ids_train": (1, "a positive integer"),
            "ids_val": (1, "a positive integer"),
            "ids_test": (1, "a positive integer"),
            "images_per_id": (2, "an integer >= 2 (query and gallery need two images)"),
            "captions_per_image": (1, "a positive integer"),
            "height": (32, "an integer >= 32"),
            "width": (12, "an integer >= 12"),
            "cameras": (2, "an integer in 2..6 (Market-1501 cameras)"),
            "annotator_styles": (1, "a positive integer"),
            "distractors": (0, "a non-negative integer"),
            "junk": (0, "a non-negative integer"),
        }
        for key, (lo, what) in lower_bounds.items():
            v = getattr(self, key)
            if not is_int(v) or v < lo:
                bad(key, what)
            object.__setattr__(self, key, int(v))  # plain ints (numpy ints would not JSON-serialise)
        if self.cameras > 6:
            bad("cameras", "an integer in 2..6 (Market-1501 cameras)")
        if self.images_per_id > 99:
            bad("images_per_id", "at most 99 (two-digit Market box index)")
        for key in ("occlusion", "jitter", "near_twin_rate", "caption_error_rate", "noise_rate"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or not (0.0 <= float(v) <= 1.0):
                bad(key, "a number in [0, 1]")
            object.__setattr__(self, key, float(v))
        if self.ids_train + self.ids_val + self.ids_test > 9999:
            raise ValueError("simpedes.ids_train + ids_val + ids_test must be <= 9999 (4-digit Market pids)")

    @classmethod
    def from_dict(cls, d: dict) -> "SimPEDESParams":
        """Build from the `simpedes:` params section; unknown keys are errors (typos must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"simpedes: unknown key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**d)


# --------------------------------------------------------------------------------------------------
# Random streams
# --------------------------------------------------------------------------------------------------

# Stream tags: each purpose gets its own family of sub-streams.
_T_ID, _T_TEX, _T_PLAN, _T_IMG, _T_CAP, _T_STYLE, _T_CAM, _T_NOISE, _T_EXTRA = range(1, 10)


def _rng(seed: int, tag: int, *keys: int) -> np.random.Generator:
    """An independent generator for (seed, purpose, keys): order-independent by construction."""
    return np.random.default_rng([int(seed), tag, *map(int, keys)])


def _pick(rng, values, probs=None):
    if probs is not None:
        probs = np.asarray(probs, float) / np.sum(probs)  # tables hold rounded probabilities
    return values[int(rng.choice(len(values), p=probs))]


# --------------------------------------------------------------------------------------------------
# Attribute tables
# --------------------------------------------------------------------------------------------------

PARTS = ("head", "upper", "lower", "shoes", "bag")
LABELS = ("none",) + PARTS  # per-pixel / per-token part labels; index 0 = none
VIEWS = ("front", "back", "side")

COLOURS = {  # name: RGB of the garment colour
    "black": (28, 28, 32), "white": (228, 228, 222), "grey": (128, 128, 132), "blue": (42, 72, 170),
    "red": (190, 36, 38), "green": (46, 128, 62), "yellow": (224, 192, 52), "brown": (112, 74, 44),
    "pink": (226, 136, 172), "purple": (112, 60, 148), "orange": (230, 126, 36),
}
HAIR_COLOURS = {"black": (22, 20, 20), "brown": (92, 58, 34), "blond": (200, 168, 102),
                "grey": (150, 150, 150), "red": (168, 72, 32)}
SKIN = {"light": (226, 188, 160), "medium": (184, 136, 100), "dark": (112, 76, 52)}


def _zipf(n, s=1.1):
    """Zipf-like probabilities: the first value common, the last rare (black trousers vs a red hat)."""
    p = 1.0 / np.arange(1, n + 1) ** s
    return [round(float(x), 6) for x in p / p.sum()]


def _colour_table(order):
    return {"values": list(order), "probs": _zipf(len(order))}


# For each attribute: values and probabilities. Conditional tables are keyed by gender.
ATTRIBUTE_TABLES = {
    "gender": {"values": ["man", "woman"], "probs": [0.5, 0.5]},
    "build": {"values": ["slim", "average", "heavy"], "probs": [0.3, 0.5, 0.2]},
    "skin": {"values": ["light", "medium", "dark"], "probs": [0.45, 0.35, 0.2]},
    "hair_style": {"values": ["short", "long", "ponytail", "bald"],
                   "probs": {"man": [0.78, 0.06, 0.04, 0.12], "woman": [0.25, 0.5, 0.25, 0.0]}},
    "hair_colour": _colour_table(["black", "brown", "blond", "grey", "red"]),
    "hat": {"values": ["none", "cap", "beanie", "sunhat"], "probs": [0.72, 0.14, 0.08, 0.06]},
    "hat_colour": _colour_table(["black", "grey", "white", "blue", "green", "brown", "yellow", "pink", "red"]),
    "upper_type": {"values": ["t-shirt", "shirt", "jacket", "sweater", "coat"],
                   "probs": [0.35, 0.2, 0.2, 0.15, 0.1]},
    "upper_colour": _colour_table(["black", "white", "grey", "blue", "red", "green", "pink", "yellow",
                                   "purple", "brown", "orange"]),
    "upper_pattern": {"values": ["plain", "striped", "checked", "logo"], "probs": [0.62, 0.16, 0.1, 0.12]},
    "upper_colour2": _colour_table(["white", "black", "red", "blue", "yellow", "grey", "green", "orange"]),
    "lower_type": {"values": ["trousers", "jeans", "shorts", "skirt"],
                   "probs": {"man": [0.5, 0.35, 0.15, 0.0], "woman": [0.35, 0.3, 0.12, 0.23]}},
    "lower_colour": _colour_table(["black", "blue", "grey", "brown", "white", "green", "red", "pink",
                                   "purple", "yellow"]),
    "shoes_colour": _colour_table(["black", "white", "grey", "brown", "blue", "red"]),
    "bag_type": {"values": ["none", "backpack", "shoulder bag", "handbag"], "probs": [0.45, 0.25, 0.18, 0.12]},
    "bag_colour": _colour_table(["black", "brown", "grey", "blue", "red", "pink", "white", "green"]),
}
# "none" is a legal value for the optional colours (no hat, plain shirt, no bag).
for _k in ("hat_colour", "upper_colour2", "bag_colour"):
    ATTRIBUTE_TABLES[_k]["values_with_none"] = ["none"] + ATTRIBUTE_TABLES[_k]["values"]

PART_ATTRIBUTES = {
    "head": ("hair_style", "hair_colour", "hat", "hat_colour"),
    "upper": ("upper_type", "upper_colour", "upper_pattern", "upper_colour2"),
    "lower": ("lower_type", "lower_colour"),
    "shoes": ("shoes_colour",),
    "bag": ("bag_type", "bag_colour"),
}
ATTRIBUTE_NAMES = ("gender", "build", "skin") + tuple(a for p in PARTS for a in PART_ATTRIBUTES[p])


def _draw(rng, name, gender=None):
    t = ATTRIBUTE_TABLES[name]
    probs = t["probs"][gender] if isinstance(t["probs"], dict) else t["probs"]
    return _pick(rng, t["values"], probs)


def _sample_part(rng, part, gender):
    """Draw one part's attributes; optional colours are "none" when the item is absent."""
    a = {}
    if part == "head":
        a["hair_style"] = _draw(rng, "hair_style", gender)
        a["hair_colour"] = _draw(rng, "hair_colour")
        a["hat"] = _draw(rng, "hat")
        a["hat_colour"] = "none" if a["hat"] == "none" else _draw(rng, "hat_colour")
    elif part == "upper":
        a["upper_type"] = _draw(rng, "upper_type")
        a["upper_colour"] = _draw(rng, "upper_colour")
        a["upper_pattern"] = _draw(rng, "upper_pattern")
        a["upper_colour2"] = "none"
        if a["upper_pattern"] != "plain":
            while a["upper_colour2"] in ("none", a["upper_colour"]):
                a["upper_colour2"] = _draw(rng, "upper_colour2")
    elif part == "lower":
        a["lower_type"] = _draw(rng, "lower_type", gender)
        a["lower_colour"] = _draw(rng, "lower_colour")
    elif part == "shoes":
        a["shoes_colour"] = _draw(rng, "shoes_colour")
    else:
        a["bag_type"] = _draw(rng, "bag_type")
        a["bag_colour"] = "none" if a["bag_type"] == "none" else _draw(rng, "bag_colour")
    return a


def _sample_identity(rng):
    gender = _draw(rng, "gender")
    attrs = {"gender": gender, "build": _draw(rng, "build"), "skin": _draw(rng, "skin")}
    for part in PARTS:
        attrs.update(_sample_part(rng, part, gender))
    return attrs


def _part_values(attrs, part):
    return tuple(attrs[k] for k in PART_ATTRIBUTES[part])


def _make_twin(rng, source):
    """Copy `source` and redraw 1-2 parts until they differ: a near twin (CMR's fine-grained confusions)."""
    attrs = dict(source)
    changed = sorted(rng.choice(len(PARTS), size=int(rng.integers(1, 3)), replace=False).tolist())
    for i in changed:
        part = PARTS[i]
        for _ in range(100):
            new = _sample_part(rng, part, attrs["gender"])
            if tuple(new[k] for k in PART_ATTRIBUTES[part]) != _part_values(source, part):
                break
        attrs.update(new)
    return attrs, [PARTS[i] for i in changed]


def attribute_vector(attrs: dict) -> list[int]:
    """Attributes as indices into the tables (order: ATTRIBUTE_NAMES); optional colours count 'none' as 0."""
    out = []
    for name in ATTRIBUTE_NAMES:
        t = ATTRIBUTE_TABLES[name]
        out.append(t.get("values_with_none", t["values"]).index(attrs[name]))
    return out


def _build_identities(p: SimPEDESParams):
    """All split identities (train, val, test order), with near twins drawn from earlier ids of the same split."""
    counts = {"train": p.ids_train, "val": p.ids_val, "test": p.ids_test}
    out, g = [], 0
    for split in ("train", "val", "test"):
        originals = []  # ids of this split that are not twins (a twin of a twin would drift)
        for _ in range(counts[split]):
            rng = _rng(p.seed, _T_ID, g)
            pid = g + 1
            ident = {"id": pid, "split": split, "twin_of": None, "changed_parts": [], "texture_key": g}
            if originals and rng.random() < p.near_twin_rate:
                src = out[originals[int(rng.integers(len(originals)))] - 1]
                ident["attributes"], ident["changed_parts"] = _make_twin(rng, src["attributes"])
                ident["twin_of"] = src["id"]
                ident["texture_key"] = src["texture_key"]  # unchanged parts keep the source's fabric detail
            else:
                ident["attributes"] = _sample_identity(rng)
                originals.append(pid)
            out.append(ident)
            g += 1
    return out


def _attribute_frequencies(identities):
    """Realised frequency of every attribute value over the split identities (commonality reference)."""
    freq = {}
    n = len(identities)
    for name in ATTRIBUTE_NAMES:
        counts = {}
        for ident in identities:
            v = ident["attributes"][name]
            counts[v] = counts.get(v, 0) + 1
        freq[name] = {v: round(c / n, 6) for v, c in sorted(counts.items())}
    return freq


# --------------------------------------------------------------------------------------------------
# Texture atlas: one canonical UV-like image per identity; every rendered image samples from it
# --------------------------------------------------------------------------------------------------

ATLAS_H, ATLAS_W = 72, 64
ATLAS_REGIONS = {  # name: (y0, y1, x0, x1) in atlas pixels
    "head_front": (0, 16, 0, 16), "head_back": (0, 16, 16, 32), "bag": (0, 16, 32, 48),
    "shoes": (0, 8, 48, 64), "torso_front": (16, 40, 0, 16), "torso_back": (16, 40, 16, 32),
    "sleeve": (16, 40, 32, 40), "legs_front": (40, 68, 0, 16), "legs_back": (40, 68, 16, 32),
}
REGION_PART = {"head_front": "head", "head_back": "head", "bag": "bag", "shoes": "shoes",
               "torso_front": "upper", "torso_back": "upper", "sleeve": "upper",
               "legs_front": "lower", "legs_back": "lower"}


class _Atlas:
    """RGB atlas plus a per-texel part label (straps belong to the bag, long hair to the head)."""

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


def _paint_atlas(seed, attrs, texture_key):
    """Draw the identity's atlas; each part has its own stream so a twin's unchanged parts match its source."""
    at = _Atlas()
    skin = SKIN[attrs["skin"]]
    r = {part: _rng(seed, _T_TEX, texture_key, i) for i, part in enumerate(PARTS)}

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


def _atlas_png(at: _Atlas) -> bytes:
    return _png(np.clip(np.rint(at.rgb), 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------------------------------
# Body maps: which atlas texel lands on each pixel of the person box, per view
# --------------------------------------------------------------------------------------------------

# (region, region frame rect (y0, y1, x0, x1) in box fractions, clip rect or None, ellipse?, mirror?)
# The region is stretched over its frame rect; only pixels inside the clip rect are painted, so
# two legs with a gap sample the same legs texture as one continuous pair of trousers.


def _layers(view, build, bag, skirt):
    tw = {"slim": 0.42, "average": 0.50, "heavy": 0.60}[build]
    lw, aw, gap = tw * 0.9, 0.12, 0.07
    L = []
    if view in ("front", "back"):
        s = "front" if view == "front" else "back"
        legs = (0.50, 0.94, 0.5 - lw / 2, 0.5 + lw / 2)
        if skirt:
            L.append((f"legs_{s}", legs, None, False, False))
        else:
            L.append((f"legs_{s}", legs, (0.50, 0.63, legs[2], legs[3]), False, False))
            L.append((f"legs_{s}", legs, (0.63, 0.94, legs[2], 0.5 - gap / 2), False, False))
            L.append((f"legs_{s}", legs, (0.63, 0.94, 0.5 + gap / 2, legs[3]), False, False))
        feet = (0.94, 0.995, 0.5 - lw / 2 - 0.02, 0.5 + lw / 2 + 0.02)
        L.append(("shoes", feet, (feet[0], feet[1], feet[2], 0.5 - gap / 2), False, False))
        L.append(("shoes", feet, (feet[0], feet[1], 0.5 + gap / 2, feet[3]), False, False))
        L.append((f"torso_{s}", (0.15, 0.52, 0.5 - tw / 2, 0.5 + tw / 2), None, False, False))
        L.append(("sleeve", (0.16, 0.50, 0.5 - tw / 2 - aw, 0.5 - tw / 2), None, False, False))
        L.append(("sleeve", (0.16, 0.50, 0.5 + tw / 2, 0.5 + tw / 2 + aw), None, False, True))
        L.append((f"head_{s}", (0.02, 0.155, 0.34, 0.66), None, True, False))
        side = 1 if view == "front" else -1  # shoulder bag / handbag hang on the person's same side
        if bag == "backpack" and view == "back":
            L.append(("bag", (0.19, 0.45, 0.5 - tw * 0.4, 0.5 + tw * 0.4), None, True, False))
        elif bag == "shoulder bag":
            x0 = 0.5 + tw / 2 - 0.03
            L.append(("bag", _mirror_rect((0.43, 0.57, x0, x0 + 0.2), side), None, False, False))
        elif bag == "handbag":
            x0 = 0.5 - tw / 2 - aw - 0.05
            L.append(("bag", _mirror_rect((0.47, 0.59, x0, x0 + 0.17), side), None, False, False))
    else:  # side view, facing left; a random flip gives facing right
        ts, ls = tw * 0.62, lw * 0.6
        if bag == "backpack":
            L.append(("bag", (0.19, 0.45, 0.5 + ts / 2 - 0.03, 0.5 + ts / 2 + 0.17), None, True, False))
        L.append(("legs_front", (0.50, 0.94, 0.5 - ls / 2, 0.5 + ls / 2), None, False, False))
        L.append(("shoes", (0.94, 0.995, 0.5 - ls / 2 - 0.08, 0.5 + ls / 2), None, False, False))
        L.append(("torso_front", (0.15, 0.52, 0.5 - ts / 2, 0.5 + ts / 2), None, False, False))
        if bag == "shoulder bag":
            L.append(("bag", (0.43, 0.56, 0.44, 0.64), None, False, False))
        L.append(("sleeve", (0.16, 0.50, 0.5 - aw / 2, 0.5 + aw / 2), None, False, False))
        if bag == "handbag":
            L.append(("bag", (0.47, 0.59, 0.42, 0.58), None, False, False))
        L.append(("head_front", (0.02, 0.155, 0.36, 0.52), None, False, False))
        L.append(("head_back", (0.02, 0.155, 0.50, 0.64), None, False, False))
    return L


def _mirror_rect(rect, side):
    y0, y1, x0, x1 = rect
    return rect if side > 0 else (y0, y1, 1 - x1, 1 - x0)


@lru_cache(maxsize=4096)
def _body_map(view, build, bag, skirt, bh, bw):
    """(atlas_y, atlas_x, mask) for a person box of bh x bw pixels. Cached: boxes come in few sizes."""
    ay = np.zeros((bh, bw), np.int16)
    ax = np.zeros((bh, bw), np.int16)
    mask = np.zeros((bh, bw), bool)
    yc = (np.arange(bh) + 0.5) / bh
    xc = (np.arange(bw) + 0.5) / bw
    for region, frame, clip, ellipse, mirror in _layers(view, build, bag, skirt):
        ry0, ry1, rx0, rx1 = ATLAS_REGIONS[region]
        fy0, fy1, fx0, fx1 = frame
        cy0, cy1, cx0, cx1 = clip or frame
        rows = np.nonzero((yc >= cy0) & (yc < cy1))[0]
        cols = np.nonzero((xc >= cx0) & (xc < cx1))[0]
        if len(rows) == 0 or len(cols) == 0:
            continue
        ty = np.clip(((yc[rows] - fy0) / (fy1 - fy0) * (ry1 - ry0)).astype(int), 0, ry1 - ry0 - 1) + ry0
        u = (xc[cols] - fx0) / (fx1 - fx0)
        tx = np.clip(((1 - u if mirror else u) * (rx1 - rx0)).astype(int), 0, rx1 - rx0 - 1) + rx0
        sel = np.ones((len(rows), len(cols)), bool)
        if ellipse:
            ey = (yc[rows] - (cy0 + cy1) / 2) / ((cy1 - cy0) / 2)
            ex = (xc[cols] - (cx0 + cx1) / 2) / ((cx1 - cx0) / 2)
            sel = ey[:, None] ** 2 + ex[None, :] ** 2 <= 1.05
        r2, c2 = np.ix_(rows, cols)
        ay[r2, c2] = np.where(sel, ty[:, None], ay[r2, c2])
        ax[r2, c2] = np.where(sel, tx[None, :], ax[r2, c2])
        mask[r2, c2] |= sel
    for a in (ay, ax, mask):
        a.setflags(write=False)
    return ay, ax, mask


# --------------------------------------------------------------------------------------------------
# Rendering: background clutter, camera colour shift, box jitter, occlusion, noise
# --------------------------------------------------------------------------------------------------


def _camera_table(p: SimPEDESParams):
    """Per-camera colour gain/bias, scene colours and blur: the same shirt looks different per camera."""
    cams = []
    for c in range(p.cameras):
        rng = _rng(p.seed, _T_CAM, c)
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


def _render(rng, atlas, attrs, view, cam, p: SimPEDESParams, scale=1.0, shift=(0.0, 0.0), allow_occlusion=True):
    """Render one image of an identity from its atlas. Returns (uint8 HxWx3, ground-truth dict)."""
    h, w = p.height, p.width
    img = _background(rng, cam, h, w)
    s = scale * (1 + p.jitter * rng.uniform(-1, 1))
    bh, bw = max(8, int(round(h * 0.94 * s))), max(4, int(round(w * s)))
    dy = int(round((shift[0] + p.jitter * 0.5 * rng.uniform(-1, 1)) * h))
    dx = int(round((shift[1] + p.jitter * 0.5 * rng.uniform(-1, 1)) * w))
    y0, x0 = (h - bh) // 2 + dy, (w - bw) // 2 + dx
    ay, ax, mask = _body_map(view, attrs["build"], attrs["bag_type"], attrs["lower_type"] == "skirt", bh, bw)
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


def _png(arr: np.ndarray) -> bytes:
    """PNG bytes with fixed encoder options (no metadata, fixed compression) for byte-identical output."""
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# Captions: annotator styles, synonyms, visibility-aware mentions, colour mistakes, per-token part labels
# --------------------------------------------------------------------------------------------------

SYNONYMS = {  # concept: surface forms an annotator may prefer
    "grey": ["grey", "gray"], "purple": ["purple", "violet"], "blond": ["blond", "blonde"],
    "t-shirt": ["t-shirt", "tee shirt", "short-sleeved shirt"],
    "shirt": ["shirt", "long-sleeved shirt", "button-up shirt"],
    "jacket": ["jacket", "windbreaker", "zip-up jacket"], "sweater": ["sweater", "jumper", "pullover"],
    "coat": ["coat", "long coat", "overcoat"], "trousers": ["trousers", "pants", "slacks"],
    "jeans": ["jeans", "denim pants"], "shorts": ["shorts", "short pants"], "skirt": ["skirt", "knee-length skirt"],
    "shoes": ["shoes", "sneakers", "footwear"], "backpack": ["backpack", "rucksack", "school bag"],
    "shoulder bag": ["shoulder bag", "messenger bag", "bag"], "handbag": ["handbag", "purse"],
    "cap": ["cap", "baseball cap"], "beanie": ["beanie", "knit hat"], "sunhat": ["hat", "sun hat"],
    "striped": ["striped", "with stripes"], "checked": ["plaid", "checked", "checkered"],
    "logo": ["with a logo", "with a print on the front"],
    "man": ["man", "male", "guy", "gentleman"], "woman": ["woman", "female", "lady", "girl"],
    "wearing": ["wearing", "in", "dressed in"], "wears": ["is wearing", "wears", "has on"],
    "carrying": ["carrying", "holding", "with"], "carries": ["is carrying", "carries", "has"],
}
PLURAL = {"trousers", "pants", "slacks", "jeans", "denim pants", "shorts", "short pants", "shoes", "sneakers"}
MASS = {"footwear"}
FUNCTION_WORDS = {"a", "an", "the", "and", "with", "in", "on", "of", "his", "her", "over", "at"}
PART_ORDERS = [("head", "upper", "lower", "shoes", "bag"), ("upper", "lower", "shoes", "bag", "head"),
               ("upper", "lower", "bag", "shoes", "head"), ("head", "upper", "bag", "lower", "shoes")]
MODES = ("long", "short", "long", "terse")  # styles cycle through these sentence forms
MIN_PIXELS = {"head": 8, "upper": 20, "lower": 20, "shoes": 4, "bag": 10}


def _make_styles(p: SimPEDESParams):
    """Annotator profiles: part order, preferred synonyms, verbosity, sentence form, omission habit."""
    styles = []
    for s in range(p.annotator_styles):
        rng = _rng(p.seed, _T_STYLE, s)
        styles.append({
            "style": s,
            "mode": MODES[s % len(MODES)],
            "finite": bool(rng.random() < 0.5),  # "is wearing ..." clauses instead of "wearing ..." phrases
            "order": list(PART_ORDERS[int(rng.integers(len(PART_ORDERS)))]),
            "verbosity": int(rng.integers(0, 3)),
            "omit_p": round(float(rng.uniform(0.03, 0.15)), 4),
            "variability": round(float(rng.uniform(0.0, 0.4)), 4),
            "synonyms": {k: int(rng.integers(len(v))) for k, v in sorted(SYNONYMS.items())},
            "determiner": _pick(rng, ["a", "the", "this"]),
            "separator": _pick(rng, [",", ";"]),
        })
    return styles


class _Caption:
    """Builds a caption word by word, each word with its part label."""

    def __init__(self, style, rng, error_rate):
        self.style, self.rng, self.error_rate = style, rng, error_rate
        self.words: list[tuple[str, str]] = []  # (surface word or punctuation, label)
        self.errors: list[dict] = []

    def syn(self, concept):
        opts = SYNONYMS[concept]
        if self.rng.random() < self.style["variability"]:
            return opts[int(self.rng.integers(len(opts)))]
        return opts[self.style["synonyms"][concept]]

    def colour(self, name, part, palette):
        """A colour word, occasionally wrong (an annotator's mistake), recorded in `errors`."""
        said = name
        if self.rng.random() < self.error_rate:
            others = [c for c in palette if c != name]
            said = others[int(self.rng.integers(len(others)))]
            self.errors.append({"part": part, "true": name, "said": said})
        return self.syn(said) if said in SYNONYMS else said

    def np_(self, part, adjectives, noun, post=(), article=True):
        """Noun phrase: [a/an] adjectives noun post-modifiers; content words get `part`, function words none."""
        phrase = [w for a in adjectives for w in a.split()] + noun.split()
        plural = noun in PLURAL or noun in MASS
        out = []
        if article and not plural:
            out.append(("an" if phrase[0][0] in "aeiou" else "a", "none"))
        out += [(w, part) for w in phrase]
        out += [(w, "none" if w in FUNCTION_WORDS else part) for p_ in post for w in p_.split()]
        return out

    def text_and_labels(self):
        """Assemble text (sentence case, no space before punctuation), processed tokens and labels."""
        text, toks, labels, start = "", [], [], True
        for w, lab in self.words:
            if w in ",;.":
                text += w
                start = start or w == "."
                continue
            text += (" " if text else "") + (w[0].upper() + w[1:] if start else w)
            start = False
            for t in word_tokens(w):
                toks.append(t)
                labels.append(lab)
        return text, toks, labels


def _part_phrase(c: _Caption, part, attrs, view, terse):
    """The noun phrase describing one part, or [] when there is nothing to say about it."""
    v, palette = c.style["verbosity"], list(COLOURS)
    if part == "head":
        out = []
        style = attrs["hair_style"]
        hat_hides = attrs["hat"] == "beanie"
        if style == "bald":
            if attrs["hat"] == "none":
                out = [("bald", "head"), ("head", "head")] if terse else c.np_("head", ["bald"], "head")
        elif not hat_hides or v == 2:
            col = [c.colour(attrs["hair_colour"], "head", list(HAIR_COLOURS))] if v > 0 or style != "short" else []
            if style == "ponytail":
                out = c.np_("head", col, "ponytail", article=not terse)
            else:
                out = [(w, "head") for w in ([style] + col + ["hair"])]
        if attrs["hat"] != "none":
            hat = c.np_("head", [c.colour(attrs["hat_colour"], "head", palette)], c.syn(attrs["hat"]),
                        article=not terse)
            out = out + [("and", "none")] + hat if out else hat
        return out
    if part == "upper":
        adj, post = [c.colour(attrs["upper_colour"], "upper", palette)], []
        pat = attrs["upper_pattern"]
        if pat == "logo" and view == "front" and v > 0:
            post = [c.syn("logo")]
        elif pat in ("striped", "checked") and v > 0:
            word = c.syn(pat)
            if word.startswith("with"):
                post = [word if v < 2 else f"with {c.colour(attrs['upper_colour2'], 'upper', palette)} stripes"]
            else:
                adj.append(word)
        return c.np_("upper", adj, c.syn(attrs["upper_type"]), post, article=not terse)
    if part == "lower":
        return c.np_("lower", [c.colour(attrs["lower_colour"], "lower", palette)], c.syn(attrs["lower_type"]),
                     article=not terse)
    if part == "shoes":
        return c.np_("shoes", [c.colour(attrs["shoes_colour"], "shoes", palette)], c.syn("shoes"), article=False)
    if attrs["bag_type"] == "none":
        return []
    post = []
    if attrs["bag_type"] == "backpack" and view == "back" and v > 0 and not terse:
        post = ["on " + ("his" if attrs["gender"] == "man" else "her") + " back"]
    return c.np_("bag", [c.colour(attrs["bag_colour"], "bag", palette)], c.syn(attrs["bag_type"]), post,
                 article=not terse)


def _caption(style, rng, attrs, gt, error_rate):
    """One description of one image by one annotator style; mentions only parts visible in the image."""
    c = _Caption(style, rng, error_rate)
    mode, terse = style["mode"], style["mode"] == "terse"
    mentioned = []
    for part in style["order"]:
        visible = gt["visibility"].get(part, 0.0) >= 0.5 and gt["visible_pixels"].get(part, 0) >= MIN_PIXELS[part]
        terse_shoes = 0.4 if part == "shoes" and style["verbosity"] == 0 else 0.0  # terse annotators skip shoes
        omit = part != "upper" and rng.random() < style["omit_p"] + terse_shoes
        if not visible or omit:
            continue
        phrase = _part_phrase(c, part, attrs, gt["view"], terse)
        if phrase:
            mentioned.append((part, phrase))
    pron = "he" if attrs["gender"] == "man" else "she"
    subj = c.syn(attrs["gender"])
    build = []
    if style["verbosity"] == 2 and attrs["build"] != "average":
        build = [("heavy-set" if attrs["build"] == "heavy" else attrs["build"], "none")]
    W = c.words

    if terse:
        W += build + [(subj, "none")]
        for _, phrase in mentioned:
            W += [(style["separator"], "none")] + phrase
        W += [(".", "none")]
    elif mode == "short":
        W += [(style["determiner"], "none")] + build + [(subj, "none")]
        first = True
        for part, phrase in mentioned:
            if not first:
                W += [(pron, "none")]
            if part == "head":
                W += [("has", "none")] + phrase
            elif part == "bag":
                W += [(w, "none") for w in c.syn("carries").split()] + phrase
            else:
                W += [(w, "none") for w in c.syn("wears").split()] + phrase
            W += [(".", "none")]
            first = False
        if first:
            W += [("is", "none"), ("walking", "none"), (".", "none")]
    else:  # one long sentence: participial phrases or finite clauses, wearables merged into one list
        W += [(style["determiner"], "none")] + build + [(subj, "none")]
        groups = []  # (kind, [phrases])
        for part, phrase in mentioned:
            kind = part if part in ("head", "bag") else "wear"
            if groups and groups[-1][0] == kind == "wear":
                groups[-1][1].append(phrase)
            else:
                groups.append((kind, [phrase]))
        for gi, (kind, phrases) in enumerate(groups):
            if gi > 0:
                W += [(",", "none")]
                if style["finite"] and gi == len(groups) - 1:
                    W += [("and", "none")]
            if style["finite"]:
                verb = {"head": "has", "bag": c.syn("carries"), "wear": c.syn("wears")}[kind]
            else:
                verb = {"head": "with", "bag": c.syn("carrying"), "wear": c.syn("wearing")}[kind]
            W += [(w, "none") for w in verb.split()]
            for pi, phrase in enumerate(phrases):
                if pi > 0:
                    W += [("and", "none")] if pi == len(phrases) - 1 else [(",", "none")]
                W += phrase
        if not groups:
            W += [("is", "none"), ("walking", "none")]
        if rng.random() < (0.5 if style["verbosity"] == 2 else 0.1):
            W += [(",", "none")] + [(w, "none") for w in
                                    {"front": "facing the camera", "back": "walking away from the camera",
                                     "side": "seen from the side"}[gt["view"]].split()]
        W += [(".", "none")]
    text, toks, labels = c.text_and_labels()
    return text, toks, {"style": style["style"], "part_labels": labels, "errors": c.errors,
                        "mentioned": [p_ for p_, _ in mentioned]}


# --------------------------------------------------------------------------------------------------
# Whole dataset
# --------------------------------------------------------------------------------------------------


def _market_name(pid, cam, frame, box):
    return f"{pid:04d}_c{cam}s1_{frame:06d}_{box:02d}.png" if pid >= 0 else f"-1_c{cam}s1_{frame:06d}_{box:02d}.png"


def _choose_queries(images):
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


def noise_index(n_pairs: int, rate: float, seed: int) -> np.ndarray:
    """RDE-form noisy correspondence: floor(rate*N) pairs drawn, their captions permuted among themselves.
    Entry i = index of the caption attached to pair i (identity when rate is 0)."""
    rng = _rng(seed, _T_NOISE)
    idx = np.arange(n_pairs, dtype=np.int64)
    m = int(math.floor(rate * n_pairs))
    if m > 0:
        drawn = np.sort(rng.choice(n_pairs, size=m, replace=False)).astype(np.int64)
        idx[drawn] = drawn[rng.permutation(m)]
    return idx


def content_hash(root: Path) -> str:
    """SHA-256 over every file's relative path and bytes, sorted by path, meta.json excluded."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == "meta.json":
            continue
        data = path.read_bytes()
        h.update(rel.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _write(root: Path, rel: str, data: bytes):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _json_bytes(obj):
    return (json.dumps(obj, sort_keys=True, ensure_ascii=True) + "\n").encode()


def _build(p: SimPEDESParams, root: Path) -> dict:
    """Write the whole dataset under `root` (a fresh folder) and return the meta dict."""
    identities = _build_identities(p)
    cams = _camera_table(p)
    styles = _make_styles(p)
    records, img_meta, market_files = [], [], []  # market_files: (folder, pid, cam, box, png, meta entry)

    for g, ident in enumerate(identities):
        attrs = ident["attributes"]
        atlas = _paint_atlas(p.seed, attrs, ident["texture_key"])
        ident["texture"] = f"textures/{ident['id']:04d}.png"
        _write(root, ident["texture"], _atlas_png(atlas))
        plan = _rng(p.seed, _T_PLAN, g)
        cam_seq = np.concatenate([plan.permutation(p.cameras) for _ in range(-(-p.images_per_id // p.cameras))])
        views = plan.choice(len(VIEWS), size=p.images_per_id, p=[0.4, 0.35, 0.25])
        per_id = []
        for k in range(p.images_per_id):
            cam = int(cam_seq[k]) + 1
            view = VIEWS[int(views[k])]
            arr, gt = _render(_rng(p.seed, _T_IMG, g, k), atlas, attrs, view, cams[cam - 1], p)
            png = _png(arr)
            file_path = f"cam{cam}/{ident['id']:04d}_c{cam}_v{VIEWS.index(view)}_{k}.png"
            _write(root, "imgs/" + file_path, png)
            captions, tokens, cap_meta = [], [], []
            # distinct annotators per image where there are enough styles, like CUHK-PEDES' two annotators
            crng = _rng(p.seed, _T_CAP, g, k)
            order = crng.permutation(p.annotator_styles)
            for j in range(p.captions_per_image):
                style = styles[int(order[j % p.annotator_styles])]
                text, toks, cm = _caption(style, _rng(p.seed, _T_CAP, g, k, j + 1), attrs, gt, p.caption_error_rate)
                captions.append(text)
                tokens.append(toks)
                cap_meta.append(cm)
            records.append({"split": ident["split"], "captions": captions, "file_path": file_path,
                            "processed_tokens": tokens, "id": ident["id"]})
            img_meta.append({"file_path": file_path, "id": ident["id"], "split": ident["split"], "camera": cam,
                             "image_in_id": k, **gt, "captions": cap_meta, "market_path": None})
            per_id.append({"camera": cam, "png": png, "meta": img_meta[-1], "k": k})
        if ident["split"] == "train":
            market_files += [("bounding_box_train", ident["id"], im["camera"], im["k"], im["png"], im["meta"])
                             for im in per_id]
        elif ident["split"] == "test":
            q = set(_choose_queries(per_id))
            market_files += [("query" if i in q else "bounding_box_test", ident["id"], im["camera"], im["k"],
                              im["png"], im["meta"]) for i, im in enumerate(per_id)]

    # Market gallery extras: distractors (pid 0000, unseen identities) and junk (-1, bad detections)
    extras = []
    for d in range(p.distractors + p.junk):
        rng = _rng(p.seed, _T_EXTRA, d)
        attrs = _sample_identity(rng)
        atlas = _paint_atlas(p.seed + 1_000_003, attrs, d)  # a seed offset keeps extras apart from split ids
        cam = int(rng.integers(p.cameras)) + 1
        view = VIEWS[int(rng.integers(len(VIEWS)))]
        junk = d >= p.distractors
        if junk:  # a fragment: far too large and off-centre, as a bad detector box would be
            arr, gt = _render(rng, atlas, attrs, view, cams[cam - 1], p, scale=rng.uniform(1.6, 2.4),
                              shift=(rng.uniform(-0.5, 0.5), rng.uniform(-0.4, 0.4)), allow_occlusion=False)
        else:
            arr, gt = _render(rng, atlas, attrs, view, cams[cam - 1], p)
        extras.append({"kind": "junk" if junk else "distractor", "attributes": attrs, "camera": cam, **gt})
        market_files.append(("bounding_box_test", -1 if junk else 0, cam, d % 100, _png(arr), extras[-1]))

    counts = {"bounding_box_train": 0, "query": 0, "bounding_box_test": 0, "distractors": 0, "junk": 0}
    names = set()
    for n, (folder, pid, cam, box, png, meta_entry) in enumerate(market_files):
        name = _market_name(pid, cam, 25 * (n + 1), box)
        assert name not in names, name
        names.add(name)
        _write(root, f"market/{folder}/{name}", png)
        counts[folder] += 1
        counts["distractors"] += pid == 0
        counts["junk"] += pid == -1
        meta_entry["market_path"] = f"market/{folder}/{name}"

    _write(root, "reid_raw.json", _json_bytes(records))

    n_pairs = sum(len(r["captions"]) for r in records if r["split"] == "train")
    noise = None
    if p.noise_rate > 0:
        idx = noise_index(n_pairs, p.noise_rate, p.seed)
        buf = io.BytesIO()
        np.save(buf, idx, allow_pickle=False)
        _write(root, "noise_index.npy", buf.getvalue())
        noise = {"file": "noise_index.npy", "rate": p.noise_rate, "n_pairs": n_pairs,
                 "drawn": int(math.floor(p.noise_rate * n_pairs)), "noisy": int((idx != np.arange(n_pairs)).sum())}

    for ident in identities:
        ident["attribute_vector"] = attribute_vector(ident["attributes"])
        del ident["texture_key"]
    meta = {
        "generator": "simpedes", "version": GENERATOR_VERSION, "params": asdict(p), "seed": p.seed,
        "parts": list(PARTS), "labels": list(LABELS), "views": list(VIEWS),
        "atlas": {"size": [ATLAS_H, ATLAS_W], "regions": {k: list(v) for k, v in ATLAS_REGIONS.items()},
                  "region_part": REGION_PART},
        "attribute_names": list(ATTRIBUTE_NAMES), "part_attributes": {k: list(v) for k, v in PART_ATTRIBUTES.items()},
        "attribute_tables": ATTRIBUTE_TABLES, "attribute_frequencies": _attribute_frequencies(identities),
        "colours": {k: list(v) for k, v in COLOURS.items()}, "cameras": cams, "styles": styles,
        "identities": identities, "images": img_meta, "extras": extras, "market": counts,
        "train_pairs": n_pairs, "noise": noise,
    }
    meta["content_hash"] = content_hash(root)
    _write(root, "meta.json", _json_bytes(meta))
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
        meta = _build(params, tmp)
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


def main(argv=None):
    """CLI: `python -m tireid_core.data.simpedes --params params.yaml --out data/simpedes [--profile tiny]`."""
    ap = argparse.ArgumentParser(description="Generate the SimPEDES dataset from the `simpedes:` params section.")
    ap.add_argument("--params", default="params.yaml", help="params YAML with a `simpedes:` section")
    ap.add_argument("--out", default=None,
                    help="output folder (default: simpedes.out_dir, relative to the params file's folder)")
    ap.add_argument("--profile", default="demo", help="configs/<profile>.yaml overrides (default: none)")
    args = ap.parse_args(argv)
    params_file = Path(args.params)
    if args.profile == "demo":
        import yaml  # only the CLI reads YAML

        with open(params_file, encoding="utf-8") as f:
            section = (yaml.safe_load(f) or {}).get("simpedes")
    else:
        from tireid_core.params import load_section  # the project's profile layering

        section = load_section("simpedes", params_file=params_file, profile=args.profile)
    if not isinstance(section, dict):
        raise SystemExit(f"{params_file}: no `simpedes:` section")
    section = dict(section)
    default_out = section.pop("out_dir", None)
    if args.out:
        out = Path(args.out)
    elif default_out:
        out = params_file.resolve().parent / default_out
    else:
        raise SystemExit("no output folder: pass --out or set simpedes.out_dir")
    meta = generate(SimPEDESParams.from_dict(section), out)
    print(f"SimPEDES {GENERATOR_VERSION}: {len(meta['images'])} images of {len(meta['identities'])} ids -> {out}"
          f" (content hash {meta['content_hash'][:16]})")


if __name__ == "__main__":
    main()
