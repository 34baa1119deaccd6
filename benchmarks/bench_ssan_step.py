"""One SSAN training step in the paper configuration, on random data: samples/s and peak memory.

    python benchmarks/bench_ssan_step.py [--batch 8] [--steps 3] [--device cpu|cuda] [--profile paper|demo|tiny]

Paper configuration (docs/ssan.md §2, §4): ResNet-50 (random init here: no weights are downloaded) at 384×128,
Bi-LSTM with 2048 hidden units per direction, 1024-d features, 6 parts, MV-NLN 512, 11,000 ID classes,
vocabulary 5,000, captions of 60 words with one weak (support) caption each, ID + compound ranking loss at an epoch
past alpha2_start_epoch (adaptive margins on). The step is the engine's (benchmarks/steptime.py: `model(batch)` under
the engine's autocast, fused Adam over `model.param_groups(params)`, scaler and scheduler, channels_last as the
parameters say); the batch is built once, before timing. ``--profile tiny`` is a seconds-long smoke run of the same
code. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.steptime import EngineStep, report, seconds_per_step  # noqa: E402
from tireid_core.models.ssan import SSAN  # noqa: E402
from tireid_core.params import load_run_params  # noqa: E402

VOCAB, CLASSES = 5000, 11000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--words", type=int, default=60)
    ap.add_argument("--epoch", type=int, default=10, help="model.start_epoch(epoch): the alpha2 schedule reads it")
    ap.add_argument("--profile", default="paper", choices=["paper", "demo", "tiny"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    params = load_run_params("ssan", profile=args.profile, sets=["ssan.model.pretrained=false"])
    torch.manual_seed(0)
    model = SSAN(params, vocab_size=VOCAB, num_classes=CLASSES, tokenizer=None)
    n_params = sum(p.numel() for p in model.parameters())
    step = EngineStep(model, params, device, epoch=args.epoch)
    b, L = args.batch, args.words
    h, w = params.data.height, params.data.width
    g = torch.Generator().manual_seed(1)
    batch = step.prepare({
        "image": torch.randn(b, 3, h, w, generator=g),
        "ids": torch.randint(1, VOCAB, (b, L), generator=g),
        "mask": torch.ones(b, L, dtype=torch.bool),
        "support_ids": torch.randint(1, VOCAB, (b, L), generator=g),  # the weak caption: a support set of one
        "support_mask": torch.ones(b, L, dtype=torch.bool),
        "label": torch.arange(b) % max(b // 2, 1),
    })

    elapsed = seconds_per_step(lambda: step(batch), args.steps, device)
    print(f"SSAN {args.profile} configuration: {n_params / 1e6:.1f} M parameters (incl. ID heads for {CLASSES:,} "
          "classes)")
    print(f"device {device}, {step.precision}, batch {b} captions (+{b} images {h}x{w}, +{b} weak captions), {L} "
          f"words, epoch {args.epoch}, torch threads {torch.get_num_threads()}")
    report(elapsed, b, device)


if __name__ == "__main__":
    main()
