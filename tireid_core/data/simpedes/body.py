"""Body geometry: where the person box sits in the image, and which atlas texel lands on each pixel of the box.

The layout is a list of layers per view: an atlas region stretched over a frame rectangle (in box fractions),
painted in order, so later layers (torso, head) cover earlier ones (legs). `expected_stripes` turns this geometry
into the horizontal image stripes each body part occupies, for scoring part-based models against it.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from tireid_core.data.simpedes.atlas import ATLAS_REGIONS, Atlas
from tireid_core.data.simpedes.attributes import LABELS, PARTS
from tireid_core.data.simpedes.params import SimPEDESParams

BOX_HEIGHT = 0.94  # the person box's height as a fraction of the image height, before scale jitter
_RASTER_ROWS = 960  # image height at which expected_stripes measures the layout (fine enough for any stripes)


def person_box(h: int, w: int, s: float, dy: int, dx: int) -> tuple[int, int, int, int]:
    """(y0, x0, bh, bw) of the person box in an h x w image: scaled by `s`, centred, then shifted by (dy, dx)."""
    bh, bw = max(8, int(round(h * BOX_HEIGHT * s))), max(4, int(round(w * s)))
    return (h - bh) // 2 + dy, (w - bw) // 2 + dx, bh, bw


# Layers: (region, region frame rect (y0, y1, x0, x1) in box fractions, clip rect or None, ellipse?, mirror?)
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
def body_map(view, build, bag, skirt, bh, bw):
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


def part_rows(height: int, view: str = "front", build: str = "average", bag: str = "none",
              skirt: bool = False) -> dict[str, np.ndarray]:
    """For each part present in the layout, a (height,) bool mask of the image rows where some pixel shows it.

    The image has the generator's default aspect ratio and the person box sits unjittered (scale 1, centred);
    pixels are labelled with their atlas region's part (REGION_PART), i.e. without garment-specific relabelling
    such as a coat's hem over the legs or bag straps over the torso."""
    defaults = SimPEDESParams()
    width = max(4, round(height * defaults.width / defaults.height))
    y0, x0, bh, bw = person_box(height, width, 1.0, 0, 0)
    ay, ax, mask = body_map.__wrapped__(view, build, bag, skirt, bh, bw)  # uncached: a one-off, large box
    labels = np.zeros((height, width), np.uint8)
    labels[y0:y0 + bh, x0:x0 + bw] = np.where(mask, Atlas().part[ay, ax], 0)  # unjittered: inside the image
    rows = {part: (labels == LABELS.index(part)).any(axis=1) for part in PARTS}
    return {part: r for part, r in rows.items() if r.any()}


def expected_stripes(n_stripes: int, min_overlap: float = 0.5, view: str = "front", build: str = "average",
                     bag: str = "none") -> dict[str, list[int]]:
    """The horizontal image stripes each body part occupies in the generator's layout (0 = top stripe).

    The image is cut into `n_stripes` equal-height bands. A part occupies a stripe when the rows they share are
    at least `min_overlap` of the shorter of the two: the part fills at least that fraction of the stripe's rows,
    or the stripe holds at least that fraction of the part's rows (so a small part such as the shoes still gets
    the coarse stripe it lies in, and a long part such as the legs gets every fine stripe it fills). A row counts
    for a part when some pixel in it shows the part (see `part_rows`). Parts straddle stripe borders, so the
    threshold matters near 0.5: with 6 stripes the legs fill 48 % of the bottom stripe (the shoes 30 %), so the
    default gives the bottom stripe to the shoes only, and min_overlap=1/3 to both.

    Derived from the layout the renderer paints, for the unjittered person box of one view and build (default:
    front view, average build; in the current layout the parts' vertical extents are the same for every view and
    build). Carried objects hang differently per type and view, so the bag is left out unless `bag` names one
    (e.g. bag="backpack", view="back"). Returns {part: sorted stripe indices} in PARTS order; a part whose
    overlaps all fall below the threshold maps to [].
    """
    if isinstance(n_stripes, bool) or not isinstance(n_stripes, (int, np.integer)) or n_stripes < 1:
        raise ValueError(f"n_stripes must be a positive integer, got {n_stripes!r}")
    if not 0.0 < min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap!r}")
    per_stripe = -(-_RASTER_ROWS // n_stripes)  # whole rows per stripe, about _RASTER_ROWS rows in all
    rows = part_rows(n_stripes * per_stripe, view, build, bag, skirt=False)
    out = {}
    for part, r in rows.items():
        shared = r.reshape(n_stripes, per_stripe).sum(axis=1)
        out[part] = [int(i) for i in np.flatnonzero(shared >= min_overlap * min(per_stripe, int(r.sum())))]
    return out
