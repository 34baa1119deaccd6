"""The method registry and the model contract: a new paper is one module plus its params.yaml section.

A dummy image-ReID method is written into a scratch copy of the project; it must be found by the registry, train one
tiny epoch with `python -m tireid_core.train dummy --row full`, pass the DDP parity test and appear in the generated
dvc.yaml, with no other file of the core edited.
"""
import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tireid_core.methods import Method, RetrievalModel, available_methods, get_method
from tireid_core.params import method_rows

REPO = Path(__file__).resolve().parent.parent

DUMMY = '''"""A tiny image-ReID method: global max-pooled feature, ID loss + batch-hard triplet (test fixture)."""
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from tireid_core.distributed import gather_with_grad
from tireid_core.losses import id_loss
from tireid_core.methods import Method, MethodModel
from tireid_core.metrics import cosine_similarity
from tireid_core.models.backbones import create_backbone
from tireid_core.params import RunParams


@dataclass
class DummyParams:
    margin: float = 0.3


@dataclass
class DummyRunParams(RunParams):
    dummy: DummyParams = field(default_factory=DummyParams)


class Dummy(MethodModel):
    def __init__(self, params, vocab_size, num_classes, tokenizer=None):
        super().__init__()
        self.margin = params.dummy.margin
        self.backbone = create_backbone("resnet_small", widths=tuple(params.model.backbone_widths), last_stride=1)
        self.head = nn.Linear(self.backbone.channels["layer4"], num_classes)

    def encode_images(self, images):
        return {"global": self.backbone(images)["layer4"].amax((2, 3))}

    def similarities(self, gallery, queries):
        return {"final": cosine_similarity(queries["global"], gallery["global"])}

    def forward(self, batch):
        f, labels = self.encode_images(batch["image"])["global"], batch["label"]
        all_f, all_labels = gather_with_grad(f), gather_with_grad(labels)
        d = torch.cdist(all_f, all_f)
        same = all_labels[:, None] == all_labels[None, :]
        hardest_pos = (d * same).amax(1)
        hardest_neg = d.masked_fill(same, float("inf")).amin(1)
        terms = {"id": id_loss(self.head(f), labels),
                 "triplet": F.relu(hardest_pos - hardest_neg + self.margin).mean()}
        terms["loss"] = terms["id"] + terms["triplet"]
        return terms


METHOD = Method("dummy", params=DummyRunParams, model=Dummy, task="image_reid")
'''

DUMMY_PARAMS = {
    "dummy": {"out_dir": "runs/demo/dummy",
              "data": {"dataset": "simpedes-market", "root": "data/simpedes", "height": 48, "width": 16,
                       "ids_per_batch": 4, "cache_images": True},
              "model": {"backbone_widths": [8, 8, 16, 16]},
              "train": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0, "selection_split": "last"},
              "eval": {"batch_size": 32}},
    "dummy_rows": {"full": {"label": "dummy ReID model"}},
}


def test_registry_finds_every_method_module_with_its_rows():
    methods = available_methods()
    assert {"baseline", "ssan", "nafs", "lcr2s_teacher", "lcr2s"} <= set(methods)
    for name in methods:
        method = get_method(name)
        assert isinstance(method, Method) and method.name == name
        assert "full" in method_rows(name, REPO / "params.yaml"), f"{name}_rows needs a full row"
    with pytest.raises(ValueError, match="unknown method 'nope'; known: baseline"):
        get_method("nope")


@pytest.mark.parametrize("method", [m for m in available_methods() if get_method(m).task == "text_image"])
def test_every_model_follows_the_contract(method, tiny_params):
    from tireid_core.experiment import build_experiment

    exp = build_experiment(tiny_params(section=method))
    model = exp.model.eval()
    assert isinstance(model, RetrievalModel)
    images = torch.randn(3, 3, exp.params.data.height, exp.params.data.width)
    text = exp.collate().tokenize(exp.test_set.captions[:2])
    with torch.no_grad():
        gallery, queries = model.encode_images(images), model.encode_texts(text)
        scores = model.similarities(gallery, queries)
    assert all(isinstance(v, torch.Tensor) and v.shape[0] == 3 for v in gallery.values())
    assert all(v.shape[0] == 2 for v in queries.values())
    assert "final" in scores and all(s.shape == (2, 3) for s in scores.values())


@pytest.mark.parametrize("method", [m for m in available_methods() if get_method(m).task == "image_reid"])
def test_every_image_reid_model_follows_the_contract(method, tiny_params):
    from tireid_core.experiment import build_experiment

    exp = build_experiment(tiny_params(section=method))
    model = exp.model.eval()
    assert isinstance(model, RetrievalModel) and model.similarity in ("cosine", "euclidean")
    images = torch.randn(3, 3, exp.params.data.height, exp.params.data.width)
    with torch.no_grad():
        gallery, queries = model.encode_images(images), model.encode_images(images[:2])
        scores = model.similarities(gallery, queries)
    assert "final" in scores and all(s.shape == (2, 3) for s in scores.values())
    assert (scores["final"].argmax(1) == torch.arange(2)).all()  # an image is closest to itself


@pytest.fixture
def project_with_dummy(tmp_path, tiny_simpedes):
    work = tmp_path / "project"
    work.mkdir()
    for item in ("tireid_core", "notebooks", "configs", "references", "params.yaml", "dvc.yaml"):
        src = REPO / item
        (shutil.copytree(src, work / item, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copy(src, work / item))
    (work / "tireid_core" / "models" / "dummy.py").write_text(DUMMY)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params.update(DUMMY_PARAMS)
    params["dummy"]["data"]["root"] = str(tiny_simpedes)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work


def _changed_files(work: Path) -> set[str]:
    changed = set()
    for path in work.rglob("*"):
        rel = path.relative_to(work)
        if path.is_file() and "__pycache__" not in rel.parts and rel.parts[0] in ("tireid_core", "params.yaml"):
            if not (REPO / rel).exists() or not filecmp.cmp(path, REPO / rel, shallow=False):
                changed.add(str(rel))
    return changed


@pytest.mark.slow
def test_a_new_method_is_one_module_and_its_params(project_with_dummy, tmp_path, tiny_simpedes):
    work = project_with_dummy
    assert _changed_files(work) == {"tireid_core/models/dummy.py", "params.yaml"}
    env_path = {"PYTHONPATH": str(work)}
    listing = subprocess.run([sys.executable, "-c", "from tireid_core.methods import available_methods; "
                              "print(available_methods())"], capture_output=True, text=True, env=env_path, cwd=work)
    assert "'dummy'" in listing.stdout, listing.stderr
    # the generated pipeline picks it up: a train_dummy stage over dummy_rows
    subprocess.run([sys.executable, "-m", "tireid_core.pipeline"], check=True, env=env_path, cwd=work,
                   capture_output=True)
    stages = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
    assert stages["train_dummy"]["do"]["cmd"] == "python -m tireid_core.train dummy --row ${key}"
    assert "tireid_core/models/dummy.py" in stages["train_dummy"]["do"]["deps"]
    # trains end to end through `train --row` (the engine's DDP parity is checked for every method in test_engine)
    subprocess.run([sys.executable, "-m", "tireid_core.train", "dummy", "--row", "full", "--profile", "tiny",
                    "--set", f"dummy.out_dir={tmp_path / 'single'}", "--set", "dummy.train.epochs=1"],
                   check=True, env={**os.environ, **env_path, "OMP_NUM_THREADS": "1"}, cwd=work, capture_output=True)
    metrics = yaml.safe_load((tmp_path / "single" / "full" / "metrics.json").read_text())
    assert 0 <= metrics["best"]["test"]["R@1"] <= 100 and metrics["selection_split"] == "last"
