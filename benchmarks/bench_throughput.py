"""Demo training throughput of every registered method, and the fraction of the machine's matrix-multiply rate it uses.

    python benchmarks/bench_throughput.py [--methods baseline ssan nafs] [--steps 20] [--warmup 3] [--threads N]
                                          [--profile demo|tiny|paper] [--set METHOD.KEY=VALUE ...] [--row full]
                                          [--mm-sizes 1024 2048] [--json PATH]

1. The machine's fp32 matrix-multiply rate: `torch.mm` of n x n float32 matrices (2·n³ FLOPs per product) on the
   training device with the thread count the training uses (torch's default, or --threads), best of a few repeats
   after a warm-up, for each of --mm-sizes. The best size's rate is the reference ("peak") rate.
2. For each method, its row's parameters (`load_run_params(method, row="full")`, demo profile unless --profile, plus
   --set for that method's section) and the experiment `build_experiment` assembles on its dataset (SimPEDES at
   data/simpedes for the demo: `dvc repro simpedes` makes it). Real training batches of the first epoch come from the
   experiment's training set through the DataLoader `engine.fit` builds (same batch sampler and collation); they are
   loaded before timing, so loading and augmentation are not timed. The step is the engine's `TrainStep`, after the
   set-up `fit` does (benchmarks/steptime.py: `EngineStep`). One untimed step under the FLOP counter (3.), --warmup
   untimed steps, then --steps timed steps, each on the next batch: samples/s = batch_size·steps / time, "step ms"
   the mean and "best ms" the fastest single step (far below the mean when other processes take the cores).
3. The FLOPs of one training step (forward + backward, on one batch, untimed) with
   `torch.utils.flop_counter.FlopCounterMode`: matrix products and convolutions only (elementwise operations,
   normalisation, pooling, losses and the optimiser are not counted), so achieved GFLOP/s = FLOPs·steps / time and its
   fraction of the matmul rate are lower bounds on how busy the cores are. FlopCounterMode has no formula for the CPU
   LSTM kernel (`aten.mkldnn_rnn_layer` and its backward: the Bi-LSTM text encoders would count 0); this script adds
   one (the gate products, 2·T·B·4H·(I + H) forward, twice that backward). A step the counter cannot run prints n/a.

Prints figures and asserts nothing. The load average is printed before and after: other processes on the machine
lower both the throughput and the matmul rate.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.steptime import EngineStep  # noqa: E402

FLOP_NOTE = ("FLOPs: torch.utils.flop_counter.FlopCounterMode (+ this script's LSTM formula) counts matrix products "
             "and convolutions only; elementwise ops, normalisation, pooling, losses and the optimiser are not "
             "counted, so achieved GFLOP/s and the fraction are lower bounds on how busy the cores are.")


# ------------------------------------------------------------------------------------------------ pure helpers

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(n: int = 1024, repeats: int = 5, inner: int = 3, warmup: int = 2, warmup_s: float = 0.5,
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of `torch.mm` on n x n matrices (2·n³ FLOPs per product): best of `repeats` runs of `inner` products,
    after a warm-up of at least `warmup` products and `warmup_s` seconds (threads spun up, clocks raised: with two
    products only, a first 1024 x 1024 figure came out at half the rate measured a minute later). Uses torch's
    current thread count."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g, dtype=dtype).to(device)
    b = torch.randn(n, n, generator=g, dtype=dtype).to(device)
    out = torch.empty(n, n, dtype=dtype, device=device)
    start, done = time.perf_counter(), 0
    while done < warmup or time.perf_counter() - start < warmup_s:
        torch.mm(a, b, out=out)
        _sync(device)
        done += 1
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=out)
        _sync(device)
        best = min(best, (time.perf_counter() - start) / inner)
    return 2 * n ** 3 / best / 1e9


def _mkldnn_rnn_flops(input_shape, w_ih_shape, w_hh_shape, *args, out_shape=None, **kwargs) -> int:
    """One direction of one layer of the CPU LSTM kernel: the gate products of every time step.
    input (T, B, I) or (B, T, I) (not packed), w_ih (4H, I), w_hh (4H, H)."""
    tokens = input_shape[0] * input_shape[1]
    return 2 * tokens * (w_ih_shape[0] * w_ih_shape[1] + w_hh_shape[0] * w_hh_shape[1])


def _mkldnn_rnn_backward_flops(input_shape, w_ih_shape, w_hh_shape, *args, out_shape=None, **kwargs) -> int:
    """Gradients of the inputs/hidden states and of both weights: twice the forward products."""
    return 2 * _mkldnn_rnn_flops(input_shape, w_ih_shape, w_hh_shape)


def extra_flop_formulas() -> dict:
    """Formulas FlopCounterMode lacks, for its `custom_mapping` (ops missing from this torch build are skipped)."""
    out = {}
    for name, formula in (("mkldnn_rnn_layer", _mkldnn_rnn_flops),
                          ("mkldnn_rnn_layer_backward", _mkldnn_rnn_backward_flops)):
        if hasattr(torch.ops.aten, name):
            out[getattr(torch.ops.aten, name)] = formula
    return out


def count_flops(fn: Callable[[], object]) -> tuple[int | None, str | None]:
    """(FLOPs, None) of one call of `fn` under FlopCounterMode (matrix products and convolutions, plus the LSTM
    formula above), or (None, reason) when the call fails under the counter."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as counter:
            fn()
    except Exception as err:  # noqa: BLE001 - a benchmark reports n/a, it does not stop the other methods
        return None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]
    return int(counter.get_total_flops()), None


def throughput_figures(batch_size: int, steps: int, seconds: float, flops_per_step: int | None,
                       matmul_rate_gflops: float) -> dict:
    """samples/s, ms per step, GFLOP per step, achieved GFLOP/s and its fraction of the matmul rate (None: n/a)."""
    per_step = seconds / steps
    gflop = None if flops_per_step is None else flops_per_step / 1e9
    achieved = None if gflop is None else gflop * steps / seconds
    return {
        "batch": batch_size, "steps": steps, "seconds": seconds,
        "samples_per_s": batch_size * steps / seconds, "step_ms": per_step * 1e3,
        "gflop_per_step": gflop, "achieved_gflops": achieved,
        "fraction_of_matmul": None if achieved is None or not matmul_rate_gflops else achieved / matmul_rate_gflops,
    }


COLUMNS = [("method", "method", "{}"), ("batch", "batch", "{}"), ("samples/s", "samples_per_s", "{:.1f}"),
           ("step ms", "step_ms", "{:.1f}"), ("best ms", "best_step_ms", "{:.1f}"),
           ("GFLOP/step", "gflop_per_step", "{:.3f}"), ("GFLOP/s", "achieved_gflops", "{:.2f}"),
           ("of matmul", "fraction_of_matmul", "{:.1%}")]


def format_table(rows: list[dict]) -> str:
    """The figures of `throughput_figures` (plus "method") as an aligned text table; missing values print n/a."""
    cells = [[h for h, _, _ in COLUMNS]]
    for row in rows:
        cells.append([("n/a" if row.get(key) is None else fmt.format(row[key])) for _, key, fmt in COLUMNS])
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def sets_for(method: str, sets: list[str]) -> list[str]:
    """The --set items addressed to `method`'s sections (``METHOD.``, ``METHOD_rows.``, or a section of a method it
    reads: the LCR²S student's ``lcr2s_teacher.``)."""
    from tireid_core.methods import get_method
    from tireid_core.params import set_section

    return [s for s in sets if set_section(s) in (method, f"{method}_rows", *get_method(method).reads)]


def require_data(params) -> None:
    """Exit with a message naming the DVC stage when the run's dataset is not there."""
    root = Path(params.data.root)
    if params.data.dataset == "simpedes":
        if not (root / "reid_raw.json").exists():
            raise SystemExit(f"{params.method}: no SimPEDES data at {root} (reid_raw.json missing); run "
                             "`dvc repro simpedes` first")
    elif not root.exists():
        raise SystemExit(f"{params.method}: dataset {params.data.dataset!r} not found at {root}; set "
                         f"{params.method}.data.root with --set")


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------ one method

def train_batches(exp, device: torch.device, count: int) -> list[dict]:
    """The first `count` batches of epoch 0 as `engine.fit` draws them (one process; cycling if the epoch is
    shorter)."""
    from torch.utils.data import DataLoader

    from tireid_core.runtime import seed_everything

    tp = exp.params.train
    seed_everything(tp.seed * 1000)
    exp.train_set.start_epoch(tp.seed, 0)
    batches = exp.train_batches(0)
    loader = DataLoader(exp.train_set, batch_sampler=batches[:count], collate_fn=exp.collate(),
                        num_workers=exp.params.data.num_workers, pin_memory=device.type == "cuda")
    loaded = list(loader)
    return [loaded[i % len(loaded)] for i in range(count)]


def step_times(step: Callable[[dict], object], batches: list[dict], device: torch.device) -> list[float]:
    """Wall seconds of each `step(batch)`, one batch after the other (the device synchronised after each)."""
    times = []
    for batch in batches:
        start = time.perf_counter()
        step(batch)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def bench_method(method: str, args, matmul_rate: float) -> dict:
    from tireid_core.experiment import build_experiment
    from tireid_core.params import load_run_params
    from tireid_core.runtime import resolve_device

    params = load_run_params(method, row=args.row, profile=args.profile, sets=sets_for(method, args.set))
    require_data(params)
    device = resolve_device(params.train.device)
    exp = build_experiment(params)
    steps_per_epoch = len(exp.train_batches(0))
    if steps_per_epoch == 0:
        raise SystemExit(f"{method}: train.batch_size={params.train.batch_size} is larger than the "
                         f"{len(exp.train_set)} training samples")
    step = EngineStep(exp.model, params, device, epoch=0, steps_per_epoch=steps_per_epoch)
    batches = [step.prepare(b) for b in train_batches(exp, device, 1 + args.warmup + args.steps)]
    flops, flop_error = count_flops(lambda: step(batches[0]))  # untimed: the counter slows the step down
    _sync(device)
    for b in batches[1:1 + args.warmup]:
        step(b)
    times = step_times(step, batches[1 + args.warmup:], device)
    row = {"method": method, "row": args.row, "device": str(device), "precision": step.precision,
           "params_m": sum(p.numel() for p in exp.model.parameters()) / 1e6,
           **throughput_figures(params.train.batch_size, args.steps, sum(times), flops, matmul_rate),
           "best_step_ms": min(times) * 1e3, "flop_error": flop_error}
    return row


# ------------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    from tireid_core.methods import available_methods

    known = available_methods()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=known, choices=known, metavar="METHOD",
                    help=f"methods to run (default: all registered: {' '.join(known)})")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per method (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before timing (default 3)")
    ap.add_argument("--row", default="full", help="the <method>_rows row whose parameters are used (default full)")
    ap.add_argument("--profile", default="demo", help="parameter profile: demo (params.yaml), tiny, paper")
    ap.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                    help="parameter override, repeatable; applied to the method its key names")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads for the matmul reference and training (default: torch's default, "
                         "as training uses)")
    ap.add_argument("--mm-sizes", type=int, nargs="+", default=[1024, 2048], metavar="N",
                    help="square matmul sizes for the reference rate (default 1024 2048); the best rate is used")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be at least 1 and --warmup at least 0")
    stray = [s for s in args.set if not any(sets_for(m, [s]) for m in args.methods)]
    if stray:
        ap.error(f"--set {stray[0]}: the key must start with one of the methods run ({', '.join(args.methods)})")
    if args.threads:
        torch.set_num_threads(args.threads)

    from tireid_core.params import load_run_params
    from tireid_core.runtime import resolve_device

    first = load_run_params(args.methods[0], row=args.row, profile=args.profile,
                            sets=sets_for(args.methods[0], args.set))
    mm_device = resolve_device(first.train.device)
    load_start = loadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, "
          f"load average (1/5/15 min) {load_start}")
    matmul = {n: matmul_gflops(n, device=mm_device) for n in args.mm_sizes}
    rate = max(matmul.values())
    print(f"fp32 matmul rate on {mm_device}: " + ", ".join(f"{n}x{n} {g:.1f} GFLOP/s" for n, g in matmul.items())
          + f"  ->  reference {rate:.1f} GFLOP/s")

    rows = []
    for method in args.methods:
        t0 = time.perf_counter()
        row = bench_method(method, args, rate)
        rows.append(row)
        note = f", FLOP count failed: {row['flop_error']}" if row["flop_error"] else ""
        print(f"  {method}: {row['params_m']:.2f} M parameters, {row['device']}, {row['precision']}, batch "
              f"{row['batch']}, {args.steps} timed steps after {args.warmup} warm-up "
              f"({time.perf_counter() - t0:.0f} s with set-up){note}", flush=True)

    matmul_end = matmul_gflops(min(args.mm_sizes), device=mm_device)
    load_end = loadavg()
    print()
    print(format_table(rows))
    print()
    print(f"matmul rate {min(args.mm_sizes)}x{min(args.mm_sizes)} after the runs: {matmul_end:.1f} GFLOP/s; "
          f"load average now {load_end}")
    print(FLOP_NOTE)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "loadavg_start": load_start, "loadavg_end": load_end, "profile": args.profile,
            "matmul_gflops": {str(n): g for n, g in matmul.items()}, "matmul_reference_gflops": rate,
            "matmul_gflops_after": matmul_end, "flop_note": FLOP_NOTE, "methods": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
