"""The contract every method follows, and the registry that finds methods by name.

A method is one module in `tireid_core.models` (``baseline``, ``ssan``, ``nafs``, ...) that defines

- a parameter dataclass for its `params.yaml` section (a `RunParams` subclass with its own `check`),
- a model class following `RetrievalModel` (most subclass `MethodModel` for the defaults),
- ``METHOD = Method(name, params=..., model=...)``.

Nothing else in the core lists methods: `get_method("ssan")` imports `tireid_core.models.ssan` and reads its
``METHOD``; the ablation rows and their labels live in `params.yaml` (section ``<method>_rows``).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import torch
import torch.nn as nn

Features = dict[str, torch.Tensor]


@runtime_checkable
class RetrievalModel(Protocol):
    """What the engine, the evaluation and the saved feature files rely on.

    - ``encode_images(images)`` and ``encode_texts(text)`` return a dict of named feature tensors (first dimension =
      samples). ``text`` is the tokenised batch: ``{"ids", "mask"}`` plus ``"pieces"`` for methods that ask for
      sub-sentence indices. Image-ReID methods only need ``encode_images``.
    - ``similarities(gallery_feats, query_feats)`` returns named query × gallery score matrices; ``"final"`` is the one
      used for retrieval and model selection (for text-to-image: texts × images).
    - ``forward(batch)`` returns named, already weighted loss terms and their sum ``"loss"``; the weights come from the
      method's own parameters. Batch-level losses must see the whole global batch under DDP
      (`tireid_core.distributed.gather_with_grad`).
    - ``rerank(scores, gallery_feats)`` adds the test-time score matrices (a re-ranking that reads settings named in
      ``Method.test_time``) when a finished run is re-scored; training and its evaluation never call it.
    - ``start_epoch(epoch)`` is called before every training epoch (schedules inside a loss).
    - ``param_groups(params)`` gives the optimiser's parameter groups.

    Optional (`MethodModel` has the defaults): ``optimizers(params)`` and ``gradient_routes()`` for a method that trains
    with several optimisers and several gradients per step (SAN), ``train_targets(images)`` for per-sample training
    targets of an image-ReID method, ``similarity`` (the name written to the metrics files).
    """

    def encode_images(self, images: torch.Tensor) -> Features: ...

    def similarities(self, gallery_feats: Features, query_feats: Features) -> dict[str, torch.Tensor]: ...

    def forward(self, batch: dict) -> dict[str, torch.Tensor]: ...

    def rerank(self, scores: dict[str, torch.Tensor], gallery_feats: Features) -> dict[str, torch.Tensor]: ...

    def start_epoch(self, epoch: int) -> None: ...

    def param_groups(self, params) -> list[dict]: ...


@dataclass(frozen=True)
class TextNeeds:
    """How a method wants captions tokenised (read by the experiment assembly, never by the data classes' users)."""

    cls_sep: bool = False  # word vocabulary: wrap captions as [CLS] words [SEP] (BERT's layout with a small encoder)
    pieces: bool = False  # batches carry each token's sub-sentence index
    full_width: bool = False  # keep every caption padded to data.max_words (a model whose output sees the padding)
    official_pieces: int = 0  # > 0: batches carry NAFS's official sub-sentence sequences, this many per caption


@dataclass(frozen=True)
class GradientRoute:
    """One gradient of a training step with several optimisers: d ``terms[loss]`` / d (the parameters of the named
    optimisers), applied by those optimisers. The routes of a step run in order on one forward pass;
    ``reforward=True`` first recomputes the terms with the weights the earlier routes have just updated."""

    loss: str
    optimizers: tuple[str, ...]
    reforward: bool = False


class MethodModel(nn.Module):
    """Defaults of the contract: no epoch schedule, no re-ranking, pretrained encoders at ``lr · backbone_lr_mult``, one
    optimiser built by the engine, one backward pass of ``terms["loss"]`` per step, cosine scores."""

    text_needs = TextNeeds()
    epoch = 0
    similarity = "cosine"  # what `similarities` computes, as written to the metrics files
    fixed_lr_optimizers: tuple[str, ...] = ()  # optimisers (by name) the engine's lr schedule leaves at their own lr

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rerank(self, scores: dict[str, torch.Tensor], gallery_feats: Features) -> dict[str, torch.Tensor]:
        """No test-time re-scoring by default."""
        return scores

    def param_groups(self, params) -> list[dict]:
        """Pretrained parts (a ``backbone`` or a pretrained BERT ``text_encoder``) can train at a smaller lr."""
        tp, m = params.train, params.model
        prefixes = []
        if m.pretrained:
            prefixes.append("backbone.")
        if m.text_encoder == "bert" and m.text_pretrained:
            prefixes.append("text_encoder.")
        slow, fast = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (slow if name.startswith(tuple(prefixes)) else fast).append(p)
        groups = [{"params": fast, "lr": tp.lr}]
        if slow:
            groups.append({"params": slow, "lr": tp.lr * tp.backbone_lr_mult})
        return groups

    def optimizers(self, params) -> dict[str, torch.optim.Optimizer] | None:
        """None: the engine builds one Adam over `param_groups`. A method with several optimisers returns them by
        name; the first is the one whose lr is logged. The engine's per-iteration lr schedule (warm-up, decay) drives
        every optimiser not named in `fixed_lr_optimizers`; checkpoints hold them all."""
        return None

    def gradient_routes(self) -> tuple[GradientRoute, ...] | None:
        """None: one backward pass of ``terms["loss"]``, then every optimiser steps. Otherwise the step computes one
        gradient per route (`GradientRoute`) with `torch.autograd.grad`, averages it over DDP ranks and lets the
        route's optimisers apply it; an optimiser belongs to at most one route."""
        return None

    def train_targets(self, images: list) -> Callable[[object], dict[str, torch.Tensor]] | None:
        """Image ReID: a picklable function from a training `ReIDImage` to extra per-sample tensors for `forward`
        (SAN's texture target), or None. `images` are the training images, so missing files fail before training."""
        return None


@dataclass(frozen=True)
class Method:
    """One registered method: its name (= its `params.yaml` section), parameter class, model class and task.

    ``model(params, vocab_size, num_classes, tokenizer)`` builds the network; ``task`` is ``"text_image"`` or
    ``"image_reid"``. ``test_time`` names the dotted keys of the method's section that only change how a finished run
    is re-scored (NAFS's re-ranking): training never reads them, so its DVC stage does not depend on them.
    ``reads``: methods whose finished runs this method's training loads (LCR²S's student distils
    from a trained teacher): `load_run_params` puts their run folders into ``params.reads`` and accepts ``--set``
    keys of their sections, and the pipeline makes the training stage depend on their checkpoints.
    """

    name: str
    params: type
    model: type
    task: str = "text_image"
    test_time: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()


def get_method(name: str, package: str = "tireid_core.models") -> Method:
    """The `Method` declared by module ``<package>.<name>``."""
    try:
        module = importlib.import_module(f"{package}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{package}.{name}":
            raise
        raise ValueError(f"unknown method {name!r}; known: {', '.join(available_methods(package))}") from None
    method = getattr(module, "METHOD", None)
    if not isinstance(method, Method):
        raise ValueError(f"unknown method {name!r}: {module.__name__} declares no METHOD; "
                         f"known: {', '.join(available_methods(package))}")
    return method


def available_methods(package: str = "tireid_core.models") -> list[str]:
    """Names of the modules of `package` that declare a ``METHOD``."""
    pkg = importlib.import_module(package)
    names = []
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"{package}.{info.name}")
        if isinstance(getattr(module, "METHOD", None), Method):
            names.append(info.name)
    return sorted(names)
