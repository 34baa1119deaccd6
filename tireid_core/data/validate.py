"""Check a dataset folder before training on it, and say in plain words what is wrong.

    python -m tireid_core.data.validate --dataset cuhk-pedes --root /data [--decode-images] [--json report.json]
                                        [--expect-full | --no-size-check]

Why: the real datasets are hand-made downloads, and a partial or outdated copy (CUHK-PEDES without
`train_query/`, RSTPReid's early release with 3,901 train ids) often trains without complaint but gives
numbers that cannot be compared with the papers. The checks follow the checklist of specs/datasets.md §7.

Design
- Every check reads the raw files (the JSON records, the folder listings), so one run collects every
  problem instead of stopping at the first, as a loader must. Record-level rules are shared with the
  loaders (`datasets.record_problems`, `datasets.scan_reid_folder`), so the two cannot disagree.
- ERROR: the data cannot be used as is, or results on it would not be comparable. WARNING: usable, but
  know it. INFO: context. Exit code 1 if there is any ERROR, else 0.
- Split sizes. A wrong size is an ERROR, but only when a size check is on, because a subset or a test
  fixture can never match the published tables:
    * real datasets (cuhk-pedes, icfg-pedes, rstpreid, market1501, dukemtmc-reid, cuhk03-np-labeled,
      cuhk03-np-detected): on by default and
      compared with `datasets.KNOWN_SIZES`; `--no-size-check` turns it off (`--expect-full` says it explicitly);
    * SimPEDES (simpedes, simpedes-market): on by default when the folder has the generator's `meta.json`,
      with sizes derived from its per-image records (`images`: split, id, captions, market_path) and its
      `market` file counts (`simpedes_sizes`); without meta.json there are no expected sizes.
  Checks that hold for any size (train ids contiguous from the dataset's id base, disjoint splits, caption
  counts per image, RSTPReid's 3,901-id early release) always run. CUHK-PEDES counts equal to the paper
  figures (80,412 / 68,108 captions) are a WARNING, not an ERROR (docs/datasets.md §2: report, do not fail).
- Not checked here: mixing ICFG-PEDES and RSTPReid in one split (both come from MSMT17) is a property of a
  training setup, not of one folder.
- Images are checked for existence by default (cheap). `--decode-images` also decodes each one fully and
  reports undecodable files (ERROR) and non-RGB modes (WARNING); slow on a full dataset.

Python API: `validate_dataset(name, root, decode_images=False, check_sizes=None) -> Report`.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .datasets import (KNOWN_SIZES, REID_FOLDERS, REID_FORMATS, TEXT_FORMATS, ReIDFormat, TextFormat, _examples,
                       image_mode, locate_reid_dataset, locate_text_dataset, missing_images, read_annotation,
                       record_problems, scan_reid_folder)
from .records import DatasetError
from .tokenizers import word_tokens

DATASET_NAMES = tuple(TEXT_FORMATS) + tuple(REID_FORMATS)
_COLUMNS = ("ids", "images", "captions", "files", "junk", "distractors")
_CJK = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff00-\uffef]")
_CODE = re.compile(r"[{}<>\\`|]|==|\b(?:def|import|return|print)\s*\(")
_NAME_PID = re.compile(r"^(\d+)_c")


@dataclass
class Report:
    """What the validator found; `ok` is False if there is any error."""

    dataset: str
    root: str
    found: str = ""  # the annotation file or dataset folder actually used
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    expected: dict[str, dict[str, int]] | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def format(self) -> str:
        out = [f"Dataset: {self.dataset}", f"Root:    {self.root}"]
        if self.found:
            out.append(f"Found:   {self.found}")
        if self.counts:
            cols = [c for c in _COLUMNS if any(c in v for v in self.counts.values())]
            out.append("")
            out.append(f"{'split':<8}" + "".join(f"{c:>12}" for c in cols)
                       + ("    expected" if self.expected else ""))
            for split, v in self.counts.items():
                row = f"{split:<8}" + "".join(f"{v[c]:>12,}" if c in v else f"{'':>12}" for c in cols)
                exp = (self.expected or {}).get(split)
                if exp:
                    row += "    " + ", ".join(f"{k} {n:,}" for k, n in exp.items())
                out.append(row)
        if self.info or self.warnings or self.errors:
            out.append("")
        out += [f"INFO: {m}" for m in self.info]
        out += [f"WARNING: {m}" for m in self.warnings]
        out += [f"ERROR: {m}" for m in self.errors]
        out.append("")
        verdict = "FAILED" if self.errors else "OK"
        out.append(f"Result: {verdict}: {len(self.errors)} error(s), {len(self.warnings)} warning(s).")
        return "\n".join(out)


def _n(k: int, word: str) -> str:
    return f"{k:,} {word}" + ("" if k == 1 else "s")


# ---------------------------------------------------------------------------------- expected sizes

def _expected_sizes(name: str, root: Path, check_sizes: bool | None, report: Report):
    if check_sizes is False:
        report.info.append("split sizes were not compared with a table (size check off)")
        return None
    if name in KNOWN_SIZES:
        return KNOWN_SIZES[name]
    meta = root / "meta.json"
    if not meta.is_file():
        report.info.append(f"no {meta.name} in {root}: no expected split sizes for {name}")
        return None
    try:
        return simpedes_sizes(json.loads(meta.read_text(encoding="utf-8")), name)
    except (json.JSONDecodeError, OSError, KeyError, TypeError, AttributeError) as e:
        report.warnings.append(f"{meta}: cannot derive expected split sizes ({type(e).__name__}: {e})")
        return None


def simpedes_sizes(meta: dict, name: str) -> dict[str, dict[str, int]]:
    """Expected split sizes of a SimPEDES folder, from the generator's meta.json (`images`, `market`)."""
    if name == "simpedes":
        acc = {}
        for im in meta["images"]:
            a = acc.setdefault(im["split"], [set(), 0, 0])
            a[0].add(im["id"])
            a[1] += 1
            a[2] += len(im["captions"])
        return {s: {"ids": len(a[0]), "images": a[1], "captions": a[2]} for s, a in acc.items()}
    m = meta["market"]
    ids = defaultdict(set)
    for im in meta["images"]:
        if im.get("market_path"):
            ids[im["market_path"].split("/")[1]].add(im["id"])
    return {
        "train": {"ids": len(ids["bounding_box_train"]), "images": m["bounding_box_train"]},
        "query": {"ids": len(ids["query"]), "images": m["query"]},
        "gallery": {"ids": len(ids["bounding_box_test"]) + (m["distractors"] > 0),
                    "images": m["bounding_box_test"] - m["junk"], "files": m["bounding_box_test"],
                    "junk": m["junk"], "distractors": m["distractors"]},
    }


def _compare_sizes(report: Report, expected) -> None:
    if not expected:
        return
    c = report.counts
    if report.dataset == "cuhk-pedes":
        total = sum(v.get("captions", 0) for v in c.values())
        if total == 80412 or c.get("train", {}).get("captions") == 68108:
            report.warnings.append(
                "caption counts match the paper figures (80,412 total / 68,108 train), not the distributed "
                "file (80,440 / 68,126): this copy was probably trimmed to 2 captions per image; RDE noise "
                "files will not match its pair order")
            expected = {s: {k: n for k, n in v.items() if k != "captions"} for s, v in expected.items()}
    wrong = []
    for split, exp in expected.items():
        for key, n in exp.items():
            got = c.get(split, {}).get(key)
            if got is not None and got != n:
                wrong.append(f"{split} {key} {got:,} (expected {n:,})")
    if wrong:
        report.errors.append("split sizes differ from the expected table (incomplete or wrong version?): "
                             + "; ".join(wrong))
    else:
        report.info.append("split sizes match the expected table")


# -------------------------------------------------------------------------------------- images

def _check_images(report: Report, paths: list[Path], decode: bool) -> None:
    exts = Counter(p.suffix.lower() for p in paths)
    if len(exts) > 1:
        note = "expected for CUHK-PEDES" if report.dataset in ("cuhk-pedes", "simpedes") else "unusual here"
        report.warnings.append("mixed image extensions: " + ", ".join(f"{e or '(none)'} {n:,}" for e, n in
                               sorted(exts.items())) + f" ({note}; code must never assume .jpg)")
    if not decode:
        report.info.append("images were checked for existence only; --decode-images also decodes them "
                           "and checks their colour modes")
        return
    bad, modes = [], defaultdict(list)
    for p in dict.fromkeys(paths):
        if not p.exists():
            continue  # already reported as missing
        try:
            modes[image_mode(p)].append(p)
        except DatasetError as e:
            bad.append(str(e))
    if bad:
        report.errors.append(f"{_n(len(bad), 'image')} cannot be decoded: " + "; ".join(bad[:5])
                             + (f"; ... ({len(bad) - 5} more)" if len(bad) > 5 else ""))
    odd = {m: ps for m, ps in modes.items() if m != "RGB"}
    if odd:
        k = sum(len(ps) for ps in odd.values())
        detail = "; ".join(f"{m}: {len(ps)} (e.g. {_examples([p.name for p in ps], 3)})"
                           for m, ps in sorted(odd.items()))
        report.warnings.append(f"{_n(k, 'image')} not stored as RGB ({detail}); read_image converts to RGB")


# --------------------------------------------------------------------------------- text-image

def _validate_text(fmt: TextFormat, root: Path, report: Report, decode: bool, expected) -> None:
    try:
        ddir, ann = locate_text_dataset(fmt, root)
        report.found = str(ann)
        records = read_annotation(ann)
    except DatasetError as e:
        report.errors.append(str(e))
        return
    fname, pf = ann.name, fmt.path_field

    # Record schema: grouped, so one systematic problem is one line, not 40,000.
    by_problem = defaultdict(list)
    good = []  # (index, record) usable for the dataset-level checks
    for i, r in enumerate(records):
        for p in record_problems(r, fmt):
            by_problem[p].append(i)
        if (isinstance(r, dict) and isinstance(r.get(pf), str) and type(r.get("id")) is int
                and r.get("split") in fmt.splits and isinstance(r.get("captions"), list)
                and all(isinstance(c, str) for c in r["captions"])):
            good.append((i, r))
    for p, idx in by_problem.items():
        report.errors.append(f"{fname}: {p} [{_n(len(idx), 'record')}: index {_examples(idx)}]")
    if not records:
        report.errors.append(f"{fname}: the annotation list is empty")
        return

    # Counts per split.
    ids = {s: set() for s in fmt.splits}
    for s in fmt.splits:
        rs = [r for _, r in good if r["split"] == s]
        ids[s] = {r["id"] for r in rs}
        report.counts[s] = {"ids": len(ids[s]), "images": len(rs), "captions": sum(len(r["captions"]) for r in rs)}

    _caption_checks(fmt, fname, good, report)
    _id_checks(fmt, fname, good, ids, report)

    # Files.
    dup = defaultdict(list)
    for i, r in good:
        dup[r[pf]].append(i)
    dup = {k: v for k, v in dup.items() if len(v) > 1}
    if dup:
        report.warnings.append(f"{fname}: {_n(len(dup), 'file path')} referenced by more than one record: "
                               + _examples(f"{k} (records {', '.join(map(str, v))})" for k, v in dup.items()))
    imgs = ddir / "imgs"
    if not imgs.is_dir():
        report.errors.append(f"image folder not found: {imgs}")
        return
    for line in missing_images(imgs, (r[pf] for _, r in good)):
        report.errors.append("missing images: " + line)
    _check_images(report, [imgs / r[pf] for _, r in good], decode)
    _compare_sizes(report, expected)


def _caption_checks(fmt: TextFormat, fname: str, good, report: Report) -> None:
    n_caps = Counter(len(r["captions"]) for _, r in good if r["captions"])
    if fmt.captions_per_image is None and n_caps:
        # CUHK-PEDES: 2 normally, a few more (totals in §2). SimPEDES: whatever the generator chose, uniformly.
        usual = 2 if fmt.name == "cuhk-pedes" else n_caps.most_common(1)[0][0]
        odd = [(i, len(r["captions"])) for i, r in good if r["captions"] and len(r["captions"]) != usual]
        if odd:
            report.warnings.append(
                f"{fname}: {_n(len(odd), 'image')} with a caption count other than {usual}: "
                + _examples([f"record {i} ({k} captions)" for i, k in odd], 10))

    empty, short, cjk, code = [], [], [], []
    pids_of = defaultdict(set)
    for i, r in good:
        for j, c in enumerate(r["captions"]):
            where = f"record {i} caption {j}"
            if not word_tokens(c):  # empty, whitespace, punctuation or zero-width characters only: no token
                empty.append(where)
                continue
            if fmt.name == "rstpreid" and len(c.split()) < 23:
                short.append(where)
            if _CJK.search(c):
                cjk.append(where)
            if _CODE.search(c):
                code.append(where)
            pids_of[" ".join(c.lower().split())].add(r["id"])
    if empty:
        report.warnings.append(f"{fname}: {_n(len(empty), 'caption')} without any word (empty, whitespace, punctuation "
                               f"or zero-width characters only; training drops them): {_examples(empty)}")
    if short:
        report.warnings.append(f"{fname}: {_n(len(short), 'caption')} shorter than 23 words (RSTPReid promises "
                               f"at least 23): {_examples(short)}")
    if cjk:
        report.warnings.append(f"{fname}: {_n(len(cjk), 'caption')} with CJK characters: {_examples(cjk)}")
    if code:
        report.warnings.append(f"{fname}: {_n(len(code), 'caption')} look like they contain code or markup: "
                               f"{_examples(code)}")
    shared = [c for c, p in pids_of.items() if len(p) > 1]
    if shared:
        report.warnings.append(f"{fname}: {_n(len(shared), 'caption')} identical across different identities, "
                               f"e.g. {shared[0][:80]!r} (ids {_examples(sorted(pids_of[shared[0]]))})")


def _id_checks(fmt: TextFormat, fname: str, good, ids: dict[str, set], report: Report) -> None:
    train = sorted(ids.get("train", ()))
    if train:
        want = range(fmt.id_base, fmt.id_base + len(train))
        if train != list(want):
            gaps = sorted(set(want) - set(train))
            report.errors.append(
                f"{fname}: train ids are not contiguous from {fmt.id_base}: {len(train):,} distinct ids from "
                f"{train[0]} to {train[-1]}" + (f", missing {_examples(gaps)}" if gaps else "")
                + f" (code that uses id - {fmt.id_base} as class label breaks)")
    splits = list(ids)
    for a_i, a in enumerate(splits):
        for b in splits[a_i + 1:]:
            both = sorted(ids[a] & ids[b])
            if both:
                report.errors.append(f"{fname}: {_n(len(both), 'id')} in both {a} and {b} "
                                     f"(splits must be disjoint): {_examples(both)}")
    if fmt.name == "rstpreid" and len(train) == 3901:
        report.errors.append(f"{fname}: train has 3,901 ids: this is the early RSTPReid release with a wrong "
                             "split (RSTPReid-Dataset issue #2); download the current release")

    per_id = Counter(r["id"] for _, r in good if r["split"] == "train")
    single = sorted(p for p, k in per_id.items() if k == 1)
    if single:
        note = " (CUHK-PEDES has three: 1369, 4116, 6116)" if fmt.name == "cuhk-pedes" else ""
        report.warnings.append(
            f"{fname}: {_n(len(single), 'train id')} with a single image{note}: {_examples(single, 20)}; "
            "methods that need a second image of the same person (SSAN weak captions, LCR2S support sets) "
            "must skip them")

    if fmt.name == "rstpreid":
        differ = []
        for i, r in good:
            m = _NAME_PID.match(Path(r[fmt.path_field]).name)
            if m and int(m.group(1)) != r["id"]:
                differ.append(f"{r[fmt.path_field]} has id {r['id']}")
        if differ:
            report.warnings.append(
                f"{fname}: {_n(len(differ), 'file name')} whose prefix differs from the record's id "
                f"(informational: the id field is authoritative): {_examples(differ, 3)}")


# -------------------------------------------------------------------------------- image ReID

def _validate_reid(fmt: ReIDFormat, root: Path, report: Report, decode: bool, expected) -> None:
    try:
        ddir = locate_reid_dataset(fmt, root)
    except DatasetError as e:
        report.errors.append(str(e))
        return
    report.found = str(ddir)
    scans = {s: scan_reid_folder(ddir / f, s, fmt) for s, f in REID_FOLDERS.items()}

    by_problem = defaultdict(list)
    for split, scan in scans.items():
        for what, p in scan.problems:
            by_problem[(REID_FOLDERS[split], what)].append(p.name)
    for (folder, what), names in by_problem.items():
        report.errors.append(f"{folder}/: {what}: {_n(len(names), 'file')} ({_examples(names)})")

    for split, scan in scans.items():
        c = {"ids": len({im.pid for im in scan.images}), "images": len(scan.images)}
        if split == "gallery" and fmt.junk_in_gallery:
            c.update(files=scan.n_files, junk=scan.n_junk, distractors=scan.n_distractors)
        report.counts[split] = c
        if scan.n_files == 0:
            report.errors.append(f"{REID_FOLDERS[split]}/ holds no image files")

    train = {im.pid for im in scans["train"].images}
    test = {im.pid for s in ("query", "gallery") for im in scans[s].images} - {0}
    both = sorted(train & test)
    if both:
        report.errors.append(f"{_n(len(both), 'id')} in both train and query/gallery (must be disjoint): "
                             f"{_examples(both)}")
    gallery = scans["gallery"].images
    cams_of = defaultdict(set)
    for im in gallery:
        cams_of[im.pid].add(im.camid)
    absent = sorted({im.pid for im in scans["query"].images} - set(cams_of))
    if absent:
        report.warnings.append(f"{_n(len(absent), 'query id')} without any image in the gallery (all their "
                               f"queries would be skipped): {_examples(absent)}")
    same_cam = [im.path.name for im in scans["query"].images
                if im.pid in cams_of and not (cams_of[im.pid] - {im.camid})]
    if same_cam:
        report.warnings.append(f"{_n(len(same_cam), 'query')} whose gallery images of the same id all come from "
                               f"the query's own camera (excluded by the protocol; the query is skipped): "
                               f"{_examples(same_cam)}")
    paths = [im.path for s in scans.values() for im in s.images]
    _check_images(report, paths, decode)
    _compare_sizes(report, expected)


# ---------------------------------------------------------------------------------------- entry

def validate_dataset(name: str, root, decode_images: bool = False, check_sizes: bool | None = None) -> Report:
    """Check one dataset folder and collect every problem.

    check_sizes: None = default (on for real datasets, meta.json for SimPEDES), True = on, False = off.
    """
    name = name.lower()
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
    root = Path(root).absolute()
    report = Report(dataset=name, root=str(root))
    report.expected = _expected_sizes(name, root, check_sizes, report)
    if name in TEXT_FORMATS:
        _validate_text(TEXT_FORMATS[name], root, report, decode_images, report.expected)
    else:
        _validate_reid(REID_FORMATS[name], root, report, decode_images, report.expected)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tireid_core.data.validate",
                                 description="Check a text-image or image-ReID dataset folder.")
    ap.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    ap.add_argument("--root", required=True, help="the dataset folder or its parent")
    ap.add_argument("--decode-images", action="store_true", help="decode every image (slow)")
    ap.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    sizes = ap.add_mutually_exclusive_group()
    sizes.add_argument("--expect-full", dest="check_sizes", action="store_const", const=True,
                       help="compare split sizes with the published table (default for real datasets)")
    sizes.add_argument("--no-size-check", dest="check_sizes", action="store_const", const=False,
                       help="do not compare split sizes (subsets, fixtures)")
    args = ap.parse_args(argv)
    report = validate_dataset(args.dataset, args.root, args.decode_images, args.check_sizes)
    print(report.format())
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
