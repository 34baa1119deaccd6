"""Shared fixtures: a tiny SimPEDES dataset (generated once per session) and tiny run parameters."""
from pathlib import Path

import pytest
import yaml

from tireid_core.params import load_run_params

REPO = Path(__file__).resolve().parent.parent


def tiny_simpedes_params():
    from tireid_core.data.simpedes import SimPEDESParams

    base = yaml.safe_load((REPO / "params.yaml").read_text())["simpedes"]
    base.update(yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())["simpedes"])
    base.pop("out_dir")
    return SimPEDESParams.from_dict(base)


@pytest.fixture(scope="session")
def tiny_simpedes(tmp_path_factory) -> Path:
    from tireid_core.data.simpedes import generate

    out = tmp_path_factory.mktemp("simpedes") / "simpedes"
    generate(tiny_simpedes_params(), out)
    return out


@pytest.fixture
def tiny_params(tmp_path, tiny_simpedes):
    def make(*sets: str, section: str = "baseline"):
        return load_run_params(
            section,
            params_file=REPO / "params.yaml",
            profile="tiny",
            sets=[f"{section}.out_dir={tmp_path / 'run'}", f"{section}.data.root={tiny_simpedes}", *sets],
        )

    return make
