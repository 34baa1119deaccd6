"""Identities: attribute sampling, near twins, attribute vectors and realised attribute frequencies."""
from __future__ import annotations

from tireid_core.data.simpedes.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_TABLES, PART_ATTRIBUTES, PARTS
from tireid_core.data.simpedes.params import SimPEDESParams
from tireid_core.data.simpedes.streams import T_ID, pick, stream


def _draw(rng, name, gender=None):
    t = ATTRIBUTE_TABLES[name]
    probs = t["probs"][gender] if isinstance(t["probs"], dict) else t["probs"]
    return pick(rng, t["values"], probs)


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


def sample_identity(rng) -> dict:
    """A fresh identity's attributes (name -> value, every name of ATTRIBUTE_NAMES)."""
    gender = _draw(rng, "gender")
    attrs = {"gender": gender, "build": _draw(rng, "build"), "skin": _draw(rng, "skin")}
    for part in PARTS:
        attrs.update(_sample_part(rng, part, gender))
    return attrs


def part_values(attrs, part) -> tuple:
    """The values of one part's attributes (two identities look alike in a part when these are equal)."""
    return tuple(attrs[k] for k in PART_ATTRIBUTES[part])


def _make_twin(rng, source):
    """Copy `source` and redraw 1-2 parts until they differ: a near twin (CMR's fine-grained confusions)."""
    attrs = dict(source)
    changed = sorted(rng.choice(len(PARTS), size=int(rng.integers(1, 3)), replace=False).tolist())
    for i in changed:
        part = PARTS[i]
        for _ in range(100):
            new = _sample_part(rng, part, attrs["gender"])
            if tuple(new[k] for k in PART_ATTRIBUTES[part]) != part_values(source, part):
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


def build_identities(p: SimPEDESParams) -> list[dict]:
    """All split identities (train, val, test order), with near twins drawn from earlier ids of the same split."""
    counts = {"train": p.ids_train, "val": p.ids_val, "test": p.ids_test}
    out, g = [], 0
    for split in ("train", "val", "test"):
        originals = []  # ids of this split that are not twins (a twin of a twin would drift)
        for _ in range(counts[split]):
            rng = stream(p.seed, T_ID, g)
            pid = g + 1
            ident = {"id": pid, "split": split, "twin_of": None, "changed_parts": [], "texture_key": g}
            if originals and rng.random() < p.near_twin_rate:
                src = out[originals[int(rng.integers(len(originals)))] - 1]
                ident["attributes"], ident["changed_parts"] = _make_twin(rng, src["attributes"])
                ident["twin_of"] = src["id"]
                ident["texture_key"] = src["texture_key"]  # unchanged parts keep the source's fabric detail
            else:
                ident["attributes"] = sample_identity(rng)
                originals.append(pid)
            out.append(ident)
            g += 1
    return out


def attribute_frequencies(identities) -> dict:
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
