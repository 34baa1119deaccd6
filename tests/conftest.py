"""Shared fixtures: a tiny SimPEDES dataset (generated once per session) and tiny run parameters."""
from pathlib import Path

import os
import shutil
import subprocess
import sys

import huggingface_hub.constants
import pytest
import torch
import yaml

from tireid_core.params import deep_merge, load_run_params

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


@pytest.fixture(scope="session")
def tiny_stand_ins(tmp_path_factory, tiny_simpedes) -> dict[str, Path]:
    """The tiny profile's pretrained stand-ins (image backbone file, BERT folder, CLIP folder), made once per session
    from a tiny separate draw, exactly as the pipeline's pretrain stages make them."""
    from tireid_core.data.simpedes import SimPEDESParams, generate
    from tireid_core.params import load_section
    from tireid_core.pretrain import load_pretrain_params, pretrain_clip, pretrain_image, pretrain_text

    root = tmp_path_factory.mktemp("pretrain")
    section = dict(load_section("simpedes_pretrain", REPO / "params.yaml", profile="tiny"))
    section.pop("out_dir")
    generate(SimPEDESParams.from_dict(section), root / "draw")
    params, _ = load_pretrain_params(REPO / "params.yaml", profile="tiny")
    params.data, params.exclude = str(root / "draw"), str(tiny_simpedes)
    params.image.out, params.text.out = str(root / "resnet_small"), str(root / "bert_small")
    params.clip.out = str(root / "clip_small")
    pretrain_image(params, root)
    pretrain_text(params, root)
    pretrain_clip(params, root)
    return {"image": root / "resnet_small" / "backbone.pth", "text": root / "bert_small", "clip": root / "clip_small",
            "draw": root / "draw"}


def stand_in_overrides(section: str, stand_ins: dict[str, Path], profile: str = "tiny") -> list[str]:
    """`--set` values that point a method section at `stand_ins` wherever its `profile` parameters load a pipeline
    stand-in (model.pretrained: the image backbone file; model.text_model: the BERT or CLIP folder)."""
    from tireid_core.pretrain import load_pretrain_params

    pretrain, _ = load_pretrain_params(REPO / "params.yaml", profile=profile)
    params = load_run_params(section, REPO / "params.yaml", profile=profile)
    files = {str(REPO / pretrain.image.out / "backbone.pth"): stand_ins["image"],
             str(REPO / pretrain.text.out): stand_ins["text"], str(REPO / pretrain.clip.out): stand_ins["clip"]}
    return [f"{section}.model.{key}={files[value]}" for key in ("pretrained", "text_model")
            if isinstance(value := getattr(params.model, key), str) and value in files]


@pytest.fixture(scope="session")
def stand_in_sets(tiny_stand_ins):
    """`--set` values pointing a method's tiny profile at the session's stand-ins: a clean checkout has no
    data/tiny/pretrained (the pipeline's tiny run makes it), so tests never read that folder."""
    def sets(section: str) -> list[str]:
        return stand_in_overrides(section, tiny_stand_ins)

    return sets


@pytest.fixture(scope="session")
def read_sets(tmp_path_factory, tiny_simpedes, stand_in_sets):
    """`--set` values pointing a method that reads other methods' finished runs (Method.reads: LCR²S's student reads
    its teacher) at tiny runs of them: their full row, one epoch, trained once per session on first use."""
    from tireid_core.engine import fit
    from tireid_core.experiment import build_experiment
    from tireid_core.methods import get_method

    folders = {}

    def sets(method: str) -> list[str]:
        for name in get_method(method).reads:
            if name not in folders:
                folder = tmp_path_factory.mktemp(name)
                params = load_run_params(name, REPO / "params.yaml", row="full", profile="tiny", sets=[
                    f"{name}.out_dir={folder}", f"{name}.data.root={tiny_simpedes}", *stand_in_sets(name),
                    f"{name}.train.epochs=1"])
                fit(build_experiment(params))
                folders[name] = folder
        return [f"{name}.out_dir={folders[name]}" for name in get_method(method).reads]

    return sets


@pytest.fixture
def tiny_params(tmp_path, tiny_simpedes, stand_in_sets, read_sets):
    def make(*sets: str, section: str = "baseline", row: str | None = None):
        return load_run_params(
            section,
            params_file=REPO / "params.yaml",
            row=row,
            profile="tiny",
            sets=[f"{section}.out_dir={tmp_path / 'run'}", f"{section}.data.root={tiny_simpedes}",
                  *stand_in_sets(section), *read_sets(section), *sets],
        )

    return make


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1; huggingface_hub reads it at import, so patch its constant too."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


WORDS = "a man woman person wearing black white red blue shirt pants shoes bag hair short long with and in the has".split()


@pytest.fixture
def tiny_bert_dir(tmp_path, offline):
    """A 2-layer random BERT and a WordPiece tokenizer saved like any Hugging Face model folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", "."] + WORDS + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    config = BertConfig(
        vocab_size=len(tokens),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model_dir = tmp_path / "tiny-bert"
    BertModel(config).save_pretrained(model_dir)
    # transformers 5 takes the vocabulary as a mapping (a vocab_file path silently gives [UNK] for everything)
    BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True).save_pretrained(model_dir)
    return model_dir


@pytest.fixture
def tiny_clip_dir(tmp_path, offline):
    """A random 1-layer CLIP (16-wide towers, 4-pixel patches, an 8x8 position table) and a BPE tokenizer learnt from
    a few captions, saved like any Hugging Face CLIP folder."""
    from transformers import CLIPConfig, CLIPModel

    from tireid_core.pretrain import build_clip_tokenizer

    captions = [" ".join(WORDS), "a man in a red shirt, black pants and white shoes.", "a woman with long hair; bag."]
    tokenizer = build_clip_tokenizer(captions * 3, vocab_size=400, max_positions=32)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 32, "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 4},
        projection_dim=16)
    torch.manual_seed(0)
    folder = tmp_path / "tiny-clip"
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# What `make install` adds to nbstripout's git filter (NB_EXTRA_KEYS in the Makefile)
NB_EXTRA_KEYS = "metadata.language_info"

PATH_KEYS = ("out_dir", "root", "out", "data", "exclude", "pretrained", "text_model")


def _strip_paths(d):
    """Tiny sizes, but the demo paths that dvc.yaml declares (datasets, run folders, stand-ins)."""
    if isinstance(d, dict):
        return {k: _strip_paths(v) for k, v in d.items() if not (k in PATH_KEYS and isinstance(v, str))}
    return d


class TinyPipeline:
    """A scratch git repository of the project whose params.yaml is the tiny profile, after one `dvc repro`, with
    dvc.lock committed (DVC experiments need a git commit to start from)."""

    def __init__(self, work: Path):
        self.work = work
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                    "PYTHONPATH": str(work), "DVC_NO_ANALYTICS": "1"}

    def dvc(self, *args) -> str:
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=self.work, env=self.env, capture_output=True,
                              text=True, timeout=1800)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    def git(self, *args) -> str:
        return subprocess.run(["git", "-c", "user.name=tests", "-c", "user.email=tests@localhost", *args],
                              cwd=self.work, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> TinyPipeline:
    """The whole pipeline run once per session on the tiny profile: the pipeline test checks DVC's side, the notebook
    tests read the notebooks it executed (so nothing is trained or executed twice)."""
    work = tmp_path_factory.mktemp("pipeline") / "project"
    work.mkdir()
    for item in ("tireid_core", "notebooks", "configs", "references", "dvc.yaml", ".gitignore", ".dvcignore"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / item)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    tiny = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    (work / "params.yaml").write_text(yaml.safe_dump(deep_merge(params, _strip_paths(tiny)), sort_keys=False))
    pipeline = TinyPipeline(work)
    pipeline.git("init", "-q")
    pipeline.dvc("init", "-q")
    pipeline.git("add", "-A")
    pipeline.git("commit", "-qm", "the tiny project")
    pipeline.dvc("repro")
    pipeline.git("add", "-A")
    pipeline.git("commit", "-qm", "dvc repro")
    return pipeline
