"""JupyterLab as a student uses it: a real server, a real (headless) Chromium, every committed notebook opened and run
with Run → Run All Cells on its default parameters, in the tiny pipeline's copy of the project. No cell may fail, the
figures must render, and the session must leave git and DVC as it found them.

Needs Chromium (the system package; `.ci/run` installs it when it can) and Playwright (a dev dependency); skips with the
reason otherwise.
"""
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import NB_EXTRA_KEYS

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (a dev dependency: make install)")
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip(f"no Chromium on the PATH (tried {', '.join(BROWSERS)}): install the system package, e.g. "
                "`apt-get install chromium`")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server on a free loopback port, rooted at `root`."""

    def __init__(self, root: Path, env: dict):
        self.port, self.token = _free_port(), secrets.token_hex(12)
        self.log = open(root.parent / "jupyterlab.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
             f"--port={self.port}", f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}"],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(240):
            try:
                self.api("status")
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.5)
        self.stop()
        raise AssertionError(f"JupyterLab did not start; see {self.log.name}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(self.url(f"api/{path}"), method=method)
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shut_down_kernels(self) -> None:
        for kernel in self.api("kernels"):
            self.api(f"kernels/{kernel['id']}", method="DELETE")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _lab_settings(folder: Path) -> dict:
    """A private settings and workspace folder: every cell rendered (no windowing), no news prompt, nothing restored
    from another session, and the user's own JupyterLab settings untouched."""
    for plugin, values in (("notebook-extension/tracker", {"windowingMode": "none"}),
                           ("apputils-extension/notification", {"fetchNews": "false"})):
        path = folder / "settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return {"JUPYTERLAB_SETTINGS_DIR": str(folder / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(folder / "workspaces")}


def _run_all(page, lab: Lab, name: str, timeout: float = 240.0) -> dict:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(lab.url(f"lab/tree/notebooks/{name}.ipynb") + "&reset")
    page.wait_for_selector(".jp-NotebookPanel .jp-CodeCell", state="attached", timeout=90_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", state="attached", timeout=90_000)
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")  # a fresh workspace may ask once: take the default
    try:
        dialog.locator(".jp-mod-accept").click(timeout=5_000)
    except PlaywrightTimeout:
        pass
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    deadline = time.time() + timeout
    while time.time() < deadline:
        prompts = page.eval_on_selector_all(".jp-CodeCell .jp-InputPrompt", "els => els.map(e => e.textContent.trim())")
        errors = page.eval_on_selector_all(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']",
                                           "els => els.map(e => e.textContent.slice(0, 2000))")
        if errors or (prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts)):
            break
        time.sleep(1)
    images = page.eval_on_selector_all(".jp-OutputArea-output img", "els => els.map(e => e.naturalWidth)")
    return {"prompts": prompts, "errors": errors, "images": images}


@pytest.mark.slow
def test_every_notebook_runs_in_jupyterlab_in_a_real_browser(tiny_pipeline, tmp_path):
    from playwright.sync_api import sync_playwright

    executable = _browser()
    work = tiny_pipeline.work
    subprocess.run([sys.executable, "-m", "nbstripout", "--install"], cwd=work, check=True)  # what `make install` does
    tiny_pipeline.git("config", "filter.nbstripout.extrakeys", NB_EXTRA_KEYS)
    env = {**tiny_pipeline.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           **_lab_settings(tmp_path)}
    lab = Lab(work, env)
    results = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            for name in NOTEBOOKS:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                results[name] = _run_all(page, lab, name)
                page.keyboard.press("Control+s")  # save, outputs and all, as a user would
                page.wait_for_timeout(1500)
                page.close()
                lab.shut_down_kernels()
            browser.close()
    finally:
        lab.stop()
    for name, result in results.items():
        assert not result["errors"], f"{name}: {result['errors'][0]}"
        assert result["prompts"] and all(re.fullmatch(r"\[\d+\]:", p) for p in result["prompts"]), \
            f"{name}: not every cell ran: {result['prompts']}"
        assert result["images"] and all(w > 0 for w in result["images"]), f"{name}: a figure did not render"
    # the saved notebooks hold outputs, but git sees the committed content (the filter: `git diff` is empty; `git
    # status` may still list a saved notebook, since it trusts a changed file size) and nothing else changed
    assert tiny_pipeline.git("diff", "--stat") == ""
    listed = {line[3:] for line in tiny_pipeline.git("status", "--porcelain").splitlines()}
    assert listed <= {f"notebooks/{name}.ipynb" for name in NOTEBOOKS}, listed
    changed = json.loads(tiny_pipeline.dvc("status", "--json"))
    assert all(entry == [{"changed deps": {f"notebooks/{stage}.ipynb": "modified"}}]
               for stage, entry in changed.items()), changed
    subprocess.run([sys.executable, "-m", "nbstripout", "--extra-keys", NB_EXTRA_KEYS,
                    *sorted(map(str, (work / "notebooks").glob("*.ipynb")))], cwd=work, check=True)  # make strip-notebooks
    assert json.loads(tiny_pipeline.dvc("status", "--json")) == {}
    assert tiny_pipeline.git("status", "--porcelain") == ""
