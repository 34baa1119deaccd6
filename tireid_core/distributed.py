"""Multi-GPU / multi-node through PyTorch's own engine (torchrun + DDP).

Launch any training with `torchrun --nproc_per_node N ...`; torchrun sets RANK/WORLD_SIZE and the
engine joins the process group (NCCL on CUDA, gloo on CPU). Matching losses are computed on the
batch gathered from all ranks, with gradients, so a DDP run optimises the same objective as one
process with the whole batch.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env(device: torch.device) -> bool:
    """Join the process group when started by torchrun; returns True when distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """`x` of every rank put back in the order of the global batch; gradients flow back to each rank's part.

    Rank r holds items r, r + W, r + 2W, ... of the global batch (`data.samplers.rank_slice`), so the gathered parts
    are interleaved again: order-dependent losses (SSAN's mining draws one random key per anchor and candidate) see the
    batch exactly as one process would. Every rank must hold the same number of items.
    """
    if not is_distributed():
        return x
    if not x.is_floating_point():
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x)
    else:
        from torch.distributed.nn.functional import all_gather

        parts = list(all_gather(x))
    return torch.stack(parts, dim=1).reshape(-1, *x.shape[1:])


def average_gradients(grads) -> None:
    """Average gradient tensors over ranks in place, as DDP's reducer does during a backward pass; for steps that
    compute gradients with `torch.autograd.grad`, which DDP does not see. None entries (unused parameters, the same on
    every rank) are skipped; one all-reduce over the flattened tensors."""
    present = [g for g in grads if g is not None]
    if not is_distributed() or not present:
        return
    flat = torch.cat([g.reshape(-1) for g in present])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in present:
        g.copy_(flat[offset:offset + g.numel()].view(g.shape))
        offset += g.numel()


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average scalar logs over ranks (a rank's loss covers only its slice of each batch)."""
    if not is_distributed():
        return values
    keys = sorted(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(keys, t)}


def barrier() -> None:
    if is_distributed():
        dist.barrier()
