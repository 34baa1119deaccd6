"""One NAFS training step in the paper configuration, on random data: samples/s and peak memory.

    python benchmarks/bench_nafs_step.py [--batch 8] [--steps 3] [--device cpu|cuda] [--locality separate_passes]

Paper configuration (nafs.md §2, §4): staircase ResNet-50 (layer4 stride 1, branch copies of layer3/layer4, random init
here: no weights are downloaded) at 384×128, BERT-base at random init (bert-base-uncased config, no download), d = 768,
3 + 2 stripes, 2 sub-sentences, captions of 60 wordpieces, CMPM + CMPC + 0.1·CONT, 11,003 classes, Adam with the
paper's parameter groups. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.steptime import report, seconds_per_step, train_step  # noqa: E402
from tireid_core.models.nafs import NAFS  # noqa: E402
from tireid_core.params import load_run_params  # noqa: E402

BERT_CLS, BERT_SEP, BERT_VOCAB = 101, 102, 30522


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--words", type=int, default=60)
    ap.add_argument("--locality", default="separate_passes", choices=["separate_passes", "masked_single_pass"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    params = load_run_params("nafs", profile="paper", sets=[
        "nafs.model.pretrained=false", "nafs.model.text_pretrained=false", f"nafs.nafs.locality={args.locality}"])
    torch.manual_seed(0)
    model = NAFS(params, BERT_VOCAB, 11003, BERT_CLS, BERT_SEP).to(device).train()
    opt = torch.optim.Adam(model.param_groups(params), lr=params.train.lr, fused=True)  # as the engine
    n_params = sum(p.numel() for p in model.parameters())
    b, L = args.batch, args.words

    def step():
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(1000, BERT_VOCAB, (b, L), generator=g)
        ids[:, 0], ids[:, -1] = BERT_CLS, BERT_SEP
        pieces = torch.full((b, L), -1)
        third = (L - 2) // 3
        for k in range(3):  # three sub-sentences, the first two are used
            pieces[:, 1 + k * third: 1 + (k + 1) * third] = k
        batch = {"image": torch.randn(b, 3, 384, 128, generator=g), "ids": ids, "mask": torch.ones(b, L, dtype=torch.bool),
                 "pieces": pieces, "label": torch.arange(b) % max(b // 2, 1)}
        batch["epoch"] = 10
        train_step(model, opt, batch, params.train, device)

    elapsed = seconds_per_step(step, args.steps, device)
    print(f"NAFS paper configuration: {n_params / 1e6:.1f} M parameters (staircase ResNet-50 + BERT-base + heads, "
          f"CMPC W for 11,003 classes)")
    print(f"device {device}, batch {b} pairs, {L} wordpieces, locality {args.locality}, torch threads "
          f"{torch.get_num_threads()}")
    report(elapsed, b, device)


if __name__ == "__main__":
    main()
