"""Train one row of a method from the command line: what every DVC training stage runs.

    python -m tireid_core.train ssan --row full                # the full model, demo profile (params.yaml)
    python -m tireid_core.train ssan --row global_only         # an ablation row (params.yaml: ssan_rows)
    python -m tireid_core.train ssan --row full --profile paper --set ssan.data.root=/data/CUHK-PEDES
    torchrun --nproc_per_node 4 -m tireid_core.train ssan --row full --profile paper ...   # DDP

A row trains into ``<out_dir>/<row>``; without --row the section trains as it is into ``<out_dir>``.
"""
from __future__ import annotations

import json
import sys

from tireid_core import cli


def _main(args) -> int:
    from tireid_core.engine import fit
    from tireid_core.experiment import build_experiment
    from tireid_core.params import load_run_params

    params = load_run_params(args.method, params_file=args.params, row=args.row, profile=args.profile,
                             sets=args.sets)
    last = f"{params.out_dir}/checkpoints/last.pt"
    if args.resume:
        from pathlib import Path

        print(f"resuming from {last}" if Path(last).exists() else f"--resume: no {last}; starting from scratch",
              file=sys.stderr)
    result = fit(build_experiment(params), resume=args.resume)
    if result is not None:
        print(json.dumps(result["summary"], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = cli.parser(__doc__)
    ap.add_argument("method", help="a method: its params.yaml section, e.g. ssan")
    ap.add_argument("--row", default=None, help="a row of <method>_rows in params.yaml, e.g. full")
    ap.add_argument("--resume", action="store_true", help="continue from <run folder>/checkpoints/last.pt")
    return cli.run_main(_main, ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
