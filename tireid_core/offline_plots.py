"""Make `dvc plots show` work offline.

DVC's page loads Vega, Vega-Lite and Vega-Embed from a CDN, so without internet it is blank. This writes an HTML
template with those libraries inlined (the bundle that vl-convert ships) and points the repository's local DVC
config at it (`plots.html_template`, in the untracked `.dvc/config.local`). `make install` runs it:

    python -m tireid_core.offline_plots
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from tireid_core.io import atomic_write_text

TEMPLATE = Path("tmp") / "offline_plots.html"  # under .dvc/, which DVC's own .gitignore keeps out of git

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    <title>DVC plots (offline)</title>
    <script>{bundle}</script>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def template_html() -> str:
    """The page with the libraries inlined. DVC replaces {plot_divs}; the template has no {scripts} placeholder, so
    DVC's CDN tags are left out."""
    import vl_convert

    bundle = vl_convert.javascript_bundle()
    if "{plot_divs}" in bundle:
        raise RuntimeError("the Vega bundle contains DVC's placeholder text; cannot build the template")
    return PAGE.replace("{bundle}", bundle)


def install(repo: Path) -> Path:
    dvc_dir = repo / ".dvc"
    if not dvc_dir.is_dir():
        raise FileNotFoundError(f"{dvc_dir}: not a DVC repository")
    target = dvc_dir / TEMPLATE
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, template_html())
    subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "plots.html_template", str(TEMPLATE)],
                   cwd=repo, check=True, capture_output=True)
    return target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=".", help="the repository root (default: the working directory)")
    args = ap.parse_args(argv)
    print(f"offline template for dvc plots show: {install(Path(args.repo).resolve())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
