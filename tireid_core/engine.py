"""The training loop shared by every method and both tasks: epochs, checkpoints, selection on val, DVCLive, DDP.

A model follows `tireid_core.methods.RetrievalModel`: ``forward(batch)`` returns its weighted loss terms with their
sum under "loss". The loop owns everything else, once:
- every run seeds Python, NumPy and torch, and each epoch reseeds from (seed, epoch), so a resumed run continues
  exactly where an uninterrupted one would be;
- CPU fp32 by default (bfloat16 autocast with train.cpu_bf16), CUDA with mixed precision; nothing hard-codes a device;
- a full checkpoint every epoch (`checkpoints/last.pt`, loadable with weights_only=True);
- model selection on the val split; best-on-val and last-epoch models are both evaluated on test
  (`evaluation.final_evaluation`);
- per-epoch metrics go to DVCLive so `dvc plots` shows the curves;
- DDP when started by torchrun (each rank computes its slice of every global batch).
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tireid_core import distributed as dist
from tireid_core.data.samplers import rank_slice
from tireid_core.evaluation import REPORTED_KEYS, evaluate, final_evaluation
from tireid_core.experiment import Experiment
from tireid_core.io import atomic_torch_save, load_checkpoint, load_model_state
from tireid_core.params import RunParams, save_params, to_dict
from tireid_core.runtime import resolve_device, seed_everything, to_device


class DivergedError(ValueError):
    """A training loss became NaN or infinite (a user error: the parameters diverge)."""


def lr_lambda(params: RunParams, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up over `warmup_epochs`, then cosine / step decay; stepped every iteration (epoch_multistep:
    constant within an epoch, linear or exponential warm-up)."""
    tp = params.train
    warm = tp.warmup_epochs * steps_per_epoch
    total = max(tp.epochs * steps_per_epoch, 1)

    def factor(step: int) -> float:
        if tp.schedule == "epoch_multistep":
            epoch = step // steps_per_epoch
            if epoch < tp.warmup_epochs:
                if tp.warmup_shape == "exponential":  # the same factor every epoch (SAN: ×1.259, 1/100 -> 1 in 20)
                    return tp.warmup_factor ** (1 - epoch / tp.warmup_epochs)
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


def _check_finite(terms: dict, epoch: int, step: int, lr: float) -> None:
    bad = [k for k, v in terms.items() if not bool(torch.isfinite(v.detach()).all())]
    if bad:
        raise DivergedError(f"training diverged at epoch {epoch + 1}, step {step + 1}: loss term(s) "
                            f"{', '.join(bad)} not finite (lr {lr:g}); lower train.lr or set train.grad_clip")


@dataclass
class TrainStep:
    """One optimisation step exactly as the loop runs it: batch to the device (and layout), autocast, the model's
    weighted loss terms, a finite-loss check, backward, clipping, optimisers and per-iteration schedulers. Benchmarks
    time this object, so their figures are the engine's.

    Most methods train one Adam over `param_groups` with one backward pass of ``terms["loss"]``. A model whose
    `optimizers(params)` returns several optimisers and whose `gradient_routes()` returns routes (SAN's two-step
    update) gets one gradient per route instead (`_routed_step`)."""

    module: nn.Module  # the model, or its DDP wrapper
    model: nn.Module
    optimizers: dict[str, torch.optim.Optimizer]  # the first one's lr is logged
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]  # the lr schedule, for every optimiser it drives
    routes: tuple | None  # tireid_core.methods.GradientRoute, or None for one backward of terms["loss"]
    scaler: torch.amp.GradScaler
    device: torch.device
    autocast_dtype: torch.dtype | None
    autocast: bool
    grad_clip: float
    channels_last: bool

    @classmethod
    def build(cls, model: nn.Module, params: RunParams, device: torch.device, steps_per_epoch: int,
              module: nn.Module | None = None) -> "TrainStep":
        tp = params.train
        use_amp = tp.amp and device.type == "cuda"  # float16 with a gradient scaler
        use_bf16 = tp.cpu_bf16 and device.type == "cpu"  # bfloat16 needs no scaler (float32's exponent range)
        if use_bf16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            raise ValueError(f"{params.method}.train.cpu_bf16: this CPU has no native bfloat16 support (AVX512-BF16 "
                             "or AMX), where some layers (the LSTM) fail; set it to false")
        optimizers = model.optimizers(params) if hasattr(model, "optimizers") else None
        if optimizers is None:
            # fused: one kernel per tensor instead of about ten small ops (demo SSAN optimiser step 7.6 -> 2.2 ms, 2 cores)
            optimizers = {"main": torch.optim.Adam(model.param_groups(params), lr=tp.lr, weight_decay=tp.weight_decay,
                                                   fused=True)}
        routes = model.gradient_routes() if hasattr(model, "gradient_routes") else None
        if routes is not None:
            named = [name for route in routes for name in route.optimizers]
            if sorted(named) != sorted(set(named)) or not set(named) <= set(optimizers):
                raise ValueError(f"{params.method}: every optimiser must belong to at most one gradient route and "
                                 f"exist (routes name {named}, optimisers {list(optimizers)})")
        fixed = set(getattr(model, "fixed_lr_optimizers", ()))
        factor = lr_lambda(params, steps_per_epoch)
        schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, factor) for name, opt in optimizers.items()
                      if name not in fixed}
        return cls(module or model, model, optimizers, schedulers, routes,
                   torch.amp.GradScaler("cuda", enabled=use_amp), device, torch.bfloat16 if use_bf16 else None,
                   use_amp or use_bf16, tp.grad_clip, tp.channels_last)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The first optimiser: its lr is the one the loop logs and reports in errors."""
        return next(iter(self.optimizers.values()))

    def _forward(self, batch: dict, epoch: int, step: int) -> dict[str, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast):
            terms = self.module(batch)
        _check_finite(terms, epoch, step, self.optimizer.param_groups[0]["lr"])
        return terms

    def _apply(self, optimizers: list[torch.optim.Optimizer], params) -> None:
        if self.grad_clip:
            for opt in optimizers:
                self.scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(params, self.grad_clip)
        for opt in optimizers:
            self.scaler.step(opt)

    def __call__(self, batch: dict, epoch: int = 0, step: int = 0) -> dict[str, torch.Tensor]:
        batch = to_device(batch, self.device, self.channels_last)
        if self.routes is None:
            terms = self._forward(batch, epoch, step)
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
            self.scaler.scale(terms["loss"]).backward()
            self._apply(list(self.optimizers.values()), self.model.parameters())
        else:
            terms = self._routed_step(batch, epoch, step)
        self.scaler.update()
        for scheduler in self.schedulers.values():
            scheduler.step()
        return terms

    def _routed_step(self, batch: dict, epoch: int, step: int) -> dict[str, torch.Tensor]:
        """One gradient per route, each from `torch.autograd.grad` on the route's loss term, averaged over DDP ranks by
        hand (the forward runs under DDP's no_sync: DDP's reducer serves one backward pass per forward) and applied by
        the route's optimisers. Every gradient of one forward pass is computed before any optimiser steps: an update
        in place would otherwise leak into the next backward through the retained graph (SAN's official in-place bug;
        fused Adam does not even bump the version counters that would catch it). Returns the terms of the step's first
        forward pass (the logged ones)."""
        no_sync = self.module.no_sync() if isinstance(self.module, nn.parallel.DistributedDataParallel) else nullcontext()
        with no_sync:
            terms = logged = self._forward(batch, epoch, step)
            pending = []  # (optimisers, parameters, gradients) of the current forward pass
            for i, route in enumerate(self.routes):
                if route.reforward and i > 0:
                    self._apply_all(pending)
                    pending, terms = [], self._forward(batch, epoch, step)
                optimizers = [self.optimizers[name] for name in route.optimizers]
                params = [p for opt in optimizers for group in opt.param_groups for p in group["params"]]
                graph_used_later = i + 1 < len(self.routes) and not self.routes[i + 1].reforward
                grads = torch.autograd.grad(self.scaler.scale(terms[route.loss]), params,
                                            retain_graph=graph_used_later, allow_unused=True)
                dist.average_gradients(grads)
                pending.append((optimizers, params, grads))
            self._apply_all(pending)
        return logged

    def _apply_all(self, pending: list) -> None:
        for optimizers, params, grads in pending:
            for p, g in zip(params, grads):
                # the parameter's own memory layout, as backward's AccumulateGrad guarantees: fused Adam reads the
                # gradient and the parameter as flat arrays (a channels_last gradient of a contiguous weight would
                # be read permuted)
                p.grad = g if g is None or g.stride() == p.stride() else torch.empty_like(p).copy_(g)
            self._apply(optimizers, params)


# Keys a resumed run may change: where files are and how fast evaluation runs, not what is trained.
_RESUME_FREE = {"out_dir", "data.root", "data.num_workers", "data.cache_images", "eval.batch_size", "train.log_every"}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _check_resume(saved: dict | None, params: RunParams, path, test_time: tuple[str, ...] = ()) -> None:
    """Refuse to resume with parameters that change the result; more epochs and test-time settings are allowed."""
    if saved is None:
        return
    old, new = _flat(saved), _flat(to_dict(params))
    free = _RESUME_FREE | set(test_time)
    changed = [k for k in sorted(set(old) | set(new)) if k not in free and old.get(k) != new.get(k)
               and not (k == "train.epochs" and new[k] >= old[k])]
    if changed:
        diffs = "; ".join(f"{params.method}.{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} now" for k in changed)
        raise ValueError(f"{path}: cannot resume with changed parameters ({diffs}); start a new run folder or drop "
                         "--resume")


def fit(exp: Experiment, resume: bool = False, on_epoch_end: Callable[[int, dict], None] | None = None) -> dict:
    """Train, select on val, evaluate best and last on test; write metrics.json; return the summary.

    `on_epoch_end(epoch, record)` runs after each epoch's checkpoint is written (tests use it to interrupt a run).
    """
    params, model = exp.params, exp.model
    tp = params.train
    device = resolve_device(tp.device)
    distributed = dist.init_from_env(device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", dist.rank() % torch.cuda.device_count())
    run_dir = exp.run_dir
    ckpt_dir = run_dir / "checkpoints"
    is_main = dist.rank() == 0
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.json").unlink(missing_ok=True)  # a run folder never shows an old result beside new params
        save_params(params, run_dir / "params.resolved.yaml")

    model.to(device)
    if tp.channels_last:
        model.to(memory_format=torch.channels_last)
    train_module: nn.Module = model
    if distributed:
        train_module = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if tp.batch_size % dist.world_size():
        raise ValueError(f"{params.method}.train.batch_size ({tp.batch_size}) must be a multiple of the "
                         f"{dist.world_size()} processes: every process computes an equal slice of each batch")
    collate = exp.collate()
    steps_per_epoch = len(exp.train_batches(0))
    if steps_per_epoch == 0:
        raise ValueError(f"{params.method}.train.batch_size={tp.batch_size} is larger than the {len(exp.train_set)} "
                         "training samples")
    step_fn = TrainStep.build(model, params, device, steps_per_epoch, train_module)

    start_epoch, history, best = 0, [], {"epoch": -1, "score": -1.0}
    last_ckpt = ckpt_dir / "last.pt"
    if resume and last_ckpt.exists():
        state = load_checkpoint(last_ckpt)
        _check_resume(state.get("params"), params, last_ckpt, exp.method.test_time)
        load_model_state(model, state, last_ckpt)
        for name, opt in step_fn.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, scheduler in step_fn.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
        step_fn.scaler.load_state_dict(state["scaler"])
        start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]

    live = None
    if is_main:
        from dvclive import Live

        live = Live(str(run_dir / "dvclive"), resume=start_epoch > 0, save_dvc_exp=False, dvcyaml=None, report=None)
        live.step = start_epoch  # resumed curves continue at the resumed epoch

    for epoch in range(start_epoch, tp.epochs):
        seed_everything(tp.seed * 1000 + epoch)  # dropout/augmentation depend only on (seed, epoch)
        model.train()
        model.start_epoch(epoch)
        exp.train_set.start_epoch(tp.seed, epoch)
        if tp.freeze_bn:
            _set_bn_eval(model)
        batches = exp.train_batches(epoch)
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
        started = time.perf_counter()
        for step, batch in enumerate(bar):
            terms = step_fn(batch, epoch, step)
            for k, v in terms.items():
                running[k] = running.get(k, 0.0) + float(v.detach())
            bar.set_postfix(loss=f"{float(terms['loss'].detach()):.3f}")
        running = dist.mean_over_ranks(running)  # each rank saw part of every batch
        record = {"epoch": epoch, **{f"train/{k}": v / len(batches) for k, v in running.items()}}
        record["lr"] = step_fn.optimizer.param_groups[0]["lr"]
        record["train_seconds"] = round(time.perf_counter() - started, 1)  # the budget a row actually had (wall time)

        if is_main:
            if exp.val_set is not None and tp.selection_split == "val":
                val = evaluate(exp, exp.val_set, device)["metrics"]["final"]
                record.update({f"val/{k}": float(val[k]) for k in REPORTED_KEYS if k in val})
                score = float(val["R@1"])
            elif tp.selection_split == "test":
                test = evaluate(exp, exp.test_set, device)["metrics"]["final"]
                record.update({f"test/{k}": float(test[k]) for k in REPORTED_KEYS if k in test})
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
                    "optimizers": {name: opt.state_dict() for name, opt in step_fn.optimizers.items()},
                    "schedulers": {name: sched.state_dict() for name, sched in step_fn.schedulers.items()},
                    "scaler": step_fn.scaler.state_dict(),
                    "epoch": epoch,
                    "history": history,
                    "best": best,
                    "params": to_dict(params),
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
        result = final_evaluation(exp, device, history, best)
    dist.barrier()
    return result
