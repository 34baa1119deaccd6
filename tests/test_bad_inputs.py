"""A catalogue of user mistakes walked through the real command lines: each ends with one `error:` line that names the
key or the file, exit code 2, and no Python traceback."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _cli(*args, cwd=REPO):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def broken_data(tmp_path_factory, tiny_simpedes):
    """Copies of the tiny dataset with one defect each."""
    base = tmp_path_factory.mktemp("broken")
    out = {}
    for name in ("bad_json", "bad_image"):
        root = base / name
        shutil.copytree(tiny_simpedes, root)
        out[name] = root
    (out["bad_json"] / "reid_raw.json").write_text('[{"id": 1, "file_path": ')
    victim = sorted((out["bad_image"] / "imgs").rglob("*.png"))[0]
    victim.write_bytes(b"not a png")
    out["bad_image_file"] = victim
    bad_ckpt = base / "ckpt" / "full" / "checkpoints" / "last.pt"
    bad_ckpt.parent.mkdir(parents=True)
    bad_ckpt.write_bytes(b"\x00" * 10)
    out["ckpt_dir"] = base / "ckpt"
    bad_params = base / "params.yaml"
    bad_params.write_text("baseline: {train: [1\n")
    out["bad_params"] = bad_params
    return out


def _sets(*values):
    return sum((["--set", v] for v in values), [])


def _tiny(stand_ins, method="baseline", root=None):
    return ["--profile", "tiny", *_sets(f"{method}.out_dir={Path('/tmp') / 'tireid_bad_inputs'}", *stand_ins(method))] + (
        ["--set", f"{method}.data.root={root}"] if root else [])


CASES = {
    "unknown method": (["tireid_core.train", "nope"], "unknown method 'nope'"),
    "unknown row": (["tireid_core.train", "ssan", "--row", "nope"], "ssan_rows: no row 'nope'"),
    "key outside the method": (["tireid_core.train", "baseline", "--set", "data.root=/x"],
                               "did you mean baseline.data.root"),
    "unknown key": (["tireid_core.train", "baseline", "--set", "baseline.train.lrr=1"], "baseline.train.lrr: unknown key"),
    "wrong type": (["tireid_core.train", "baseline", "--set", "baseline.train.lr=fast"],
                   "baseline.train.lr: expected a number"),
    "malformed value": (["tireid_core.train", "baseline", "--set", "baseline.train.lr=[1"], "--set baseline.train.lr=[1"),
    "nan lr": (["tireid_core.train", "baseline", "--set", "baseline.train.lr=.nan"], "baseline.train.lr"),
    "bad device": (["tireid_core.train", "baseline", "--set", "baseline.train.device=gpu"], "baseline.train.device"),
    "unknown profile": (["tireid_core.train", "baseline", "--profile", "nope"], "profile 'nope'"),
    "missing params file": (["tireid_core.train", "baseline", "--params", "/nonexistent/params.yaml"],
                            "/nonexistent/params.yaml: parameter file not found"),
    "unknown dataset": (["tireid_core.train", "baseline", "--row", "full", "--set", "baseline.data.dataset=cuhk"],
                        "unknown text-image dataset 'cuhk'"),
    "missing data root": (["tireid_core.train", "baseline", "--row", "full", "--set",
                           "baseline.data.root=/nonexistent"], "annotation file not found"),
    "unknown notebook": (["tireid_core.run", "nope"], "nope.ipynb: no such notebook"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_parameters(case, capsys):
    """The entry points' own main(argv), in this process (the subprocess cases below cover interpreter start-up)."""
    import importlib

    args, expected = CASES[case]
    code = importlib.import_module(args[0]).main(args[1:])
    _check(subprocess.CompletedProcess(args, code, "", capsys.readouterr().err), expected)


def _check(proc, expected):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("error: "))  # the message may list files
    assert expected in "\n".join(lines[start:]), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_bad_files(broken_data, stand_in_sets):
    _check(_cli("tireid_core.train", "baseline", "--row", "full", *_tiny(stand_in_sets, root=broken_data["bad_json"])),
           "reid_raw.json")
    _check(_cli("tireid_core.train", "baseline", "--row", "full", *_tiny(stand_in_sets, root=broken_data["bad_image"])),
           broken_data["bad_image_file"].name)
    _check(_cli("tireid_core.train", "baseline", "--params", str(broken_data["bad_params"])),
           "params.yaml: not valid YAML at line 2")
    _check(_cli("tireid_core.train", "baseline", "--row", "full", "--resume", "--profile", "tiny", "--set",
                f"baseline.out_dir={broken_data['ckpt_dir']}", "--set", f"baseline.data.root={broken_data['bad_image'].parent / 'x'}"),
           "annotation file not found")  # data is checked before the checkpoint is read


@pytest.mark.slow
def test_corrupt_checkpoint_on_resume(broken_data, tiny_simpedes, stand_in_sets):
    _check(_cli("tireid_core.train", "baseline", "--row", "full", "--resume", "--profile", "tiny",
                *_sets(f"baseline.out_dir={broken_data['ckpt_dir']}", f"baseline.data.root={tiny_simpedes}",
                       *stand_in_sets("baseline"))),
           "last.pt: not a readable checkpoint")


def test_generator_names_the_bad_key(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"simpedes": {"out_dir": "x", "cameras": 9}}))
    _check(_cli("tireid_core.data.simpedes", "--params", str(params)), "simpedes.cameras must be an integer in 2..6")


def test_notebook_failure_names_the_notebook_and_cell(tmp_path):
    _check(_cli("tireid_core.run", "ssan", "--profile", "tiny", "--out", str(tmp_path), "--set",
                f"ssan.out_dir={tmp_path / 'none'}"), "notebooks/ssan.ipynb failed in cell")


def test_resume_without_a_checkpoint_says_it_starts_from_scratch(tmp_path, capsys):
    from tireid_core.train import main

    code = main(["baseline", "--row", "full", "--profile", "tiny", "--resume", "--set",
                 f"baseline.out_dir={tmp_path}", "--set", "baseline.data.root=/nonexistent"])
    err = capsys.readouterr().err
    assert code == 2 and "--resume: no " in err and "starting from scratch" in err


@pytest.mark.slow
def test_an_error_inside_training_is_the_last_thing_printed(tiny_simpedes, tmp_path, stand_in_sets):
    """No library shutdown noise (`ImportError: sys.meta_path is None`) after the real message."""
    proc = _cli("tireid_core.train", "baseline", "--row", "full", "--profile", "tiny",
                *_sets(f"baseline.out_dir={tmp_path}", f"baseline.data.root={tiny_simpedes}", *stand_in_sets("baseline"),
                       "baseline.train.lr=1e30", "baseline.train.warmup_epochs=0"))
    _check(proc, "training diverged at epoch 1")
    assert "sys.meta_path" not in proc.stderr
