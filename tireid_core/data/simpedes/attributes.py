"""The vocabulary of the generator: body parts, label set, views, colours and the attribute tables.

Attribute frequencies are skewed on purpose (Zipf-like colour tables: black trousers common, a red hat rare), and
some tables are conditional on gender. Optional items (hat, second shirt colour, bag) have the colour "none".
"""
from __future__ import annotations

import numpy as np

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
