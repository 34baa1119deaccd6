"""The command-line options every entry point shares, and the one way they report a user error.

A user error (a wrong parameter, a missing or malformed file) prints one ``error:`` line naming the key or file and
exits 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable

from tireid_core.data.records import DatasetError
from tireid_core.params import ParamsError

USER_ERRORS = (ParamsError, DatasetError, FileNotFoundError, ValueError)


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser with --params, --profile, --set and --debug."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=None, help="parameter file (default: params.yaml of the repository)")
    ap.add_argument("--profile", default="demo",
                    help="demo (params.yaml as is), tiny, paper, ... (configs/<profile>.yaml)")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="dotted override inside the method's section, e.g. baseline.train.lr=0.01 (repeatable)")
    ap.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    return ap


def run_main(main: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Call `main(args)`; a user error becomes one clear line on stderr (the last thing printed) and exit code 2."""
    try:
        return main(args)
    except USER_ERRORS as err:
        if args.debug:
            traceback.print_exc()
        else:
            print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
