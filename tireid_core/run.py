"""Execute a parameterised notebook with papermill and export it to HTML (what DVC stages call).

    python -m tireid_core.run baseline                 # notebooks/baseline.ipynb, demo profile
    python -m tireid_core.run baseline --profile paper --set baseline.data.root=/data/CUHK-PEDES
    python -m tireid_core.run simpedes_tour --profile tiny

The notebook's `parameters` cell receives `params_file`, `profile`, `sets` and `save_outputs=True` (figures and
analysis files are written only then, so a notebook opened in JupyterLab never overwrites pipeline outputs); the
executed copy
and its HTML export go to `<out>/<notebook>.ipynb|.html` (default `runs/<profile>/notebooks`).
The notebook runs in memory and both files are written atomically, so a failed run leaves no half-written output.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tireid_core import cli
from tireid_core.io import atomic_write_text

REPO = Path(__file__).resolve().parent.parent


class NotebookError(ValueError):
    """A notebook stopped with an error; the message names the notebook, the cell and the error."""


def execute_notebook(
    name: str,
    profile: str = "demo",
    sets: list[str] | None = None,
    params_file: str | Path | None = None,
    out_dir: str | Path | None = None,
    notebooks_dir: str | Path | None = None,
    html: bool = True,
) -> Path:
    import nbformat
    import papermill as pm
    from nbconvert import HTMLExporter
    from papermill.exceptions import PapermillExecutionError

    notebooks_dir = Path(notebooks_dir) if notebooks_dir else REPO / "notebooks"
    source = notebooks_dir / f"{name}.ipynb"
    if not source.exists():
        known = sorted(p.stem for p in notebooks_dir.glob("*.ipynb"))
        raise FileNotFoundError(f"{source}: no such notebook (known: {', '.join(known)})")
    out_dir = Path(out_dir) if out_dir else REPO / "runs" / profile / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.ipynb"
    params_file = Path(params_file).resolve() if params_file else REPO / "params.yaml"
    parameters = {"params_file": str(params_file), "profile": profile, "sets": list(sets or []), "save_outputs": True}
    # Executed in memory and written once at the end: a failed run leaves the previous output intact.
    try:
        nb = pm.execute_notebook(str(source), None, parameters=parameters, cwd=str(REPO), kernel_name="python3",
                                 progress_bar=False)
    except PapermillExecutionError as err:  # the kernel's own traceback was printed above; this names the cause
        raise NotebookError(f"notebooks/{name}.ipynb failed in cell {err.exec_count}: {err.ename}: {err.evalue}") from None
    atomic_write_text(target, nbformat.writes(nb))
    if html:
        body, _ = HTMLExporter().from_notebook_node(nb)
        atomic_write_text(out_dir / f"{name}.html", body)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = cli.parser(__doc__)
    ap.add_argument("notebook", help="notebook name in notebooks/, without .ipynb")
    ap.add_argument("--out", default=None, help="folder for the executed notebook (default runs/<profile>/notebooks)")
    ap.add_argument("--no-html", action="store_true")

    def _main(args) -> int:
        target = execute_notebook(args.notebook, args.profile, args.sets, args.params, args.out, html=not args.no_html)
        print(f"executed {target}")
        return 0

    return cli.run_main(_main, ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
