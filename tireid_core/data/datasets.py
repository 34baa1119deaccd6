"""Loaders for the real datasets, in the on-disk formats their authors distribute.

Why this module exists: every reference code base reads these files a little differently (IRRA opens
`ICFG-PEDES.json`, the READMEs say `ICFG_PEDES.json`; RSTPReid says `img_path` where the others say
`file_path`; Market-1501 keeps junk and distractor ids in its gallery). The loaders here accept the known
variants, return plain records (records.py, torchreid style) and fail loudly, naming the file, instead of
silently dropping data. Formats and conventions: specs/datasets.md.

A loader checks what makes a record unusable (missing fields, wrong types, split values, caption counts,
missing image files). Whole-dataset consistency (split sizes, id ranges, disjoint splits) is the job of
`validate.py`, so that the same loaders also read tiny fixtures, subsets and SimPEDES. Nothing here
downloads anything: the datasets are licence-restricted and paths always come from the caller.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from .records import SPLITS, DatasetError, ImageEntry, ReIDDataset, ReIDImage, TextImageDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# Split tables of specs/datasets.md; the validator compares full downloads against them.
# CUHK-PEDES caption counts are those of the distributed file (80,440), not the paper's 80,412.
KNOWN_SIZES: dict[str, dict[str, dict[str, int]]] = {
    "cuhk-pedes": {
        "train": {"ids": 11003, "images": 34054, "captions": 68126},
        "val": {"ids": 1000, "images": 3078, "captions": 6158},
        "test": {"ids": 1000, "images": 3074, "captions": 6156},
    },
    "icfg-pedes": {
        "train": {"ids": 3102, "images": 34674, "captions": 34674},
        "test": {"ids": 1000, "images": 19848, "captions": 19848},
    },
    "rstpreid": {
        "train": {"ids": 3701, "images": 18505, "captions": 37010},
        "val": {"ids": 200, "images": 1000, "captions": 2000},
        "test": {"ids": 200, "images": 1000, "captions": 2000},
    },
    "market1501": {
        "train": {"ids": 751, "images": 12936},
        "query": {"ids": 750, "images": 3368},
        # images = after dropping junk; files = what bounding_box_test holds on disk
        "gallery": {"images": 15913, "files": 19732, "junk": 3819, "distractors": 2793},
    },
    "dukemtmc-reid": {
        "train": {"ids": 702, "images": 16522},
        "query": {"ids": 702, "images": 2228},
        "gallery": {"ids": 1110, "images": 17661},
    },
    # CUHK03-NP: the 767/700 protocol of Zhong et al. (2017), in the Market-style folders its authors distribute
    "cuhk03-np-labeled": {
        "train": {"ids": 767, "images": 7368},
        "query": {"ids": 700, "images": 1400},
        "gallery": {"ids": 700, "images": 5328},
    },
    "cuhk03-np-detected": {
        "train": {"ids": 767, "images": 7365},
        "query": {"ids": 700, "images": 1400},
        "gallery": {"ids": 700, "images": 5332},
    },
}

# Train pairs in IRRA's flattened order; an RDE noise-index file must have exactly this length.
RDE_TRAIN_PAIRS = {"cuhk-pedes": 68126, "icfg-pedes": 34674, "rstpreid": 37010}


# --------------------------------------------------------------------------------------------- images

def _open_loaded(path: Path) -> Image.Image:
    """Open and fully decode: PIL decodes lazily, so a truncated file only fails on load()."""
    if not path.is_file():
        raise DatasetError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()  # detached from the file, which closes here
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... depending on the codec
        raise DatasetError(f"cannot decode image {path}: {e}") from e


def verify_images(paths: Iterable, what: str) -> None:
    """Decode every image once before a run starts, so a bad file fails now, named, not after hours of training.

    Raises DatasetError listing every unreadable file (the first 20 by name)."""
    bad = []
    for path in dict.fromkeys(Path(p) for p in paths):
        try:
            _open_loaded(path)
        except DatasetError as err:
            bad.append(str(err))
    if bad:
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DatasetError(f"{what}: {len(bad)} image(s) cannot be read:\n  " + "\n  ".join(bad[:20]) + more)


def image_mode(path) -> str:
    """The stored colour mode ("RGB", "L", "RGBA", ...) of a fully decoded image; for the validator."""
    return _open_loaded(Path(path)).mode


def read_image(path) -> Image.Image:
    """Decode an image fully and return it in RGB (CUHK-PEDES has grayscale and RGBA files)."""
    path = Path(path)
    im = _open_loaded(path)
    try:
        return im if im.mode == "RGB" else im.convert("RGB")
    except Exception as e:
        raise DatasetError(f"cannot convert image {path} (mode {im.mode}) to RGB: {e}") from e


# ------------------------------------------------------------------------------ text-image datasets

@dataclass(frozen=True)
class TextFormat:
    """What differs between the text-image datasets; everything else is shared."""

    name: str  # registry name
    folders: tuple[str, ...]  # dataset folder names tried under root (root itself is tried first)
    annotations: tuple[str, ...]  # accepted annotation file names, in order of preference
    path_field: str  # "file_path" or "img_path"
    wrong_field: str  # the other dataset family's name for it
    splits: tuple[str, ...]
    id_base: int  # first train id (train ids are contiguous from here)
    captions_per_image: int | None  # exact count, or None = at least one


CUHK_PEDES = TextFormat("cuhk-pedes", ("CUHK-PEDES",), ("reid_raw.json", "CUHK-PEDES.json"),
                        "file_path", "img_path", SPLITS, 1, None)
ICFG_PEDES = TextFormat("icfg-pedes", ("ICFG-PEDES",), ("ICFG-PEDES.json", "ICFG_PEDES.json"),
                        "file_path", "img_path", ("train", "test"), 0, 1)
RSTPREID = TextFormat("rstpreid", ("RSTPReid",), ("data_captions.json",),
                      "img_path", "file_path", SPLITS, 0, 2)
# SimPEDES writes CUHK-PEDES form directly into its root; captions per image is a generator parameter.
SIMPEDES = TextFormat("simpedes", (), ("reid_raw.json",), "file_path", "img_path", SPLITS, 1, None)

TEXT_FORMATS = {f.name: f for f in (CUHK_PEDES, ICFG_PEDES, RSTPREID, SIMPEDES)}


def locate_text_dataset(fmt: TextFormat, root) -> tuple[Path, Path]:
    """Find (dataset folder, annotation file): root may be the dataset folder itself or its parent."""
    root = Path(os.path.abspath(root))
    candidates = [root] + [root / f for f in fmt.folders]
    for d in candidates:
        found = [d / a for a in fmt.annotations if (d / a).is_file()]
        if len(found) > 1:
            raise DatasetError(f"{fmt.name}: both {' and '.join(str(f) for f in found)} exist; which one is meant is "
                               "ambiguous: keep one")
        if found:
            return d, found[0]
    names = " or ".join(fmt.annotations)
    where = ", ".join(str(d) for d in candidates)
    raise DatasetError(f"{fmt.name}: annotation file not found: looked for {names} in {where}")


def read_annotation(path) -> list:
    """Parse an annotation file; a syntax error is reported with its line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e})") from e
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e})") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of records, found a {type(data).__name__}")
    return data


def _type_name(x) -> str:
    return "null" if x is None else type(x).__name__


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def record_problems(rec, fmt: TextFormat) -> list[str]:
    """Why one annotation record is unusable, as short phrases naming the field (empty if fine).

    The phrases carry no record index, so the validator can group identical problems.
    """
    if not isinstance(rec, dict):
        return [f"is a {_type_name(rec)}, not an object"]
    out = []
    pf, wf = fmt.path_field, fmt.wrong_field
    if pf not in rec:
        if wf in rec:
            other = "RSTPReid's" if wf == "img_path" else "CUHK-PEDES/ICFG-PEDES's"
            out.append(f"has field '{wf}' instead of '{pf}' ('{wf}' is {other} field name): wrong loader?")
        else:
            out.append(f"missing field '{pf}'")
    elif not isinstance(rec[pf], str) or not rec[pf].strip():
        out.append(f"field '{pf}' must be a non-empty string, got {_type_name(rec[pf])}")
    elif Path(rec[pf]).is_absolute() or ".." in Path(rec[pf]).parts:
        out.append(f"field '{pf}' must be a path inside the image folder, got {rec[pf]!r}")

    if "id" not in rec:
        out.append("missing field 'id'")
    elif not _is_int(rec["id"]):
        out.append(f"field 'id' must be an int, got {_type_name(rec['id'])}")

    if "split" not in rec:
        out.append("missing field 'split'")
    elif rec["split"] not in fmt.splits:
        out.append(f"field 'split' is {rec['split']!r}, expected one of {'/'.join(fmt.splits)}")

    caps = rec.get("captions")
    caps_ok = False
    if "captions" not in rec:
        out.append("missing field 'captions'")
    elif not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        out.append(f"field 'captions' must be a list of strings, got {_type_name(caps)}")
    elif not caps:
        out.append("field 'captions' is empty (no caption for this image)")
    elif fmt.captions_per_image is not None and len(caps) != fmt.captions_per_image:
        out.append(f"field 'captions' has {len(caps)} captions, expected exactly {fmt.captions_per_image}")
    else:
        caps_ok = True

    if "processed_tokens" in rec:
        toks = rec["processed_tokens"]
        if not isinstance(toks, list) or not all(
                isinstance(t, list) and all(isinstance(w, str) for w in t) for t in toks):
            out.append("field 'processed_tokens' must be a list of lists of strings")
        elif caps_ok and len(toks) != len(caps):
            out.append(f"field 'processed_tokens' has {len(toks)} token lists for {len(caps)} captions")
    return out


def _examples(items: Iterable, k: int = 5) -> str:
    items = list(items)
    shown = ", ".join(str(x) for x in items[:k])
    return shown + (f", ... ({len(items) - k} more)" if len(items) > k else "")


def _subfolder(rel: str) -> str:
    parts = rel.replace("\\", "/").split("/")
    return parts[0] if len(parts) > 1 else ""


def missing_images(imgs_dir: Path, rel_paths: Iterable[str]) -> list[str]:
    """One line per sub-folder of imgs/ with referenced files that do not exist (empty if none).

    Grouped per sub-folder because the known broken download of CUHK-PEDES lacks whole source folders
    (IRRA issue #49); a per-file list would hide that.
    """
    total = defaultdict(int)
    missing = defaultdict(list)
    for rel in dict.fromkeys(rel_paths):  # unique, order kept
        sub = _subfolder(rel)
        total[sub] += 1
        if not os.path.exists(imgs_dir / rel):
            missing[sub].append(rel[len(sub) + 1:] if sub else rel)
    lines = []
    for sub in sorted(missing):
        folder = imgs_dir / sub if sub else imgs_dir
        shown = f"imgs/{sub}/" if sub else "imgs/"
        state = " (the folder does not exist)" if not folder.is_dir() else ""
        lines.append(f"{shown}: {len(missing[sub])} of {total[sub]} referenced files missing{state}, "
                     f"e.g. {_examples(missing[sub], 3)}")
    return lines


def _load_text(fmt: TextFormat, root) -> TextImageDataset:
    ddir, ann = locate_text_dataset(fmt, root)
    records = read_annotation(ann)
    bad = defaultdict(list)  # problem -> record indices, so a systematic problem is one line
    for i, r in enumerate(records):
        for p in record_problems(r, fmt):
            bad[p].append(i)
    if bad:
        n_bad = len({i for idx in bad.values() for i in idx})
        lines = [f"  record{'s' if len(idx) > 1 else ''} {_examples(idx)}: {p}" for p, idx in bad.items()]
        raise DatasetError(f"{ann}: {n_bad} of {len(records)} records are unusable:\n" + "\n".join(lines))

    imgs = ddir / "imgs"
    if not imgs.is_dir():
        raise DatasetError(f"{fmt.name}: image folder not found: {imgs} (annotation {ann})")
    lines = missing_images(imgs, (r[fmt.path_field] for r in records))
    if lines:
        raise DatasetError(f"{ann}: referenced image files are missing under {imgs}:\n  " + "\n  ".join(lines))

    entries = []
    for r in records:
        toks = r.get("processed_tokens")
        entries.append(ImageEntry(
            path=Path(os.path.abspath(imgs / r[fmt.path_field])),
            pid=r["id"],
            split=r["split"],
            captions=tuple(r["captions"]),
            tokens=tuple(tuple(t) for t in toks) if toks is not None else None,
            file_path=r[fmt.path_field],
        ))
    return TextImageDataset(fmt.name, ddir, entries)


def load_cuhk_pedes(root) -> TextImageDataset:
    """CUHK-PEDES: `reid_raw.json` (or `CUHK-PEDES.json`) + `imgs/`; ids 1-based, kept as stored."""
    return _load_text(CUHK_PEDES, root)


def load_icfg_pedes(root) -> TextImageDataset:
    """ICFG-PEDES: `ICFG-PEDES.json` or `ICFG_PEDES.json` (both names circulate); one caption per image."""
    return _load_text(ICFG_PEDES, root)


def load_rstpreid(root) -> TextImageDataset:
    """RSTPReid: `data_captions.json` with `img_path` (not `file_path`); two captions per image."""
    return _load_text(RSTPREID, root)


def load_simpedes(root) -> TextImageDataset:
    """SimPEDES in CUHK-PEDES form: `reid_raw.json` + `imgs/` directly in root."""
    return _load_text(SIMPEDES, root)


TEXT_IMAGE_DATASETS: dict[str, Callable[..., TextImageDataset]] = {
    "cuhk-pedes": load_cuhk_pedes,
    "icfg-pedes": load_icfg_pedes,
    "rstpreid": load_rstpreid,
    "simpedes": load_simpedes,
}


def load_text_image_dataset(name: str, root) -> TextImageDataset:
    """Registry entry point: `load_text_image_dataset("cuhk-pedes", "/data")`."""
    try:
        loader = TEXT_IMAGE_DATASETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown text-image dataset {name!r}; known: {', '.join(TEXT_IMAGE_DATASETS)}") from None
    return loader(root)


# ---------------------------------------------------------------------------------- image ReID

REID_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
# Signed, so that Market's junk id -1 parses; every digit of the camera (c12 is camera 12, not camera 1).
_REID_NAME = re.compile(r"^(-?\d+)_c(\d+)")


@dataclass(frozen=True)
class ReIDFormat:
    name: str
    candidates: tuple[str, ...]  # folders under root holding bounding_box_train/, tried in order ("" = root)
    num_cams: int  # cameras are named 1..num_cams
    junk_in_gallery: bool  # Market: pid -1 files are dropped from the gallery at load time


MARKET1501 = ReIDFormat("market1501", ("market1501/Market-1501-v15.09.15", "market1501",
                                       "Market-1501-v15.09.15", ""), 6, True)
DUKEMTMC_REID = ReIDFormat("dukemtmc-reid", ("dukemtmc-reid/DukeMTMC-reID", "DukeMTMC-reID", ""), 8, False)
# CUHK03-NP in the Market-style layout of its distribution (cuhk03-np/{labeled,detected}/bounding_box_train/
# 0001_c1_1.png, ...): "c1"/"c2" is the view of the person's camera pair (torchreid's camid), no junk or distractors.
CUHK03_NP_LABELED = ReIDFormat("cuhk03-np-labeled", ("cuhk03-np/labeled", "labeled", ""), 2, False)
CUHK03_NP_DETECTED = ReIDFormat("cuhk03-np-detected", ("cuhk03-np/detected", "detected", ""), 2, False)
# SimPEDES' generator allows 2..6 cameras, as Market-1501 has.
SIMPEDES_MARKET = ReIDFormat("simpedes-market", ("market",), 6, True)

REID_FORMATS = {f.name: f for f in (MARKET1501, DUKEMTMC_REID, CUHK03_NP_LABELED, CUHK03_NP_DETECTED,
                                    SIMPEDES_MARKET)}


def locate_reid_dataset(fmt: ReIDFormat, root) -> Path:
    """The folder holding bounding_box_train/, query/ and bounding_box_test/ (all three must exist)."""
    root = Path(os.path.abspath(root))
    candidates = [Path(os.path.normpath(root / c)) for c in fmt.candidates]
    found = next((d for d in candidates if (d / REID_FOLDERS["train"]).is_dir()), None)
    if found is None:
        where = ", ".join(str(d) for d in candidates)
        raise DatasetError(f"{fmt.name}: no bounding_box_train/ folder found; looked in {where}")
    absent = [f for f in REID_FOLDERS.values() if not (found / f).is_dir()]
    if absent:
        raise DatasetError(f"{fmt.name}: {found} lacks the folder(s) {', '.join(absent)}")
    return found


@dataclass
class ReIDScan:
    """One folder of a ReID dataset: kept images plus what was dropped or wrong."""

    images: list[ReIDImage] = field(default_factory=list)
    problems: list[tuple[str, Path]] = field(default_factory=list)  # (phrase, file)
    n_files: int = 0  # image files on disk, junk included
    n_junk: int = 0
    n_distractors: int = 0
    extensions: dict[str, int] = field(default_factory=dict)


def scan_reid_folder(folder: Path, split: str, fmt: ReIDFormat) -> ReIDScan:
    """Parse every image name of one split folder, in sorted order (glob order is filesystem-dependent).

    Files of other types (Market ships a Thumbs.db) are ignored.
    """
    scan = ReIDScan()
    files = sorted((p for p in Path(folder).iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS), key=lambda p: p.name)
    for p in files:
        scan.n_files += 1
        ext = p.suffix.lower()
        scan.extensions[ext] = scan.extensions.get(ext, 0) + 1
        m = _REID_NAME.match(p.name)
        if not m:
            scan.problems.append(("file name does not parse as <pid>_c<camera>...", p))
            continue
        pid, cam = int(m.group(1)), int(m.group(2))
        ok = True
        if not 1 <= cam <= fmt.num_cams:
            scan.problems.append((f"camera {cam} outside 1..{fmt.num_cams}", p))
            ok = False
        if pid == -1:
            if split == "gallery" and fmt.junk_in_gallery:
                scan.n_junk += 1
                continue  # junk: ignored by the original protocol, so never loaded
            scan.problems.append((f"junk id -1 in {split}", p))
            ok = False
        elif pid == 0:
            if split == "gallery":
                scan.n_distractors += 1
            else:
                scan.problems.append((f"distractor id 0 in {split}", p))
                ok = False
        elif pid < 0:
            scan.problems.append(("negative person id", p))
            ok = False
        if ok:
            scan.images.append(ReIDImage(Path(os.path.abspath(p)), pid, cam - 1))
    return scan


def _load_reid(fmt: ReIDFormat, root) -> ReIDDataset:
    ddir = locate_reid_dataset(fmt, root)
    splits, problems = {}, []
    for split, folder in REID_FOLDERS.items():
        scan = scan_reid_folder(ddir / folder, split, fmt)
        splits[split] = scan.images
        problems += scan.problems
    problems += [(f"no images in {REID_FOLDERS[split]}/", ddir / REID_FOLDERS[split])
                 for split in ("train", "query", "gallery") if not splits[split]]
    if problems:
        lines = [f"  {p}: {what}" for what, p in problems[:10]]
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DatasetError(f"{fmt.name} at {ddir}: {len(problems)} bad file(s):\n" + "\n".join(lines) + more)
    return ReIDDataset(fmt.name, ddir, splits["train"], splits["query"], splits["gallery"])


def load_market1501(root) -> ReIDDataset:
    """Market-1501: junk (-1) dropped, distractors (0) kept in the gallery, raw pids, 0-based cameras."""
    return _load_reid(MARKET1501, root)


def load_dukemtmc_reid(root) -> ReIDDataset:
    """DukeMTMC-reID (withdrawn by its authors; optional): raw pids, 0-based cameras, no filtering."""
    return _load_reid(DUKEMTMC_REID, root)


def load_cuhk03_np(root, images: str = "labeled") -> ReIDDataset:
    """CUHK03-NP (767 train / 700 test identities), hand-labelled or detected boxes: raw pids, view 1/2 as the camera
    (0-based), no filtering. Root: the folder holding cuhk03-np/, cuhk03-np/ itself, or the labeled/ (detected/) folder."""
    if images not in ("labeled", "detected"):
        raise ValueError(f"CUHK03-NP images are 'labeled' or 'detected', got {images!r}")
    return _load_reid(CUHK03_NP_LABELED if images == "labeled" else CUHK03_NP_DETECTED, root)


def load_simpedes_market(root) -> ReIDDataset:
    """SimPEDES' Market-1501-style tree at `<root>/market/` (PNG files)."""
    return _load_reid(SIMPEDES_MARKET, root)


REID_DATASETS: dict[str, Callable[..., ReIDDataset]] = {
    "market1501": load_market1501,
    "dukemtmc-reid": load_dukemtmc_reid,
    "cuhk03-np-labeled": partial(load_cuhk03_np, images="labeled"),
    "cuhk03-np-detected": partial(load_cuhk03_np, images="detected"),
    "simpedes-market": load_simpedes_market,
}


def load_reid_dataset(name: str, root) -> ReIDDataset:
    """Registry entry point: `load_reid_dataset("market1501", "/data")`."""
    try:
        loader = REID_DATASETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown image-ReID dataset {name!r}; known: {', '.join(REID_DATASETS)}") from None
    return loader(root)


def relabel(pids: Iterable[int]) -> dict[int, int]:
    """Raw pid -> dense class label 0..n-1 (sorted), for identity losses; records keep raw pids."""
    return {pid: i for i, pid in enumerate(sorted(set(pids)))}


# -------------------------------------------------------------------------------- derived files

def rde_noise_index(path, n_pairs: int) -> np.ndarray:
    """Load an RDE noise-index file: int64 permutation; entry i = caption index now attached to pair i.

    The length must equal the number of train pairs in IRRA order (RDE_TRAIN_PAIRS); a file for another
    dataset or another pair order would otherwise silently mis-assign captions.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"RDE noise-index file not found: {path}")
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DatasetError(f"{path}: not a readable .npy array ({e})") from e
    if not isinstance(a, np.ndarray):
        raise DatasetError(f"{path}: expected one .npy array, found an archive")
    if a.ndim != 1:
        raise DatasetError(f"{path}: expected a 1-D array, found shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise DatasetError(f"{path}: expected integer entries, found dtype {a.dtype}")
    if len(a) != n_pairs:
        raise DatasetError(f"{path}: has {len(a)} entries but the train split has {n_pairs} pairs "
                           "(file for another dataset, or a different pair order?)")
    a = a.astype(np.int64)
    out_of_range = int(((a < 0) | (a >= n_pairs)).sum())
    if out_of_range:
        raise DatasetError(f"{path}: not a permutation: {out_of_range} entries outside 0..{n_pairs - 1}")
    counts = np.bincount(a, minlength=n_pairs)
    if (counts != 1).any():
        raise DatasetError(f"{path}: not a permutation: {int((counts > 1).sum())} indices repeated, "
                           f"{int((counts == 0).sum())} never used")
    return a


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(root, out_json) -> dict:
    """Write (relative path, size, sha256) for every file under root, sorted by path.

    Pipelines (DVC stages) can then depend on this small file instead of hashing a 40k-file tree on every
    run. Paths are relative and the absolute root is not recorded, so the manifest is machine-independent.
    Returns the manifest; its `sha256` hashes the whole listing.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"cannot write a manifest: {root} is not a folder")
    out = Path(os.path.abspath(out_json))
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in filenames:
            p = Path(dirpath) / fn
            if Path(os.path.abspath(p)) != out:
                files.append(p)
    entries = sorted(({"path": p.relative_to(root).as_posix(), "size": p.stat().st_size, "sha256": _sha256(p)}
                      for p in files), key=lambda e: e["path"])
    listing = "".join(f"{e['path']}\t{e['size']}\t{e['sha256']}\n" for e in entries)
    manifest = {
        "n_files": len(entries),
        "total_bytes": sum(e["size"] for e in entries),
        "sha256": hashlib.sha256(listing.encode("utf-8")).hexdigest(),
        "files": entries,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest
