"""Train one method from the command line (the notebooks call the same functions).

    python -m tireid_core.train baseline                      # demo profile from params.yaml
    python -m tireid_core.train baseline --profile paper --set baseline.data.root=/data/CUHK-PEDES
    torchrun --nproc_per_node 4 -m tireid_core.train baseline --profile paper ...   # DDP
"""
from __future__ import annotations

import argparse
import json
import sys

from tireid_core.engine import build_experiment, fit
from tireid_core.models import model_builder
from tireid_core.params import ParamsError, load_run_params


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("method", help="method section of params.yaml, e.g. baseline")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", default="demo", help="demo (params.yaml as is), tiny, paper, ... (configs/<profile>.yaml)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="dotted override, e.g. baseline.train.lr=0.01")
    ap.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoints/last.pt")
    args = ap.parse_args(argv)
    try:
        params = load_run_params(args.method, params_file=args.params, profile=args.profile, sets=args.sets)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    exp = build_experiment(params, model_builder(args.method))
    result = fit(exp, resume=args.resume)
    if result is not None:
        print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
