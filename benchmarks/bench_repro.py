"""Time `dvc repro` (demo profile) from a fresh clone and sample its peak memory.

    python benchmarks/bench_repro.py [--keep]

Clones the current commit into a temporary folder, runs `dvc repro` there with this
interpreter's environment, and prints wall time, the peak of the whole process tree's resident
memory (sampled every 0.2 s with psutil), the time of each stage and of each paper (its training, ablation rows
and analysis), a second `dvc repro`'s time (must be a no-op), and the metrics the run produced. Targets: the whole
demo collection within 15 minutes on 2 cores (the foundation's share — data + baseline — under 5 minutes; each
paper's share well under a third), peak memory under 4 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


def run_with_peak_memory(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float, str, list]:
    """Run cmd; return wall time, peak RSS of its process tree (GiB), its output and (stage, seconds) per DVC stage.

    A stage's time runs from its "Running stage" line to the next one (the last one to the end of the command).
    """
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    t.start()
    lines, starts = [], []
    for line in proc.stdout:
        lines.append(line)
        m = re.match(r"Running stage '([^']+)'", line.strip())
        if m:
            starts.append((m.group(1), time.perf_counter()))
    proc.wait()
    end = time.perf_counter()
    done.set()
    t.join()
    out = "".join(lines)
    if proc.returncode != 0:
        print(out[-5000:])
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    stages = [(name, (starts[i + 1][1] if i + 1 < len(starts) else end) - t0) for i, (name, t0) in enumerate(starts)]
    return end - start, peak / 2**30, out, stages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tireid-repro-"))
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    dvc = [sys.executable, "-m", "dvc"]
    first, peak, _, stages = run_with_peak_memory([*dvc, "repro"], clone, env)
    second, _, out2, _ = run_with_peak_memory([*dvc, "repro"], clone, env)
    runs = sorted(p for p in (clone / "runs" / "demo").rglob("metrics.json") if "dvclive" not in p.parts)
    print(f"cores: {os.cpu_count()}")
    print(f"dvc repro (fresh clone, every stage): {first:.1f} s  (collection target < 900 s; ratio {first / 900:.2f})")
    print(f"peak memory of the process tree: {peak:.2f} GiB  (target < 4 GB; ratio {peak * 2**30 / 4e9:.2f})")
    print(f"second dvc repro: {second:.1f} s; no-op: {'didn' in out2 or 'up to date' in out2}")
    print("time per stage, and per group (a paper with its ablation rows and analysis):")
    groups: dict[str, float] = {}
    for name, seconds in stages:
        print(f"  {name:36s} {seconds:7.1f} s")
        group = name.split("@")[0].removeprefix("train_").removesuffix("_analysis")
        groups[group] = groups.get(group, 0.0) + seconds
    for group, seconds in groups.items():
        print(f"  {group:36s} {seconds:7.1f} s  ({seconds / first:.0%} of the collection, {seconds / 900:.0%} of 900 s)")
    for path in runs:
        m = json.loads(path.read_text())
        name = path.parent.relative_to(clone / "runs" / "demo")
        print(f"{str(name):28s} test (best on val, epoch {m['best']['epoch'] + 1}): {m['best']['test']}")
    if args.keep:
        print(f"kept {clone}")
    else:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
