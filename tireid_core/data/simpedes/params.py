"""The generator's parameters (the `simpedes:` section of params.yaml) and their one validation.

Every knob is a field of `SimPEDESParams` carrying its default (the CPU demo) and its rule (integer or rate, and
its range). `validate` is the only place that checks values: construction and `from_dict` both go through it, and
every error names the offending key as `simpedes.<key>`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Mapping

import numpy as np

MAX_CAMERAS = 6  # Market-1501 file names carry one camera digit; its readers expect cameras 1..6
MAX_IMAGES_PER_ID = 99  # two-digit Market box index
MAX_IDS = 9999  # four-digit Market person ids


def _int(default: int, lo: int, hi: int | None = None, why: str = ""):
    """An integer knob in lo..hi (hi None: unbounded)."""
    return field(default=default, metadata={"kind": "int", "lo": lo, "hi": hi, "why": why})


def _rate(default: float):
    """A probability or fraction in [0, 1]."""
    return field(default=default, metadata={"kind": "rate", "lo": 0.0, "hi": 1.0, "why": ""})


@dataclass(frozen=True)
class SimPEDESParams:
    """All knobs of the generator; defaults are the CPU demo. Validated on construction (see `validate`)."""

    seed: int = _int(0, 0)
    ids_train: int = _int(400, 1)
    ids_val: int = _int(100, 1)
    ids_test: int = _int(100, 1)
    images_per_id: int = _int(4, 2, MAX_IMAGES_PER_ID, "query and gallery need two images; two-digit Market box")
    captions_per_image: int = _int(2, 1)
    height: int = _int(96, 32)
    width: int = _int(32, 12)
    cameras: int = _int(4, 2, MAX_CAMERAS, "Market-1501 cameras")
    annotator_styles: int = _int(4, 1)
    occlusion: float = _rate(0.3)
    jitter: float = _rate(0.1)
    near_twin_rate: float = _rate(0.2)
    caption_error_rate: float = _rate(0.05)
    noise_rate: float = _rate(0.0)
    distractors: int = _int(20, 0)
    junk: int = _int(10, 0)

    def __post_init__(self):
        for key, value in validate({f.name: getattr(self, f.name) for f in fields(self)}).items():
            object.__setattr__(self, key, value)  # plain int / float: numpy scalars would not JSON-serialise

    @classmethod
    def from_dict(cls, d: Mapping) -> "SimPEDESParams":
        """Build from the `simpedes:` params section (less `out_dir`). Unknown keys are errors: typos must not
        pass silently."""
        return cls(**validate(d))


def _describe(rule: dict) -> str:
    lo, hi, why = rule["lo"], rule["hi"], rule["why"]
    if rule["kind"] == "rate":
        what = "a number in [0, 1]"
    elif hi is not None:
        what = f"an integer in {lo}..{hi}"
    else:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(lo, f"an integer >= {lo}")
    return f"{what} ({why})" if why else what


def _check(key: str, value, rule: dict):
    """One value against its field's rule; returns it as a plain int / float."""
    if isinstance(value, bool):
        ok = False
    elif rule["kind"] == "int":
        ok = isinstance(value, (int, np.integer))
        value = int(value) if ok else value
    else:
        ok = isinstance(value, (int, float, np.integer, np.floating))
        value = float(value) if ok else value
    if not ok or not (rule["lo"] <= value and (rule["hi"] is None or value <= rule["hi"])):  # NaN fails too
        raise ValueError(f"simpedes.{key} must be {_describe(rule)}, got {value!r}")
    return value


def validate(section: Mapping) -> dict:
    """Check a (possibly partial) `simpedes:` section: known keys only, each value of its field's kind and range,
    and all split identities within the Market id range. Returns the given values as plain ints / floats; raises
    ValueError naming the key (`simpedes.<key>`)."""
    spec = {f.name: f for f in fields(SimPEDESParams)}
    unknown = sorted(set(section) - set(spec))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join('simpedes.' + k for k in unknown)}; "
                         f"known keys: {', '.join(spec)}")
    out = {key: _check(key, value, spec[key].metadata) for key, value in section.items()}
    n_ids = [out.get(key, spec[key].default) for key in ("ids_train", "ids_val", "ids_test")]
    if sum(n_ids) > MAX_IDS:
        raise ValueError(f"simpedes.ids_train + simpedes.ids_val + simpedes.ids_test must be <= {MAX_IDS} "
                         f"(four-digit Market person ids), got {' + '.join(map(str, n_ids))}")
    return out
