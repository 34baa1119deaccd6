"""Noisy correspondence (the RDE protocol, docs/evaluation.md): a copy of a text-image dataset whose training captions
are reattached to other training pairs, so any method trains on it unchanged.

    python -m tireid_core.data.noisy --dataset simpedes --root data/simpedes --rate 0.2 --out data/simpedes_noisy/0.2
    python -m tireid_core.data.noisy --dataset cuhk-pedes --root /datasets/CUHK-PEDES \\
        --index noiseindex/CUHK-PEDES_0.2.npy --out /datasets/CUHK-PEDES_noisy_0.2

A training pair is one (image, caption) of the train split in IRRA's flattened order (records in file order, captions
in list order). Pair i keeps its image and identity and takes the caption of pair index[i]; val and test are copied
untouched. The index is RDE's published file for a real dataset (validated: a permutation of the right length), or
drawn here from a seed (SimPEDES' generator's draw: ⌊rate·N⌋ pairs, their captions permuted among themselves).
Images are hard-linked (copied where links are impossible); the copy is written to a scratch folder and renamed, so
a failed run leaves nothing half-written. `noise.json` in the copy records what was done.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tireid_core.data.datasets import (TEXT_FORMATS, DatasetError, locate_text_dataset, rde_noise_index,
                                       read_annotation)


SECTION = "noisy_correspondence"


@dataclass(frozen=True)
class NoisySettings:
    """params.yaml's `noisy_correspondence` section: where the copies and runs go, the draw's seed, the rates and the
    methods whose full row is retrained at each rate."""

    data_dir: str
    runs_dir: str
    seed: int
    rates: tuple[float, ...]
    methods: tuple[str, ...]

    def data_root(self, rate: float | str) -> str:
        return f"{self.data_dir}/{_name(rate)}"

    def run_sets(self, method: str, rate: float) -> list[str]:
        """The --set overrides that turn `method`'s full row into its noisy run at `rate` (the pipeline's command and
        the notebook's reading of it use these same two)."""
        return [f"{method}.data.root={self.data_root(rate)}", f"{method}.out_dir={self.runs_dir}/{_name(rate)}/{method}"]


def _name(rate: float | str) -> str:
    """A rate as DVC writes a foreach item into a path (0.2 -> "0.2"); a string (a DVC template) stays as it is."""
    return rate if isinstance(rate, str) else f"{rate:g}"


def load_noisy_settings(params_file=None, **kwargs) -> NoisySettings:
    """The section, checked: rates in (0, 1), methods that are text-image methods of the registry."""
    from tireid_core.methods import available_methods, get_method
    from tireid_core.params import ParamsError, load_section

    s = load_section(SECTION, params_file, **kwargs)
    expected = {"data_dir", "runs_dir", "seed", "rates", "methods"}
    if set(s) != expected:
        raise ParamsError(f"{SECTION}: expected keys {sorted(expected)}, got {sorted(s)}")
    rates = tuple(float(r) for r in s["rates"])
    if not all(0.0 < r < 1.0 for r in rates) or len(set(rates)) != len(rates):
        raise ParamsError(f"{SECTION}.rates: distinct rates in (0, 1) (rate 0 is the clean run), got {s['rates']!r}")
    for method in s["methods"]:
        if method not in available_methods() or get_method(method).task != "text_image":
            raise ParamsError(f"{SECTION}.methods: {method!r} is not a text-image method")
    return NoisySettings(str(s["data_dir"]), str(s["runs_dir"]), int(s["seed"]), rates, tuple(s["methods"]))


def train_pairs(records: list, caption_field: str = "captions") -> list[tuple[int, int]]:
    """(record index, caption index) of every training pair, in IRRA's flattened order."""
    return [(r, c) for r, rec in enumerate(records) if rec.get("split") == "train"
            for c in range(len(rec[caption_field]))]


def apply_noise_index(records: list, index: np.ndarray) -> tuple[list, int]:
    """(new records, number of noisy pairs): pair i takes the caption (and its processed tokens, when the records have
    them) of pair index[i]; every other field, and every non-training record, is unchanged."""
    pairs = train_pairs(records)
    index = np.asarray(index)
    if len(index) != len(pairs):
        raise DatasetError(f"noise index has {len(index)} entries for {len(pairs)} training pairs")
    out = copy.deepcopy(records)
    for i, (r, c) in enumerate(pairs):
        src_r, src_c = pairs[int(index[i])]
        out[r]["captions"][c] = records[src_r]["captions"][src_c]
        if "processed_tokens" in records[r]:
            out[r]["processed_tokens"][c] = records[src_r]["processed_tokens"][src_c]
    return out, int((index != np.arange(len(index))).sum())


def drawn_noise_index(n_pairs: int, rate: float, seed: int) -> np.ndarray:
    """The seeded draw SimPEDES' generator uses for its own noise file (RDE's mechanism)."""
    from tireid_core.data.simpedes import noise_index

    if not 0.0 <= rate < 1.0:
        raise ValueError(f"noise rate must be in [0, 1), got {rate!r}")
    return noise_index(n_pairs, rate, seed)


def _link_tree(src: Path, dst: Path) -> None:
    for folder, _, files in os.walk(src):
        target = dst / Path(folder).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            try:
                os.link(Path(folder) / name, target / name)
            except OSError:  # another file system, or links not allowed
                shutil.copy2(Path(folder) / name, target / name)


def write_noisy_copy(dataset: str, root, out, *, rate: float | None = None, index_file=None, seed: int = 0) -> dict:
    """Write the noisy copy of `dataset` at `root` into `out` (see the module docstring); returns noise.json's record.

    Exactly one of `rate` (draw the index from `seed`) and `index_file` (RDE's .npy) is given."""
    if (rate is None) == (index_file is None):
        raise ValueError("give either a noise rate (the index is drawn from the seed) or an RDE index file, not both")
    try:
        fmt = TEXT_FORMATS[dataset]
    except KeyError:
        raise ValueError(f"unknown text-image dataset {dataset!r}; known: {', '.join(TEXT_FORMATS)}") from None
    ddir, annotation = locate_text_dataset(fmt, root)
    records = read_annotation(annotation)
    n_pairs = len(train_pairs(records))
    if index_file is not None:
        index = rde_noise_index(index_file, n_pairs)
    else:
        index = drawn_noise_index(n_pairs, rate, seed)
    noisy_records, noisy = apply_noise_index(records, index)
    record = {"dataset": dataset, "source": str(Path(root)), "n_pairs": n_pairs, "noisy_pairs": noisy,
              "rate": rate if rate is not None else round(noisy / n_pairs, 4),
              "index_file": str(index_file) if index_file is not None else None,
              "seed": seed if index_file is None else None,
              "index_sha256": hashlib.sha256(np.ascontiguousarray(index, dtype=np.int64).tobytes()).hexdigest()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rel = annotation.relative_to(ddir)
        (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
        (scratch / rel).write_text(json.dumps(noisy_records, ensure_ascii=False), encoding="utf-8")
        _link_tree(ddir / "imgs", scratch / "imgs")
        np.save(scratch / "noise_index.npy", np.asarray(index, dtype=np.int64))
        (scratch / "noise.json").write_text(json.dumps(record, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        scratch.rename(out)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help=f"one of {', '.join(TEXT_FORMATS)}")
    ap.add_argument("--root", required=True, help="the clean dataset's folder (or its parent)")
    ap.add_argument("--out", required=True, help="folder for the noisy copy (replaced when it exists)")
    ap.add_argument("--rate", type=float, default=None, help="draw the index: this share of pairs shuffled")
    ap.add_argument("--index", default=None, help="RDE's noise-index file (noiseindex/<dataset>_<rate>.npy)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the drawn index (with --rate)")
    args = ap.parse_args(argv)
    try:
        record = write_noisy_copy(args.dataset, args.root, args.out, rate=args.rate, index_file=args.index,
                                  seed=args.seed)
    except (DatasetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {record['noisy_pairs']} of {record['n_pairs']} training pairs carry another caption")
    return 0


if __name__ == "__main__":
    sys.exit(main())
