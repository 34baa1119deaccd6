"""One SSAN training step in the paper configuration, on random data: samples/s and peak memory.

    python benchmarks/bench_ssan_step.py [--batch 8] [--steps 3] [--device cpu|cuda]

Paper configuration (ssan.md §2, §4): ResNet-50 (random init here: no weights are downloaded) at 384×128,
Bi-LSTM with 2048 hidden units per direction, 1024-d features, 6 parts, MV-NLN 512, 11,000 ID classes,
vocabulary 5,000, captions of 60 words, ID + compound ranking loss, Adam. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.steptime import report, seconds_per_step, train_step  # noqa: E402
from tireid_core.models.ssan import SSAN  # noqa: E402
from tireid_core.params import load_run_params  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--words", type=int, default=60)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    params = load_run_params("ssan", profile="paper", sets=["ssan.model.pretrained=false"])
    torch.manual_seed(0)
    model = SSAN(params, vocab_size=5000, num_classes=11000).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as the engine
    n_params = sum(p.numel() for p in model.parameters())
    b, L = args.batch, args.words

    def step():
        g = torch.Generator().manual_seed(1)
        batch = {
            "image": torch.randn(b, 3, 384, 128, generator=g),
            "ids": torch.randint(1, 5000, (b, L), generator=g),
            "mask": torch.ones(b, L, dtype=torch.bool),
            "weak_ids": torch.randint(1, 5000, (b, L), generator=g),
            "weak_mask": torch.ones(b, L, dtype=torch.bool),
            "label": torch.arange(b) % max(b // 2, 1),
        }
        batch["epoch"] = 10
        train_step(model, opt, batch, params.train, device)

    elapsed = seconds_per_step(step, args.steps, device)
    print(f"SSAN paper configuration: {n_params / 1e6:.1f} M parameters (incl. ID heads for 11,000 classes)")
    print(f"device {device}, batch {b} captions (+{b} images, +{b} weak captions), {L} words, torch threads "
          f"{torch.get_num_threads()}")
    report(elapsed, b, device)


if __name__ == "__main__":
    main()
