"""Execute a parameterised notebook with papermill and export it to HTML (what DVC stages call).

    python -m tireid_core.run baseline                 # notebooks/baseline.ipynb, demo profile
    python -m tireid_core.run baseline --profile paper --set baseline.data.root=/data/CUHK-PEDES
    python -m tireid_core.run simpedes_tour --profile tiny

The notebook's `parameters` cell receives `params_file`, `profile` and `sets`; the executed copy
and its HTML export go to `<out>/<notebook>.ipynb|.html` (default `runs/<profile>/notebooks`).
Both are written under temporary names and renamed, so a failed run leaves no half-written output.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def execute_notebook(
    name: str,
    profile: str = "demo",
    sets: list[str] | None = None,
    params_file: str | Path = "params.yaml",
    out_dir: str | Path | None = None,
    notebooks_dir: str | Path | None = None,
    html: bool = True,
) -> Path:
    import nbformat
    import papermill as pm
    from nbconvert import HTMLExporter

    notebooks_dir = Path(notebooks_dir) if notebooks_dir else REPO / "notebooks"
    source = notebooks_dir / f"{name}.ipynb"
    if not source.exists():
        known = sorted(p.stem for p in notebooks_dir.glob("*.ipynb"))
        raise FileNotFoundError(f"{source}: no such notebook (known: {', '.join(known)})")
    out_dir = Path(out_dir) if out_dir else REPO / "runs" / profile / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.ipynb"
    tmp = out_dir / f".{name}.running.ipynb"
    parameters = {"params_file": str(Path(params_file).resolve()), "profile": profile, "sets": list(sets or [])}
    try:
        pm.execute_notebook(str(source), str(tmp), parameters=parameters, cwd=str(REPO), kernel_name="python3",
                            progress_bar=False)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if html:
        body, _ = HTMLExporter().from_notebook_node(nbformat.read(target, as_version=4))
        from tireid_core.io import atomic_write_text

        atomic_write_text(out_dir / f"{name}.html", body)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebook", help="notebook name in notebooks/, without .ipynb")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", default=None, help="folder for the executed notebook (default runs/<profile>/notebooks)")
    ap.add_argument("--no-html", action="store_true")
    args = ap.parse_args(argv)
    target = execute_notebook(args.notebook, args.profile, args.sets, args.params, args.out, html=not args.no_html)
    print(f"executed {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
