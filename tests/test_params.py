"""Parameter validation: every wrong key or value names itself."""
from pathlib import Path

import pytest
import yaml

from tireid_core.methods import available_methods, get_method
from tireid_core.params import (ParamsError, deep_merge, from_dict, load_run_params, method_rows,
                                parse_set)

REPO = Path(__file__).resolve().parent.parent


def test_repo_params_and_profiles_are_valid():
    for section in available_methods():
        for profile in ("demo", "tiny", "paper"):
            for row in method_rows(section, REPO / "params.yaml", profile=profile):
                p = load_run_params(section, params_file=REPO / "params.yaml", row=row, profile=profile)
                assert Path(p.out_dir).is_absolute() and Path(p.data.root).is_absolute()
                assert Path(p.out_dir).name == row and p.method == section and p.row == row
    paper = load_run_params("baseline", params_file=REPO / "params.yaml", profile="paper")
    assert paper.model.image_backbone == "resnet50" and paper.model.text_encoder == "bert"
    assert (paper.data.height, paper.data.width) == (384, 128)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"train": {"lrr": 0.1}}, r"baseline\.train\.lrr: unknown key"),
        ({"train": {"lr": "fast"}}, r"baseline\.train\.lr: expected a number"),
        ({"train": {"lr": -1}}, r"baseline\.train\.lr: must be a positive finite number"),
        ({"train": {"epochs": 0}}, r"baseline\.train\.epochs: must be positive"),
        ({"model": {"text_encoder": "gru"}}, r"baseline\.model\.text_encoder: 'gru' is not one of"),
        ({"train": {"selection_split": "dev"}}, r"baseline\.train\.selection_split"),
        ({"data": {"hflip": "yes"}}, r"baseline\.data\.hflip: expected bool"),
        ({"model": {"backbone_widths": [8, "x"]}}, r"baseline\.model\.backbone_widths"),
        ({"train": {"batch_size": 1}}, r"baseline\.train\.batch_size"),
        ({"model": {"last_stride": 3}}, r"baseline\.model\.last_stride"),
        ({"eval": []}, r"baseline\.eval: expected a mapping"),
    ],
)
def test_wrong_values_name_their_key(override, message):
    base = yaml.safe_load((REPO / "params.yaml").read_text())["baseline"]
    with pytest.raises(ParamsError, match=message):
        from_dict(get_method("baseline").params, deep_merge(base, override), "baseline")


def test_ssan_switches_are_validated():
    with pytest.raises(ParamsError, match=r"ssan\.ssan\.relation: the non-local module needs part_features"):
        load_run_params("ssan", params_file=REPO / "params.yaml",
                        sets=["ssan.ssan.part_features=false", "ssan.ssan.relation=true"])
    with pytest.raises(ParamsError, match=r"ssan\.ssan\.weak_neg"):
        load_run_params("ssan", params_file=REPO / "params.yaml", sets=["ssan.ssan.weak_neg=hard"])
    paper = load_run_params("ssan", params_file=REPO / "params.yaml", profile="paper")
    assert paper.model.text_hidden == 2048 and paper.data.normalize == "half" and paper.ssan.alpha2_start_epoch == 5


def test_set_overrides_and_missing_files(tmp_path):
    assert parse_set(["a.b.c=3", "a.d=[1, 2]", "e=x"]) == {"a": {"b": {"c": 3}, "d": [1, 2]}, "e": "x"}
    with pytest.raises(ParamsError, match="KEY=VALUE"):
        parse_set(["a.b"])
    p = load_run_params("baseline", params_file=REPO / "params.yaml", sets=["baseline.train.epochs=3"])
    assert p.train.epochs == 3
    with pytest.raises(ParamsError, match="profile 'nope'"):
        load_run_params("baseline", params_file=REPO / "params.yaml", profile="nope")
    with pytest.raises(ParamsError, match="unknown method 'simpedes'"):
        load_run_params("simpedes", params_file=REPO / "params.yaml")
    no_section = tmp_path / "only_baseline.yaml"
    no_section.write_text("baseline: {}\n")
    with pytest.raises(ParamsError, match="section 'ssan' missing"):
        load_run_params("ssan", params_file=no_section)
    bad = tmp_path / "params.yaml"
    bad.write_text("baseline: [1, 2\n")
    with pytest.raises(ParamsError, match="params.yaml: not valid YAML"):
        load_run_params("baseline", params_file=bad)
    with pytest.raises(ParamsError, match="not found"):
        load_run_params("baseline", params_file=tmp_path / "missing.yaml")


def test_rows_apply_their_overrides_and_set_comes_last():
    p = load_run_params("ssan", params_file=REPO / "params.yaml", row="global_only")
    assert (p.ssan.part_features, p.ssan.relation, p.ssan.weak_term) == (False, False, False)
    p = load_run_params("ssan", params_file=REPO / "params.yaml", row="global_only", sets=["ssan.ssan.weak_term=true"])
    assert p.ssan.weak_term
    with pytest.raises(ParamsError, match="no row 'nope'"):
        load_run_params("ssan", params_file=REPO / "params.yaml", row="nope")


@pytest.mark.parametrize("item, message", [
    ("data.root=/nonexistent", r"--set data.root=/nonexistent: 'data' is no section of this run; keys must start "
                               r"with 'baseline' \(did you mean baseline.data.root\?\)"),
    ("ssan.train.lr=0.1", r"'ssan' is another section of this run"),
    ("baseline.train.lr=[1, 2", r"--set baseline.train.lr=\[1, 2: the value '\[1, 2' is not valid YAML"),
    ("baseline.train.lr=.nan", r"baseline.train.lr: must be a positive finite number"),
    ("baseline.train.weight_decay=-1", r"baseline.train.weight_decay: must be >= 0"),
    ("baseline.train.device=gpu", r"baseline.train.device: expected auto, cpu, cuda"),
])
def test_set_mistakes_are_named(item, message):
    with pytest.raises(ParamsError, match=message):
        load_run_params("baseline", params_file=REPO / "params.yaml", sets=[item])


def test_set_accepts_plain_scientific_notation():
    p = load_run_params("baseline", params_file=REPO / "params.yaml", sets=["baseline.train.lr=1e-3"])
    assert p.train.lr == 0.001


def test_unquoted_off_is_explained():
    """YAML 1.1 reads `off` as False: the error says to quote it instead of only listing the choices."""
    with pytest.raises(ParamsError, match="in quotes"):
        load_run_params("nafs", params_file=REPO / "params.yaml", sets=["nafs.nafs.rvn_mode=off"])
