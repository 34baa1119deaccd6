"""CLI: `python -m tireid_core.data.simpedes --params params.yaml --out data/simpedes [--profile tiny]`."""
from __future__ import annotations

import argparse
from pathlib import Path

from tireid_core.data.simpedes.build import GENERATOR_VERSION, generate
from tireid_core.data.simpedes.params import SimPEDESParams


def _read_section(params_file: Path, profile: str) -> dict:
    """The `simpedes:` section of the params file, with configs/<profile>.yaml layered on unless profile is demo."""
    if profile == "demo":
        import yaml  # only the CLI reads YAML

        with open(params_file, encoding="utf-8") as f:
            section = (yaml.safe_load(f) or {}).get("simpedes")
    else:
        from tireid_core.params import load_section  # the project's profile layering

        section = load_section("simpedes", params_file=params_file, profile=profile)
    if not isinstance(section, dict):
        raise SystemExit(f"{params_file}: no `simpedes:` section")
    return dict(section)


def main(argv=None):
    """Generate the dataset from the `simpedes:` params section (see the module docstring for the command)."""
    ap = argparse.ArgumentParser(description="Generate the SimPEDES dataset from the `simpedes:` params section.")
    ap.add_argument("--params", default="params.yaml", help="params YAML with a `simpedes:` section")
    ap.add_argument("--out", default=None,
                    help="output folder (default: simpedes.out_dir, relative to the params file's folder)")
    ap.add_argument("--profile", default="demo", help="configs/<profile>.yaml overrides (default: none)")
    args = ap.parse_args(argv)
    params_file = Path(args.params)
    section = _read_section(params_file, args.profile)
    default_out = section.pop("out_dir", None)
    if args.out:
        out = Path(args.out)
    elif default_out:
        out = params_file.resolve().parent / default_out
    else:
        raise SystemExit("no output folder: pass --out or set simpedes.out_dir")
    meta = generate(SimPEDESParams.from_dict(section), out)
    print(f"SimPEDES {GENERATOR_VERSION}: {len(meta['images'])} images of {len(meta['identities'])} ids -> {out}"
          f" (content hash {meta['content_hash'][:16]})")
