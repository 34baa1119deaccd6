"""One NAFS training step in the paper configuration, on random data: samples/s and peak memory.

    python benchmarks/bench_nafs_step.py [--batch 8] [--steps 3] [--device cpu|cuda] [--locality separate_passes]
                                         [--profile paper|demo|tiny]

Paper configuration (docs/nafs.md §2, §4): staircase ResNet-50 (layer4 stride 1, branch copies of layer3/layer4,
random init here: no weights are downloaded) at 384×128, BERT-base at random init (bert-base-uncased config, no
download), d = 768, 3 + 2 stripes, 2 sub-sentences, captions of 60 wordpieces, CMPM + CMPC + 0.1·CONT, 11,003 classes.
The step is the engine's (benchmarks/steptime.py: `model(batch)` under the engine's autocast, fused Adam over the
paper's parameter groups `model.param_groups(params)`, scaler and scheduler); the batch is built once, before timing.
``--profile tiny`` is a seconds-long smoke run of the same code (small transformer, word vocabulary ids). Prints
figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.steptime import EngineStep, report, seconds_per_step  # noqa: E402
from tireid_core.models.nafs import NAFS  # noqa: E402
from tireid_core.params import load_run_params  # noqa: E402

BERT_CLS, BERT_SEP, BERT_VOCAB = 101, 102, 30522
CLASSES = 11003


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--words", type=int, default=60,
                    help="tokens per caption incl. [CLS]/[SEP] (at most data.max_words)")
    ap.add_argument("--epoch", type=int, default=10)
    ap.add_argument("--locality", default="separate_passes", choices=["separate_passes", "masked_single_pass"])
    ap.add_argument("--profile", default="paper", choices=["paper", "demo", "tiny"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    params = load_run_params("nafs", profile=args.profile, sets=[
        "nafs.model.pretrained=false", "nafs.model.text_pretrained=false", f"nafs.nafs.locality={args.locality}"])
    b, L = args.batch, args.words
    if L > params.data.max_words or L < 5:
        ap.error(f"--words must be in [5, data.max_words = {params.data.max_words}] for the {args.profile} profile")
    if params.model.text_encoder == "bert":
        vocab, tokens = BERT_VOCAB, SimpleNamespace(cls_id=BERT_CLS, sep_id=BERT_SEP)
    else:  # a word vocabulary with [CLS] and [SEP] after it, as WordTokenizer(cls_sep=True) numbers them
        vocab, tokens = 5002, SimpleNamespace(cls_id=5000, sep_id=5001)
    torch.manual_seed(0)
    model = NAFS(params, vocab, CLASSES, tokens)  # reads tokenizer.cls_id / sep_id only
    n_params = sum(p.numel() for p in model.parameters())
    step = EngineStep(model, params, device, epoch=args.epoch)
    h, w = params.data.height, params.data.width
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, min(tokens.cls_id, 5000), (b, L), generator=g)
    ids[:, 0], ids[:, -1] = tokens.cls_id, tokens.sep_id
    pieces = torch.full((b, L), -1)
    third = (L - 2) // 3
    for k in range(3):  # three sub-sentences, the first two are used
        pieces[:, 1 + k * third: 1 + (k + 1) * third] = k
    batch = step.prepare({"image": torch.randn(b, 3, h, w, generator=g), "ids": ids,
                          "mask": torch.ones(b, L, dtype=torch.bool), "pieces": pieces,
                          "label": torch.arange(b) % max(b // 2, 1)})

    elapsed = seconds_per_step(lambda: step(batch), args.steps, device)
    print(f"NAFS {args.profile} configuration: {n_params / 1e6:.1f} M parameters (staircase "
          f"{params.model.image_backbone} + {params.model.text_encoder} + heads, CMPC W for {CLASSES:,} classes)")
    print(f"device {device}, {step.precision}, batch {b} pairs ({h}x{w}), {L} tokens, locality {args.locality}, "
          f"torch threads {torch.get_num_threads()}")
    report(elapsed, b, device)


if __name__ == "__main__":
    main()
