"""Shared by the paper-step benchmarks: time the engine's own training step and report memory, alike for every method.

`EngineStep` wraps `tireid_core.engine.TrainStep` — the object `fit` calls once per iteration (batch to the device and
layout, autocast, the method's forward with all its losses, the finiteness check, scaled backward, clipping, fused
Adam, scheduler) — after the set-up `fit` does before its first epoch (channels_last, `model.train()`,
`start_epoch`, frozen BatchNorm when asked), and adds reading every loss term as a float, as the engine's running means
do. Not included: data loading, augmentation and collation (the benchmarks build one random batch up front, in pinned
memory on CUDA as the engine's DataLoader does), the DistributedDataParallel wrapper and cross-rank gathers (one
process: `gather_with_grad` is the identity), per-epoch reseeding, the progress bar, evaluation and checkpoints.
"""
from __future__ import annotations

import resource
import time
from typing import Callable

import torch
import torch.nn as nn

from tireid_core.engine import TrainStep, _set_bn_eval


class EngineStep:
    """One training step of `engine.fit` for `model` under `params`."""

    def __init__(self, model: nn.Module, params, device: torch.device, epoch: int = 0, steps_per_epoch: int = 1000):
        tp = params.train
        self.epoch, self.steps, self.device = epoch, 0, device
        model.to(device)
        if tp.channels_last:
            model.to(memory_format=torch.channels_last)
        self.step = TrainStep.build(model, params, device, steps_per_epoch)
        model.train()
        model.start_epoch(epoch)
        if tp.freeze_bn:
            _set_bn_eval(model)

    @property
    def precision(self) -> str:
        if self.step.scaler.is_enabled():
            return "float16 autocast + grad scaling"
        return "bfloat16 autocast" if self.step.autocast_dtype == torch.bfloat16 else "float32"

    def prepare(self, batch: dict) -> dict:
        """A collated CPU batch as the engine's DataLoader hands it over (pinned memory on CUDA)."""
        if self.device.type != "cuda":
            return batch
        return {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}

    def __call__(self, batch: dict) -> dict[str, float]:
        terms = self.step(batch, self.epoch, self.steps)
        self.steps += 1
        return {k: float(v.detach()) for k, v in terms.items()}


def seconds_per_step(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Mean wall time of `steps` calls after one warm-up call; peak GPU memory counts from after the warm-up."""
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def report(elapsed: float, batch: int, device: torch.device) -> None:
    print(f"training step: {elapsed:.2f} s  ->  {batch / elapsed:.2f} samples/s")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"peak process RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
