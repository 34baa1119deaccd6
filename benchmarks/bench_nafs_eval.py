"""NAFS test-time scoring on a CUHK-PEDES-sized test set (6,156 captions × 3,074 images): vectorised vs per-text loop.

    python benchmarks/bench_nafs_eval.py [--config demo|paper] [--threads N] [--loop-texts 200] ...

Random features (seeded), unit counts and widths of docs/nafs.md §10 (``demo``, default: d = 128, BERT max length 32 → 30
word units + global + 2 sub-sentences = 33 text units, 6 image units; about 35 s on 2 cores) or of the paper
(``paper``: d = 768, 101 text units; about 10 GB of memory and 2 minutes on 2 cores with --loop-texts 40). Each caption
has a random number of valid word units.

Times the full evaluation — S = S_glob + S_loc (CNL, docs/nafs.md §2.3, §5) then RVN (§5, §7 item 1) — with
tireid_core.models.nafs_scoring against the straightforward reference loops of tests/reference_impl.py: CNL one text
at a time over all images (and, on fewer texts, in 200-image chunks as the official code does, §7 items 11 and 16), RVN
with Python sets per (text, image) pair. The loops run on a subset of texts (RVN official: of image rows) and are
extrapolated linearly (the set loops' fixed part, every image's neighbour set, is timed separately and counted once),
which the output says. Checks on the subset: CNL scores allclose in float32 and full rankings
identical in float64 (float32 rankings can legitimately swap scores closer than rounding), RVN bonuses bit-identical.
Prints figures; asserts nothing about time (exit status 1 if a parity check fails).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the reference loops live with the tests
from reference_impl import cnl_scores_loop, rvn_bonus_loop  # noqa: E402
from tireid_core.metrics import cosine_similarity  # noqa: E402
from tireid_core.models.nafs_scoring import cnl_scores, rvn_bonus, visual_similarity  # noqa: E402

N_CAPTIONS, N_IMAGES = 6156, 3074
CONFIGS = {
    # name: (d, text units U, min/max valid word units, image units R)
    "demo": dict(d=128, units=33, words=(10, 30), regions=6,
                 note="demo-like (docs/nafs.md §10): d = 128, max length 32 -> 30 word units + global + 2 sub-sentences"),
    "paper": dict(d=768, units=101, words=(15, 98), regions=6,
                  note="paper (docs/nafs.md §2): d = 768, 101 text units (global + 2 sub-sentences + 98 words)"),
}


def make_problem(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    t, i, u, d, r = N_CAPTIONS, N_IMAGES, cfg["units"], cfg["d"], cfg["regions"]
    lo, hi = cfg["words"]
    n_words = torch.randint(lo, hi + 1, (t,), generator=g)
    mask = torch.arange(u)[None, :] < (3 + n_words)[:, None]  # global, 2 sub-sentences, then the words
    return dict(
        text_global=torch.randn(t, d, generator=g), image_global=torch.randn(i, d, generator=g),
        text_units=torch.randn(t, u, d, generator=g), text_values=torch.randn(t, u, d, generator=g),
        text_mask=mask,
        image_units=torch.randn(i, r, d, generator=g), image_values=torch.randn(i, r, d, generator=g),
    )


def nafs_scores(p, chunk):
    """S_glob = cos(t, f), S_loc = CNL and S = their sum (docs/nafs.md §5), as the evaluator scores them."""
    s_glob = cosine_similarity(p["text_global"], p["image_global"])
    s_loc = cnl_scores(p["text_units"], p["text_mask"], p["image_units"], text_values=p["text_values"],
                       image_values=p["image_values"], chunk=chunk)
    return {"global": s_glob, "local": s_loc, "total": s_glob + s_loc}


def clock(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def stable_ranking(scores):
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def main():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="demo")
    ap.add_argument("--threads", type=int, default=cores)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=None, help="cnl_scores block size in elements (default: module's)")
    ap.add_argument("--loop-texts", type=int, default=200, help="texts timed with the per-text CNL loop")
    ap.add_argument("--official-loop-texts", type=int, default=40, help="texts timed with 200-image chunks")
    ap.add_argument("--rvn-loop-texts", type=int, default=300, help="texts timed with the intended-RVN set loop")
    ap.add_argument("--rvn-loop-images", type=int, default=150, help="image rows timed with the official-RVN loop")
    ap.add_argument("--fp64-texts", type=int, default=12, help="texts whose float64 rankings are compared")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = CONFIGS[args.config]
    p = make_problem(cfg, args.seed)
    n_valid = p["text_mask"].sum(1).float()
    print(f"problem: {N_CAPTIONS} texts x {N_IMAGES} images; config {args.config}: {cfg['note']}")
    print(f"  text units U = {cfg['units']} (valid per text: mean {n_valid.mean():.1f}, min {n_valid.min():.0f}, "
          f"max {n_valid.max():.0f}), image units R = {cfg['regions']}, d = {cfg['d']}; "
          f"random features, seed {args.seed}")
    print(f"  torch {torch.__version__}, {args.threads} CPU threads, load average {os.getloadavg()[0]:.2f}")

    # ---- vectorised evaluation -------------------------------------------------------------------------
    print("\nvectorised (tireid_core.models.nafs_scoring; one run after a warm-up on 8 texts)")
    with torch.no_grad():
        cnl_scores(p["text_units"][:8], p["text_mask"][:8], p["image_units"], text_values=p["text_values"][:8],
                   image_values=p["image_values"], chunk=args.chunk)
        scores, t_cnl = clock(lambda: nafs_scores(p, args.chunk))
        vis, t_vis = clock(lambda: visual_similarity(p["image_global"]))
        s = scores["total"]
        b_int, t_int = clock(lambda: rvn_bonus(s, vis, mode="intended"))
        reranked_int = s + b_int
        b_off, t_off = clock(lambda: rvn_bonus(s, vis, mode="official"))
    print(f"  {'S_glob + S_loc (CNL)':44s} {t_cnl:9.2f} s")
    print(f"  {'visual similarity (image x image)':44s} {t_vis:9.2f} s")
    print(f"  {'RVN bonus, intended':44s} {t_int:9.2f} s")
    print(f"  {'RVN bonus, official':44s} {t_off:9.2f} s")

    # ---- reference loops on subsets, extrapolated --------------------------------------------------------
    g = torch.Generator().manual_seed(args.seed + 1)
    perm = torch.randperm(N_CAPTIONS, generator=g)
    sub = perm[:args.loop_texts].sort().values
    sub200 = perm[:args.official_loop_texts].sort().values
    sub_rvn = perm[:args.rvn_loop_texts].sort().values.tolist()
    img_rows = torch.randperm(N_IMAGES, generator=g)[:args.rvn_loop_images].sort().values.tolist()

    def on_texts(idx, **kw):
        return cnl_scores_loop(p["text_units"][idx], p["text_mask"][idx], p["image_units"],
                               text_values=p["text_values"][idx], image_values=p["image_values"], **kw)

    print("\nreference loops (timed on a subset, extrapolated linearly to the full set)")
    with torch.no_grad():
        loop_loc, t = clock(lambda: on_texts(sub))
        t_cnl_loop = t * N_CAPTIONS / len(sub)
        print(f"  {'CNL per text, all images at once':44s} {t_cnl_loop:9.2f} s  ({len(sub)} texts in {t:.2f} s)")
        loop200, t = clock(lambda: on_texts(sub200, image_chunk=200))
        t_cnl_loop200 = t * N_CAPTIONS / len(sub200)
        print(f"  {'CNL per text and 200-image chunk (official)':44s} {t_cnl_loop200:9.2f} s  "
              f"({len(sub200)} texts in {t:.2f} s)")
        # The set loops have a fixed part (every image's visual neighbours, lists from the tensors), timed with no
        # rows and counted once; only the per-row part is extrapolated.
        for mode, rows, total in (("intended", sub_rvn, N_CAPTIONS), ("official", img_rows, N_IMAGES)):
            _, t_fixed = clock(lambda: rvn_bonus_loop(s, vis, mode=mode, rows=[]))
            loop_bonus, t = clock(lambda: rvn_bonus_loop(s, vis, mode=mode, rows=rows))
            t_full = t_fixed + max(t - t_fixed, 0.0) * total / len(rows)
            what = "texts" if mode == "intended" else "image rows"
            print(f"  {'RVN ' + mode + ', Python sets':44s} {t_full:9.2f} s  "
                  f"({len(rows)} {what} in {t:.2f} s, of which {t_fixed:.2f} s fixed)")
            if mode == "intended":
                loop_int, t_int_loop = loop_bonus, t_full
            else:
                loop_off, t_off_loop = loop_bonus, t_full

    # ---- parity ------------------------------------------------------------------------------------------
    print("\nparity on the subsets")
    ok = True
    vec_loc = scores["local"][sub]
    diff = (vec_loc - loop_loc).abs().max().item()
    close = torch.allclose(vec_loc, loop_loc, rtol=1e-4, atol=1e-5)
    close200 = torch.allclose(scores["local"][sub200], loop200, rtol=1e-4, atol=1e-5)
    same_rank = (stable_ranking(vec_loc) == stable_ranking(loop_loc)).all(1)
    same_top10 = (stable_ranking(vec_loc)[:, :10] == stable_ranking(loop_loc)[:, :10]).all(1)
    print(f"  CNL float32: allclose {close} (200-chunk loop: {close200}), max |diff| {diff:.2e}; identical full "
          f"ranking {int(same_rank.sum())}/{len(sub)}, identical top-10 {int(same_top10.sum())}/{len(sub)}")
    # Where float32 rankings differ, the loop's order must still be sorted by the vectorised scores up to rounding.
    along_loop = vec_loc.gather(1, stable_ranking(loop_loc))
    worst = (along_loop[:, 1:] - along_loop[:, :-1]).max().item()
    print(f"    differing rankings only swap scores within {max(worst, 0.0):.1e} of each other "
          f"(≤ 2 x max |diff|: {worst <= 2 * diff})")
    ok &= close and close200 and worst <= 2 * diff
    idx64 = sub[:args.fp64_texts]
    with torch.no_grad():
        args64 = [x[idx64].double() for x in (p["text_units"], p["text_values"])]
        vec64 = cnl_scores(args64[0], p["text_mask"][idx64], p["image_units"].double(), text_values=args64[1],
                           image_values=p["image_values"].double(), chunk=args.chunk)
        ref64 = cnl_scores_loop(args64[0], p["text_mask"][idx64], p["image_units"].double(), text_values=args64[1],
                                image_values=p["image_values"].double())
    rank64 = bool((stable_ranking(vec64) == stable_ranking(ref64)).all())
    print(f"  CNL float64 ({len(idx64)} texts): max |diff| {(vec64 - ref64).abs().max().item():.2e}, "
          f"identical full rankings: {rank64}")
    ok &= rank64
    eq_int = torch.equal(b_int[sub_rvn], loop_int[sub_rvn])
    eq_off = torch.equal(b_off[:, img_rows], loop_off[:, img_rows])
    print(f"  RVN bonus bit-identical: intended {eq_int}, official {eq_off}")
    ok &= eq_int and eq_off
    loop_total = scores["global"][sub] + loop_loc + b_int[sub]
    same_final = (stable_ranking(loop_total) == stable_ranking(reranked_int[sub])).all(1)
    print(f"  S + RVN(intended) float32: identical full ranking {int(same_final.sum())}/{len(sub)}")
    touched = int((b_off != 0).any(1).sum())
    print(f"  (official RVN touches {touched} of {N_CAPTIONS} text rows; intended touches "
          f"{int((b_int != 0).any(1).sum())})")

    # ---- summary ----------------------------------------------------------------------------------------
    vec_int = t_cnl + t_vis + t_int
    vec_off = t_cnl + t_vis + t_off
    print("\nspeed-up (full evaluation: S_glob + CNL + visual similarity + RVN; loops extrapolated)")
    for label, loop_t, vec_t in (
        ("CNL only, vs per-text loop", t_cnl_loop, t_cnl),
        ("CNL only, vs per-text 200-image-chunk loop", t_cnl_loop200, t_cnl),
        ("CNL + RVN intended, vs per-text loop + set loop", t_cnl_loop + t_vis + t_int_loop, vec_int),
        ("CNL + RVN official, vs per-text loop + set loop", t_cnl_loop + t_vis + t_off_loop, vec_off),
        ("CNL + RVN official, vs official-structured loops", t_cnl_loop200 + t_vis + t_off_loop, vec_off),
    ):
        print(f"  {label:52s} {loop_t:9.1f} s / {vec_t:6.1f} s = x{loop_t / vec_t:,.1f}")
    # Work of the matrix products (2 FLOPs per multiply-add), per text with n valid units, R image units, I images:
    # vectorised = q.k (n R I d) + u.v (n R I d) + [G; mask] e (n (n+1) R I); loop = q.k + a v (n R I d each) + u.t.
    n, r, i, d = n_valid.double(), cfg["regions"], N_IMAGES, cfg["d"]
    flops_vec = float((2 * n * r * i * d * 2 + 2 * n * (n + 1) * r * i).sum())
    flops_loop = float((2 * n * r * i * d * 2 + 2 * r * i * d).sum())
    print("\nwork of the CNL matrix products (why the CNL speed-up is small on a CPU)")
    print(f"  vectorised {flops_vec / 1e9:8.0f} GFLOP in {t_cnl:7.1f} s = {flops_vec / 1e9 / t_cnl:6.1f} GFLOP/s")
    print(f"  loop       {flops_loop / 1e9:8.0f} GFLOP in {t_cnl_loop:7.1f} s = {flops_loop / 1e9 / t_cnl_loop:6.1f} GFLOP/s")
    print(f"  the per-text loop does {flops_loop / flops_vec:.2f}x the vectorised work: on one device the CNL speed-up "
          "is the ratio of the two rates, not a saving of work")
    headline = (t_cnl_loop + t_vis + t_int_loop) / vec_int
    print(f"headline speed-up (CNL + intended RVN vs per-text loop + set loop; target >= 20): x{headline:,.1f}")
    if not ok:
        print("PARITY CHECK FAILED")
        sys.exit(1)


if __name__ == "__main__":
    main()
