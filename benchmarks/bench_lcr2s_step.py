"""One LCR²S training step in the paper configuration, on random data: teacher step and student step, samples/s and
peak memory.

    python benchmarks/bench_lcr2s_step.py [--batch 4] [--steps 2] [--k 2] [--device cpu|cuda] [--profile paper|demo|tiny]

Paper configuration (docs/lcr2s.md §2, §4; reconstruction): ResNet-50 (random init here: no weights are downloaded)
at 384×128, a 12×4 map of 2048 channels; BERT-base (random init from its known config), frozen, 64 tokens; TextCNN
768 → 1024 → 2048; d = 2048; MHAF with 8 heads per modality; CMPM. Teacher step: every sample with K support images
and K support captions, (K+1)× the encoder work. Student step: its own single-input pass with view-query reasoning,
backward through it, and the frozen teacher's forward on the sample and its supports (the distillation targets).
The step is the engine's (benchmarks/steptime.py); the batch is built once, before timing. ``--profile tiny`` is a
seconds-long smoke run of the same code. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.steptime import EngineStep, report, seconds_per_step  # noqa: E402
from tireid_core.models.lcr2s import LCR2S  # noqa: E402
from tireid_core.models.lcr2s_teacher import LCR2STeacher  # noqa: E402
from tireid_core.params import load_run_params  # noqa: E402

CLASSES, VOCAB = 11003, 30522  # CUHK-PEDES training identities; BERT-base's vocabulary


def random_init(section: str, profile: str, k: int) -> list[str]:
    """No downloads: ResNet-50 and BERT-base (config known offline) from random weights; K supports."""
    sets = [f"{section}.model.pretrained=false", f"{section}.model.text_pretrained=false",
            f"{section}.data.support_images={k}", f"{section}.data.support_captions={k}"]
    if profile != "paper":  # the demo and tiny stand-ins are pipeline outputs: use BERT-base's config at their width
        sets.append(f"{section}.model.text_model=bert-base-uncased")
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--k", type=int, default=2, help="support size K")
    ap.add_argument("--words", type=int, default=64)
    ap.add_argument("--profile", default="paper", choices=["paper", "demo", "tiny"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    b, k, L = args.batch, args.k, args.words
    teacher_params = load_run_params("lcr2s_teacher", profile=args.profile,
                                     sets=random_init("lcr2s_teacher", args.profile, k))
    student_params = load_run_params("lcr2s", profile=args.profile, sets=random_init("lcr2s", args.profile, k))
    h, w = teacher_params.data.height, teacher_params.data.width
    g = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.randn(b, 3, h, w, generator=g),
        "ids": torch.randint(1000, VOCAB, (b, L), generator=g),
        "mask": torch.ones(b, L, dtype=torch.bool),
        "support_images": torch.randn(b, k, 3, h, w, generator=g),
        "support_images_self": torch.zeros(b, k, dtype=torch.bool),
        "support_ids": torch.randint(1000, VOCAB, (b * k, L), generator=g),
        "support_mask": torch.ones(b * k, L, dtype=torch.bool),
        "support_captions_self": torch.zeros(b, k, dtype=torch.bool),
        "label": torch.arange(b) % max(b // 2, 1),
    }
    torch.manual_seed(0)
    teacher = LCR2STeacher(teacher_params, 0, CLASSES)
    n_teacher = sum(p.numel() for p in teacher.parameters())
    n_trained = sum(p.numel() for p in teacher.parameters() if p.requires_grad)
    print(f"LCR²S {args.profile} configuration, K = {k}: teacher {n_teacher / 1e6:.1f} M parameters "
          f"({n_trained / 1e6:.2f} M trained; BERT frozen: {teacher_params.lcr2s.bert_frozen})")
    time_step("teacher", teacher, teacher_params, batch, device, args.steps,
              f"batch {b} samples (+{b * k} support images {h}x{w}, +{b * k} support captions), {L} tokens")

    teacher.requires_grad_(False).eval()
    student = LCR2S(student_params, 0, CLASSES, teacher=teacher)
    n_student = sum(p.numel() for p in student.parameters() if p.requires_grad)
    print(f"student: {n_student / 1e6:.2f} M trained parameters, reasoner {student_params.lcr2s.reasoner}, "
          f"lambda_f {student_params.lcr2s.lambda_f:g}, lambda_r {student_params.lcr2s.lambda_r:g}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    time_step("student", student, student_params, batch, device, args.steps,
              f"batch {b} samples; the frozen teacher's forward on the samples and their supports included")


def time_step(name: str, model, params, batch: dict, device: torch.device, steps: int, what: str) -> None:
    step = EngineStep(model, params, device)
    on_device = step.prepare(batch)
    elapsed = seconds_per_step(lambda: step(on_device), steps, device)
    print(f"[{name}] device {device}, {step.precision}, {what}, torch threads {torch.get_num_threads()}")
    report(elapsed, len(batch["image"]), device)


if __name__ == "__main__":
    main()
