"""The training engine shared by every method: seeding, device, epochs, checkpoints, evaluation.

A method supplies a model whose `forward(batch, train_params)` returns a dict of loss terms
(with "loss" the total), and `encode_images`, `encode_texts`, `similarities` for retrieval.
The engine owns everything else, once:
- every run seeds Python, NumPy and torch, and each epoch reseeds from (seed, epoch), so a
  resumed run continues exactly where an uninterrupted one would be;
- CPU fp32 by default, CUDA with mixed precision when present; nothing hard-codes a device;
- a full checkpoint every epoch (`checkpoints/last.pt`, loadable with weights_only=True);
- model selection on the val split; best-on-val and last-epoch models are both evaluated on test;
- per-epoch metrics go to DVCLive so `dvc plots` shows the curves;
- DDP when started by torchrun.
"""
from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tireid_core import distributed as dist
from tireid_core.data.datasets import load_text_image_dataset
from tireid_core.data.pairs import CaptionCollate, ImageDataset, PairDataset
from tireid_core.data.records import TextImageDataset
from tireid_core.data.samplers import random_batches, rank_slice
from tireid_core.data.tokenizers import HFTokenizer, WordTokenizer, WordVocab, word_tokens
from tireid_core.data.transforms import ImageLoader
from tireid_core.io import atomic_torch_save, write_json
from tireid_core.metrics import metrics_record, retrieval_metrics
from tireid_core.params import RunParams, save_params

SUMMARY_KEYS = ("R@1", "R@5", "R@10", "rSum", "mAP", "mINP")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={spec!r} but CUDA is not available on this machine")
    return device


# ----------------------------------------------------------------------------- data


@dataclass
class EvalSet:
    """A retrieval split: captions are the queries, each image of the split once is the gallery."""

    split: str
    image_paths: list[Path]
    image_pids: list[int]
    captions: list[str]
    caption_pids: list[int]
    caption_image: list[int]  # index into image_paths of the caption's own image
    caption_refs: list[tuple[int, int]]  # (index into dataset.images, caption index): links queries to annotations


def build_eval_set(dataset: TextImageDataset, split: str) -> EvalSet:
    indices = [i for i, e in enumerate(dataset.images) if e.split == split]
    if not indices:
        raise ValueError(f"dataset {dataset.name!r} at {dataset.root} has no {split!r} split")
    entries = [dataset.images[i] for i in indices]
    caps, cap_pids, cap_img, refs = [], [], [], []
    for i, (global_index, e) in enumerate(zip(indices, entries)):
        for j, c in enumerate(e.captions):
            caps.append(c)
            cap_pids.append(e.pid)
            cap_img.append(i)
            refs.append((global_index, j))
    return EvalSet(split, [e.path for e in entries], [e.pid for e in entries], caps, cap_pids, cap_img, refs)


def drop_single_image_ids(pairs: list) -> list:
    """Remove training identities with one image (SSAN drops CUHK-PEDES ids 1369, 4116, 6116): methods with a
    weak positive or a support set need another image of the same identity. Says what it dropped."""
    images: dict[int, set] = {}
    for p in pairs:
        images.setdefault(p.pid, set()).add(p.image_index)
    single = sorted(pid for pid, imgs in images.items() if len(imgs) < 2)
    if single:
        warnings.warn(f"dropping {len(single)} training identities with a single image: {single[:20]}", stacklevel=2)
    return [p for p in pairs if p.pid not in set(single)]


def build_tokenizer(params: RunParams, train_captions: list[str]):
    """Word vocabulary from training captions (Bi-LSTM / small transformer) or a BERT tokenizer."""
    m = params.model
    if m.text_encoder == "bert":
        return HFTokenizer(m.text_model)
    vocab = WordVocab.build([word_tokens(c) for c in train_captions], min_count=m.word_min_count)
    return WordTokenizer(vocab, cls_sep=params.data.cls_sep_tokens)


def make_collate(exp: "Experiment") -> CaptionCollate:
    """The one tokenisation used for training batches and evaluation queries alike."""
    return CaptionCollate(exp.tokenizer, exp.params.data.max_words, exp.params.data.sub_sentences)


@dataclass
class Experiment:
    """Everything a notebook needs after building a run: data, tokenizer and the model."""

    params: RunParams
    dataset: TextImageDataset
    train_set: PairDataset
    val_set: EvalSet | None
    test_set: EvalSet
    tokenizer: object
    num_classes: int
    model: nn.Module
    run_dir: Path
    image_cache: dict | None = None  # shared by training and evaluation loaders (data.cache_images)


def build_experiment(params: RunParams, build_model: Callable[[RunParams, object, int], nn.Module]) -> Experiment:
    """Load the dataset, build the tokenizer and the model; seeds first so init is reproducible."""
    seed_everything(params.train.seed)
    dataset = load_text_image_dataset(params.data.dataset, Path(params.data.root))
    train_pairs = dataset.pairs("train")
    if not train_pairs:
        raise ValueError(f"dataset {params.data.dataset!r} at {params.data.root} has no training pairs")
    d = params.data
    if d.weak_caption:
        train_pairs = drop_single_image_ids(train_pairs)
    label_of_pid = {pid: i for i, pid in enumerate(sorted({p.pid for p in train_pairs}))}
    image_cache = {} if d.cache_images else None
    train_set = PairDataset(
        train_pairs,
        ImageLoader(d.height, d.width, train=True, hflip=d.hflip, normalize=d.normalize, cache=image_cache),
        label_of_pid,
        d.weak_caption,
    )
    has_val = any(e.split == "val" for e in dataset.images)
    tokenizer = build_tokenizer(params, [p.caption for p in train_pairs])
    model = build_model(params, tokenizer, len(label_of_pid))
    return Experiment(
        params=params,
        dataset=dataset,
        train_set=train_set,
        val_set=build_eval_set(dataset, "val") if has_val else None,
        test_set=build_eval_set(dataset, "test"),
        tokenizer=tokenizer,
        num_classes=len(label_of_pid),
        model=model,
        run_dir=Path(params.out_dir),
        image_cache=image_cache,
    )


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def encode_eval_set(exp: Experiment, evalset: EvalSet, device: torch.device, model: nn.Module | None = None):
    """fp32 features of every gallery image and every query caption (eval mode, no autocast)."""
    model = model or exp.model
    was_training = model.training
    model.eval()
    d, bs = exp.params.data, exp.params.eval.batch_size
    images = ImageDataset(evalset.image_paths,
                          ImageLoader(d.height, d.width, train=False, normalize=d.normalize, cache=exp.image_cache))
    img_feats = []
    for start in tqdm(range(0, len(images), bs), desc=f"{evalset.split} images", leave=False, disable=dist.rank() != 0):
        batch = _image_batch(torch.stack([images[i] for i in range(start, min(start + bs, len(images)))]), device,
                             exp.params.train.channels_last)
        img_feats.append(model.encode_images(batch).float().cpu())
    txt_feats, collate = [], make_collate(exp)
    for start in tqdm(range(0, len(evalset.captions), bs), desc=f"{evalset.split} texts", leave=False, disable=dist.rank() != 0):
        text_batch = collate.tokenize(evalset.captions[start : start + bs])
        txt_feats.append(model.encode_texts(**_move(text_batch, device)).float().cpu())
    model.train(was_training)
    return torch.cat(img_feats), torch.cat(txt_feats)


def evaluate(exp: Experiment, evalset: EvalSet, device: torch.device, model: nn.Module | None = None) -> dict:
    """Metrics per similarity matrix the model exposes ("final" first); features are returned too."""
    model = model or exp.model
    img, txt = encode_eval_set(exp, evalset, device, model)
    sims = model.similarities(img, txt)
    qp, gp = torch.tensor(evalset.caption_pids), torch.tensor(evalset.image_pids)
    e = exp.params.eval
    results = {
        name: retrieval_metrics(s, qp, gp, ap_convention=e.ap_convention, tie_mode=e.tie_mode) for name, s in sims.items()
    }
    return {"metrics": results, "image_feats": img, "text_feats": txt, "scores": sims}


def summary(m: dict) -> dict:
    return {k: round(float(m[k]), 2) for k in SUMMARY_KEYS}


# ----------------------------------------------------------------------------- training


def param_groups(model: nn.Module, params: RunParams) -> list[dict]:
    """Pretrained encoders can train at a smaller learning rate (`train.backbone_lr_mult`)."""
    tp = params.train
    pretrained_prefixes = []
    if params.model.pretrained:
        pretrained_prefixes.append("backbone.")
    if params.model.text_encoder == "bert" and params.model.text_pretrained:
        pretrained_prefixes.append("text_encoder.")
    slow, fast = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (slow if name.startswith(tuple(pretrained_prefixes)) else fast).append(p)
    groups = [{"params": fast, "lr": tp.lr}]
    if slow:
        groups.append({"params": slow, "lr": tp.lr * tp.backbone_lr_mult})
    return groups


def lr_lambda(params: RunParams, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up over `warmup_epochs`, then cosine / step decay; stepped every iteration."""
    tp = params.train
    warm = tp.warmup_epochs * steps_per_epoch
    total = max(tp.epochs * steps_per_epoch, 1)

    def factor(step: int) -> float:
        if tp.schedule == "epoch_multistep":
            epoch = step // steps_per_epoch
            if epoch < tp.warmup_epochs:
                return tp.warmup_factor + (1 - tp.warmup_factor) * epoch / tp.warmup_epochs
            return tp.gamma ** sum(epoch >= m for m in tp.milestones)
        if step < warm:
            return (step + 1) / warm
        if tp.schedule == "cosine":
            progress = (step - warm) / max(total - warm, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if tp.schedule == "step":
            epoch = step // steps_per_epoch
            return tp.gamma ** sum(epoch >= m for m in tp.milestones)
        return 1.0

    return factor


def _set_bn_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _image_batch(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Images on the device, in NHWC when the run asks for it (train.channels_last; the model is converted in fit)."""
    images = images.to(device)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def _move(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def fit(
    exp: Experiment,
    resume: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train, select on val, evaluate best and last on test; write metrics.json; return the summary.

    `on_epoch_end(epoch, record)` runs after each epoch's checkpoint is written (notebooks use it
    for live output; tests use it to interrupt a run).
    """
    params, model = exp.params, exp.model
    tp = params.train
    device = resolve_device(tp.device)
    distributed = dist.init_from_env(device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", dist.rank() % torch.cuda.device_count())
    use_amp = tp.amp and device.type == "cuda"  # float16 with a gradient scaler
    use_bf16 = tp.cpu_bf16 and device.type == "cpu"  # bfloat16 needs no scaler (float32's exponent range)
    run_dir = exp.run_dir
    ckpt_dir = run_dir / "checkpoints"
    is_main = dist.rank() == 0
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_params(params, run_dir / "params.resolved.yaml")

    model.to(device)
    if tp.channels_last:
        model.to(memory_format=torch.channels_last)
    train_module: nn.Module = model
    if distributed:
        train_module = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # A model may group its own parameters (NAFS: per-part learning rates and weight decay, nafs.md §4).
    groups = model.param_groups(params) if hasattr(model, "param_groups") else param_groups(model, params)
    # fused: one kernel per tensor instead of about ten small ops (demo SSAN optimiser step 7.6 -> 2.2 ms on 2 cores)
    optimizer = torch.optim.Adam(groups, lr=tp.lr, weight_decay=tp.weight_decay, fused=True)
    collate = make_collate(exp)
    steps_per_epoch = len(random_batches(len(exp.train_set), tp.batch_size, tp.seed, 0))
    if steps_per_epoch == 0:
        raise ValueError(f"train.batch_size={tp.batch_size} is larger than the {len(exp.train_set)} training pairs")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(params, steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, history, best = 0, [], {"epoch": -1, "score": -1.0}
    last_ckpt = ckpt_dir / "last.pt"
    if resume and last_ckpt.exists():
        state = torch.load(last_ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]

    live = None
    if is_main:
        from dvclive import Live

        live = Live(str(run_dir / "dvclive"), resume=start_epoch > 0, save_dvc_exp=False, dvcyaml=None, report=None)

    for epoch in range(start_epoch, tp.epochs):
        seed_everything(tp.seed * 1000 + epoch)  # dropout/augmentation depend only on (seed, epoch)
        model.train()
        if tp.freeze_bn:
            _set_bn_eval(model)
        batches = random_batches(len(exp.train_set), tp.batch_size, tp.seed, epoch)
        running: dict[str, float] = {}
        # Workers draw their seeds from torch's RNG, reseeded above: augmentation stays a function of (seed, epoch).
        loader = DataLoader(
            exp.train_set,
            batch_sampler=[rank_slice(b, dist.rank(), dist.world_size()) for b in batches],
            collate_fn=collate,
            num_workers=params.data.num_workers,
            pin_memory=device.type == "cuda",
        )
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tp.epochs}", leave=False, disable=not is_main)
        for batch in bar:
            batch = _move(batch, device)
            batch["image"] = _image_batch(batch["image"], device, tp.channels_last)
            batch["epoch"] = epoch  # schedules inside losses (SSAN's alpha2 warm-up)
            with torch.autocast(device.type, dtype=torch.bfloat16 if use_bf16 else None, enabled=use_amp or use_bf16):
                terms = train_module(batch, tp)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(terms["loss"]).backward()
            if tp.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            for k, v in terms.items():
                running[k] = running.get(k, 0.0) + float(v.detach())
            bar.set_postfix(loss=f"{float(terms['loss'].detach()):.3f}")
        running = dist.mean_over_ranks(running)  # each rank saw part of every batch
        record = {"epoch": epoch, **{f"train/{k}": v / len(batches) for k, v in running.items()}}
        record["lr"] = optimizer.param_groups[0]["lr"]

        if is_main:
            if exp.val_set is not None and tp.selection_split == "val":
                val = evaluate(exp, exp.val_set, device)["metrics"]["final"]
                record.update({f"val/{k}": float(val[k]) for k in SUMMARY_KEYS})
                score = float(val["R@1"])
            elif tp.selection_split == "test":
                test = evaluate(exp, exp.test_set, device)["metrics"]["final"]
                record.update({f"test/{k}": float(test[k]) for k in SUMMARY_KEYS})
                score = float(test["R@1"])
            else:  # "last", or no val split: the last epoch is the selected one
                score = float(epoch)
            if score > best["score"]:
                best = {"epoch": epoch, "score": score}
                atomic_torch_save({"model": model.state_dict(), "epoch": epoch}, ckpt_dir / "best.pt")
            history.append(record)
            atomic_torch_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch,
                    "history": history,
                    "best": best,
                },
                last_ckpt,
            )
            for k, v in record.items():
                if k != "epoch":
                    live.log_metric(k, v)
            live.next_step()
        dist.barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)

    result = None
    if is_main:
        live.end()
        result = _final_evaluation(exp, device, history, best)
    dist.barrier()
    return result


def _final_evaluation(exp: Experiment, device: torch.device, history: list, best: dict) -> dict:
    """Evaluate the last and the selected (best) models on test; write metrics and eval records."""
    params, model = exp.params, exp.model
    run_dir = exp.run_dir
    context = {
        "dataset": params.data.dataset,
        "split": "test",
        "direction": "t2i",
        "similarity": "cosine",
        "precision": "fp32",
        "selection_split": params.train.selection_split if exp.val_set is not None else "last",
        "seed": params.train.seed,
    }
    last_eval = evaluate(exp, exp.test_set, device)
    last_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best_state = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(best_state["model"])
    best_eval = evaluate(exp, exp.test_set, device)
    summary_out: dict = {}
    for row, ev, epoch in (("best", best_eval, best["epoch"]), ("last", last_eval, len(history) - 1)):
        recs = {name: metrics_record(m, row=row, epoch=epoch, **context) for name, m in ev["metrics"].items()}
        write_json(run_dir / "eval" / f"test_{row}.json", recs)
        summary_out[row] = {"epoch": epoch, "test": summary(ev["metrics"]["final"])}
        if row == "best" and any("val/R@1" in h for h in history):
            summary_out[row]["val"] = {k: round(history[epoch][f"val/{k}"], 2) for k in SUMMARY_KEYS}
    summary_out["selection_split"] = context["selection_split"]
    summary_out["n_test_queries"] = int(best_eval["metrics"]["final"]["n_queries_valid"])
    write_json(run_dir / "metrics.json", summary_out)
    # Features of the selected model: analysis notebooks and downstream stages read this file.
    atomic_torch_save(
        {"image_feats": best_eval["image_feats"], "text_feats": best_eval["text_feats"]},
        run_dir / "features_test.pt",
    )
    model.load_state_dict(last_state)  # leave the model as trained
    return {"summary": summary_out, "best_eval": best_eval, "last_eval": last_eval, "history": history}


def load_best(exp: Experiment) -> None:
    """Load the selected checkpoint into exp.model (for analyses after `fit`)."""
    state = torch.load(exp.run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    exp.model.load_state_dict(state["model"])

