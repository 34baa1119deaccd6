"""Timing of the evaluation metrics on a CUHK-PEDES-sized problem (6,156 captions x 3,074 images).

Prints figures only (no assertions): median seconds of the fast path after a warm-up, queries per
second, and the speed-up over the per-query reference loop, timed on a subset and extrapolated.
Run: python benchmarks/bench_eval.py [--threads N] [--busy 4]
Then, idle and busy side by side: the evaluation as the project runs it (threads chosen from the load average, see
metrics._threads_for_current_load) and with every core's thread (the old behaviour), first on the idle machine, then
beside `--busy` competing torch processes (each a bounded matrix-multiply loop, stopped at the end). The load average
is a one-minute mean, so the busy figures are taken once it has risen (about a minute).
"""

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the reference loop lives with the tests
from reference_impl import reference_retrieval  # noqa: E402
from tireid_core.metrics import reid_metrics, retrieval_metrics  # noqa: E402

N_CAPTIONS, N_IMAGES, N_IDS = 6156, 3074, 1000
REFERENCE_QUERIES = 200
RUNS = 5


def make_problem(seed=0):
    """Captions of 1,000 identities over their images, with scores that favour the right person."""
    g = torch.Generator().manual_seed(seed)
    image_pids = torch.arange(N_IMAGES) % N_IDS
    image_pids = image_pids[torch.randperm(N_IMAGES, generator=g)]
    caption_image = torch.arange(N_CAPTIONS) % N_IMAGES  # about two captions per image
    caption_pids = image_pids[caption_image]
    scores = torch.randn(N_CAPTIONS, N_IMAGES, generator=g) * 0.1
    scores += 0.25 * (caption_pids[:, None] == image_pids[None, :])
    cams = torch.randint(0, 6, (N_IMAGES,), generator=g)
    q_cams = torch.randint(0, 6, (N_CAPTIONS,), generator=g)
    return scores, caption_pids, image_pids, q_cams, cams


def median_time(fn, runs=RUNS, sync=False):
    fn()  # warm-up
    times = []
    for _ in range(runs):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(label, seconds, n_queries, reference_seconds=None):
    line = f"{label:48s} {seconds:8.3f} s  {n_queries / seconds:12,.0f} queries/s"
    if reference_seconds is not None:
        line += f"  speed-up vs reference x{reference_seconds / seconds:,.0f}"
    print(line)


def _busy(deadline: float) -> None:
    """A competing torch job: matrix products on all cores until `deadline` (bounded, never left running)."""
    a = torch.randn(1024, 1024)
    while time.time() < deadline:
        a = torch.tanh(a @ a)


def idle_vs_busy(scores, qp, gp, n_busy: int) -> None:
    """The load-aware evaluation and the all-threads one, idle and beside `n_busy` busy torch processes."""
    load_aware = lambda: retrieval_metrics(scores, qp, gp)  # noqa: E731
    all_threads = lambda: retrieval_metrics.__wrapped__(scores, qp, gp)  # noqa: E731  (no thread adjustment)
    idle = (median_time(load_aware, runs=3), median_time(all_threads, runs=3), os.getloadavg()[0])
    ctx = mp.get_context("spawn")
    jobs = [ctx.Process(target=_busy, args=(time.time() + 240,)) for _ in range(n_busy)]
    for j in jobs:
        j.start()
    try:
        for _ in range(60):  # let the one-minute load average catch up (at most 60 s)
            if os.getloadavg()[0] >= n_busy:
                break
            time.sleep(1)
        busy = (median_time(load_aware, runs=3), median_time(all_threads, runs=3), os.getloadavg()[0])
    finally:
        for j in jobs:
            j.terminate()
            j.join()
    print(f"{'':28s} {'load-aware':>12s} {'all threads':>12s}  load average")
    for label, (a, b, load) in (("idle", idle), (f"beside {n_busy} busy torch jobs", busy)):
        print(f"{label:28s} {a:10.3f} s {b:10.3f} s  {load:6.2f}   (all threads / load-aware: x{b / a:.2f})")


def main():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=cores, help="torch CPU threads (default: all cores)")
    parser.add_argument("--busy", type=int, default=4, help="competing torch processes for the busy figures (0: skip)")
    args = parser.parse_args()
    threads = args.threads
    torch.set_num_threads(threads)
    warnings.simplefilter("ignore")
    scores, qp, gp, q_cams, g_cams = make_problem()
    print(f"problem: {N_CAPTIONS} x {N_IMAGES}, {N_IDS} identities; torch {torch.__version__}, "
          f"{threads} CPU threads, load average {os.getloadavg()[0]:.2f}")

    sub = slice(0, REFERENCE_QUERIES)
    start = time.perf_counter()
    ref = reference_retrieval(scores[sub], qp[sub], gp)
    ref_full = (time.perf_counter() - start) * N_CAPTIONS / REFERENCE_QUERIES
    print(f"{'reference loop (' + str(REFERENCE_QUERIES) + ' queries, extrapolated)':48s} {ref_full:8.3f} s")

    fast_sub = retrieval_metrics(scores[sub], qp[sub], gp)
    agree = all(abs(fast_sub[k] - ref[k]) < 1e-9 for k in ("R@1", "R@5", "R@10", "mAP", "mINP"))
    print(f"fast == reference on the subset: {agree}")

    m = retrieval_metrics(scores, qp, gp)
    print(f"metrics: R@1 {m['R@1']:.2f}  R@5 {m['R@5']:.2f}  R@10 {m['R@10']:.2f}  mAP {m['mAP']:.2f}  "
          f"mINP {m['mINP']:.2f}")

    cases = [
        ("cpu  t2i stable, noninterp (fp32)", lambda: retrieval_metrics(scores, qp, gp)),
        ("cpu  t2i stable, trapezoid (fp32)", lambda: retrieval_metrics(scores, qp, gp, ap_convention="trapezoid")),
        ("cpu  t2i stable, fp64 input (torch.sort path)", lambda: retrieval_metrics(scores.double(), qp, gp)),
        ("cpu  i2t stable (transposed)", lambda: retrieval_metrics(scores.T, gp, qp)),
        ("cpu  t2i tie_mode=expected", lambda: retrieval_metrics(scores, qp, gp, tie_mode="expected")),
        ("cpu  reid (scores as distances, 6 cameras)", lambda: reid_metrics(scores, qp, gp, q_cams, g_cams)),
    ]
    for label, fn in cases:
        report(label, median_time(fn), N_CAPTIONS if "i2t" not in label else N_IMAGES,
               ref_full if "t2i stable, noninterp" in label else None)

    if torch.cuda.is_available():
        s_gpu = scores.cuda()
        print(f"CUDA: {torch.cuda.get_device_name()}")
        gpu = retrieval_metrics(s_gpu, qp, gp)
        print(f"cuda == cpu: {all(abs(gpu[k] - m[k]) < 1e-9 for k in ('R@1', 'R@5', 'R@10', 'mAP', 'mINP'))}")
        cuda_cases = [
            ("cuda t2i stable, noninterp (fp32)", lambda: retrieval_metrics(s_gpu, qp, gp)),
            ("cuda t2i tie_mode=expected", lambda: retrieval_metrics(s_gpu, qp, gp, tie_mode="expected")),
            ("cuda reid", lambda: reid_metrics(s_gpu, qp, gp, q_cams, g_cams)),
        ]
        for label, fn in cuda_cases:
            report(label, median_time(fn, sync=True), N_CAPTIONS,
                   ref_full if "noninterp" in label else None)
    else:
        print("CUDA: not available")
    if args.busy:
        idle_vs_busy(scores, qp, gp, args.busy)


if __name__ == "__main__":
    main()
