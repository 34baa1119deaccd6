"""CLI: `python -m tireid_core.data.simpedes --params params.yaml --out data/simpedes [--profile tiny]`.

`--section simpedes_pretrain` writes the separate draw the pretrained stand-ins learn from (tireid_core.pretrain)."""
from __future__ import annotations

import argparse
from pathlib import Path

from tireid_core.data.simpedes.build import GENERATOR_VERSION, generate
from tireid_core.data.simpedes.params import SimPEDESParams


def _read_section(params_file: Path, profile: str, name: str = "simpedes") -> dict:
    """A generator section of the params file, with configs/<profile>.yaml layered on unless profile is demo."""
    from tireid_core.params import ParamsError, load_section  # the project's file reading and profile layering

    section = load_section(name, params_file=params_file, profile=profile)
    if not isinstance(section, dict):
        raise ParamsError(f"{params_file}: the `{name}:` section must be a mapping")
    return dict(section)


def main(argv=None):
    """Generate the dataset from the `simpedes:` params section (see the module docstring for the command)."""
    from tireid_core import cli

    ap = cli.parser("Generate the SimPEDES dataset from the `simpedes:` params section.")
    ap.add_argument("--out", default=None,
                    help="output folder (default: <section>.out_dir, relative to the params file's folder)")
    ap.add_argument("--section", default="simpedes",
                    help="the params section to read: simpedes (the evaluated data) or simpedes_pretrain (the "
                         "separate draw the pretrained stand-ins learn from)")
    return cli.run_main(_generate, ap.parse_args(argv))


def _generate(args) -> int:
    from tireid_core.params import ParamsError, resolve_params_file

    params_file = resolve_params_file(args.params)
    section = _read_section(params_file, args.profile, args.section)
    if args.sets:
        raise ParamsError(f"--set: the generator takes its parameters from the params file's `{args.section}:` section")
    default_out = section.pop("out_dir", None)
    if args.out:
        out = Path(args.out)
    elif default_out:
        out = params_file.resolve().parent / default_out
    else:
        raise ParamsError(f"no output folder: pass --out or set {args.section}.out_dir")
    meta = generate(SimPEDESParams.from_dict(section), out)
    print(f"SimPEDES {GENERATOR_VERSION}: {len(meta['images'])} images of {len(meta['identities'])} ids -> {out}"
          f" (content hash {meta['content_hash'][:16]})")
    return 0
