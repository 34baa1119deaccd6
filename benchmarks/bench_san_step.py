"""One SAN training step in the paper configuration, on random data: samples/s and peak memory.

    python benchmarks/bench_san_step.py [--batch 8] [--steps 3] [--device cpu|cuda] [--profile paper|demo|tiny]
                                        [--update same_forward|reforward|joint] [--no-decoder]

Paper configuration (docs/san.md §2, §4): ResNet-50 with last stride 1 (random init here: no weights are downloaded)
at 256×128, SA-Dec 512/256/64/32/16 regressing a 256×256 texture, 767 ID classes (CUHK03-NP), batch of P identity
blocks of K = 4 images, ID (label smoothing) + batch-hard triplet + L1 texture + L_TR on fd1..fd4, the two-step
update (`--update`, default same_forward: two gradients of one forward pass, the AMSGrad ReID optimiser and the two
texture optimisers). `--no-decoder` times the ResNet baseline row. The step is the engine's (benchmarks/steptime.py:
`TrainStep` with the model's own optimisers and gradient routes, autocast and scaler as the parameters say); the batch
is built once, before timing. `--profile demo` times the demo's step and prints the epoch it implies
(steps per epoch = training identities without the val ones / P). Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.steptime import EngineStep, report, seconds_per_step  # noqa: E402
from tireid_core.models.san import SAN  # noqa: E402
from tireid_core.params import load_run_params, load_section  # noqa: E402

CLASSES = 767  # CUHK03-NP training identities


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8, help="a multiple of K = 4")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--profile", default="paper", choices=["paper", "demo", "tiny"])
    ap.add_argument("--update", default=None, choices=["same_forward", "reforward", "joint"])
    ap.add_argument("--no-decoder", action="store_true", help="the ResNet baseline row (ID + triplet only)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.batch % 4:
        ap.error("--batch must be a multiple of K = 4 (the L_TR triplets need identity blocks of 4)")
    device = torch.device(args.device)
    sets = ["san.model.pretrained=false", f"san.train.batch_size={args.batch}",
            f"san.data.ids_per_batch={args.batch // 4}"]
    if args.update:
        sets.append(f"san.san.texture_update={args.update}")
    if args.no_decoder:
        sets.append("san.san.decoder=false")
    params = load_run_params("san", profile=args.profile, sets=sets)
    torch.manual_seed(0)
    model = SAN(params, 0, CLASSES)
    n_params = sum(p.numel() for p in model.parameters())
    n_decoder = sum(p.numel() for p in model.decoder.parameters()) if model.decoder is not None else 0
    step = EngineStep(model, params, device)
    b, (h, w), (th, tw) = args.batch, (params.data.height, params.data.width), params.san.texture_size
    g = torch.Generator().manual_seed(1)
    batch = step.prepare({
        "image": torch.randn(b, 3, h, w, generator=g),
        "texture": torch.rand(b, 3, th, tw, generator=g) * 2 - 1,
        "label": torch.arange(b // 4).repeat_interleave(4),  # P identity blocks of K = 4
    })

    elapsed = seconds_per_step(lambda: step(batch), args.steps, device)
    s = params.san
    print(f"SAN {args.profile} configuration: {n_params / 1e6:.1f} M parameters ({n_decoder / 1e6:.2f} M in SA-Dec; "
          f"ID head for {CLASSES} classes); decoder {'on' if s.decoder else 'off'}, update {s.texture_update}, "
          f"optimisers {', '.join(step.step.optimizers)}")
    print(f"device {device}, {step.precision}, batch {b} images {h}x{w} (P = {b // 4} x K = 4), texture {th}x{tw}, "
          f"torch threads {torch.get_num_threads()}")
    report(elapsed, b, device)
    if args.profile == "demo":
        market = load_section("simpedes", None)
        ids = market["ids_train"] - params.data.val_ids
        steps = ids // params.data.ids_per_batch
        print(f"demo epoch at this step time: {ids} training identities / P = {params.data.ids_per_batch} -> {steps} "
              f"steps -> about {steps * elapsed:.0f} s of training per epoch (at --batch "
              f"{4 * params.data.ids_per_batch}; evaluation not included)")


if __name__ == "__main__":
    main()
