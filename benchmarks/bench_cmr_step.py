"""One CMR training step in the paper configuration, on random data: samples/s and peak memory.

    python benchmarks/bench_cmr_step.py [--batch 8] [--steps 3] [--device cpu|cuda] [--profile paper|demo|tiny]

Paper configuration (docs/cmr.md §2, §4): CLIP ViT-B/16 at 384×128 (a 24×8 patch grid, the position table resized)
and CLIP's 12-layer text transformer, both built from their published sizes at random initialisation (no weights are
downloaded); the shared decoder with 2 coarse + 8 fine queries, depth 4, width 512; 11,003 ID classes; captions of
`--words` tokens (CLIP's context is 77); SDM + ID + coarse ranking + L_CMR (H1_intra, minmax) on every fine part. The
step is the engine's (benchmarks/steptime.py: `model(batch)` under the engine's autocast, fused Adam over
`model.param_groups(params)` with PLOT's groups and eps, scaler and scheduler); the batch is built once, before timing.
``--profile demo`` / ``tiny`` build the demo's / tiny profile's sizes from the CLIP stand-in's config (make it first:
`dvc repro pretrain_clip`). Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.steptime import EngineStep, report, seconds_per_step  # noqa: E402
from tireid_core.models.cmr import CMR  # noqa: E402
from tireid_core.params import load_run_params  # noqa: E402

CLASSES = 11003


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--words", type=int, default=60, help="caption length in tokens, start and end of text included")
    ap.add_argument("--profile", default="paper", choices=["paper", "demo", "tiny"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    sets = ["cmr.model.pretrained=false", "cmr.model.text_pretrained=false"]  # the architecture, random weights
    params = load_run_params("cmr", profile=args.profile, sets=sets)
    torch.manual_seed(0)
    model = CMR(params, vocab_size=0, num_classes=CLASSES, tokenizer=None)
    n_params = sum(p.numel() for p in model.parameters())
    step = EngineStep(model, params, device)
    text = model.text_encoder.text.config
    b, L = args.batch, min(args.words, params.data.max_words)
    h, w = params.data.height, params.data.width
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, text.vocab_size, (b, L), generator=g)
    ids[:, 0], ids[:, -1] = text.bos_token_id, text.eos_token_id  # start and end of text
    batch = step.prepare({
        "image": torch.randn(b, 3, h, w, generator=g),
        "ids": ids,
        "mask": torch.ones(b, L, dtype=torch.bool),
        "label": torch.arange(b) % max(b // 2, 1),
    })
    elapsed = seconds_per_step(lambda: step(batch), args.steps, device)
    c = params.cmr
    print(f"CMR {args.profile} configuration: {n_params / 1e6:.1f} M parameters (incl. the ID classifier for "
          f"{CLASSES:,} classes); patch grid {model.image_encoder.grid[0]}x{model.image_encoder.grid[1]}, "
          f"{c.n_coarse} coarse + {c.n_fine} fine queries, decoder depth {c.decoder_depth}, commonality "
          f"{c.commonality}")
    print(f"device {device}, {step.precision}, batch {b} (images {h}x{w}, captions of {L} tokens), torch threads "
          f"{torch.get_num_threads()}")
    report(elapsed, b, device)


if __name__ == "__main__":
    main()
