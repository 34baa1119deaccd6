"""Shared by the paper-step benchmarks: time a training step and report memory, the same way for every method."""
from __future__ import annotations

import resource
import time
from typing import Callable

import torch


def train_step(model, opt, batch: dict, train_params, device: torch.device) -> None:
    """One optimiser step (mixed precision on CUDA, as the engine does)."""
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with torch.autocast(device.type, enabled=device.type == "cuda"):
        loss = model(batch, train_params)["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


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
