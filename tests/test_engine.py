"""Training engine: determinism, outputs, resume after an interruption, DDP parity, devices."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tireid_core.engine import fit
from tireid_core.experiment import build_experiment
from tireid_core.methods import available_methods
from tireid_core.runtime import resolve_device

REPO = Path(__file__).resolve().parent.parent


def _train(params, **kw):
    exp = build_experiment(params)
    return exp, fit(exp, **kw)


def test_same_params_same_metrics(tiny_params, tmp_path):
    exp_a, a = _train(tiny_params())
    exp_b, b = _train(tiny_params(f"baseline.out_dir={tmp_path / 'again'}"))
    assert a["summary"] == b["summary"]
    assert [h["train/loss"] for h in a["history"]] == [h["train/loss"] for h in b["history"]]


def test_run_writes_resolved_params_metrics_and_records(tiny_params):
    exp, result = _train(tiny_params())
    run = exp.run_dir
    resolved = yaml.safe_load((run / "params.resolved.yaml").read_text())
    assert resolved["train"]["epochs"] == 2 and resolved["data"]["root"] == exp.params.data.root
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"best", "last", "selection_split"}
    assert metrics["selection_split"] == "val"
    assert set(metrics["best"]["test"]) == {"R@1", "R@5", "R@10", "rSum", "mAP", "mINP"}
    record = json.loads((run / "eval" / "test_best.json").read_text())["final"]
    assert record["ap_convention"] == "noninterp" and record["row"] == "best" and record["split"] == "test"
    assert record["n_queries_valid"] == len(exp.test_set.captions)
    assert (run / "dvclive" / "plots" / "metrics" / "val" / "R@1.tsv").exists()
    # checkpoints are plain tensors and containers: loadable with weights_only=True
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and len(state["history"]) == 2
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["epoch"] == metrics["best"]["epoch"]


class Interrupted(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted_run(tiny_params, tmp_path):
    sets = ("baseline.train.epochs=3",)
    _, full = _train(tiny_params(*sets, f"baseline.out_dir={tmp_path / 'full'}"))

    def stop_after_first_epoch(epoch, record):
        if epoch == 0:
            raise Interrupted

    params = tiny_params(*sets, f"baseline.out_dir={tmp_path / 'interrupted'}")
    with pytest.raises(Interrupted):
        _train(params, on_epoch_end=stop_after_first_epoch)
    assert not (tmp_path / "interrupted" / "metrics.json").exists()
    _, resumed = _train(params, resume=True)
    assert resumed["summary"] == full["summary"]
    assert [h["train/loss"] for h in resumed["history"]] == [h["train/loss"] for h in full["history"]]


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def ddp_parity(method: str, params_file: Path, data_root: Path, tmp_path: Path, pythonpath: Path = REPO,
               extra: tuple = ()) -> None:
    """Train `method` for one tiny epoch as one process and as 2 gloo processes over the same global batches; the
    losses and weights must agree. Exact parity needs the same objective: frozen BN statistics, no dropout, no random
    flip, float32 (bfloat16 rounding depends on how the batch is split)."""
    common = [f"{method}.train.freeze_bn=true", f"{method}.train.cpu_bf16=false", f"{method}.model.text_dropout=0.0",
              f"{method}.model.bert_dropout=0.0",
              f"{method}.data.hflip=false", f"{method}.data.root={data_root}", f"{method}.train.epochs=1", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(pythonpath)}

    def run(out, launcher):
        cmd = [*launcher, "-m", "tireid_core.train", method, "--row", "full", "--params", str(params_file),
               "--profile", "tiny", *sum((["--set", s] for s in [*common, f"{method}.out_dir={out}"]), [])]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=pythonpath)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return torch.load(out / "full" / "checkpoints" / "last.pt", weights_only=True)

    single = run(tmp_path / "single", [sys.executable])
    ddp = run(tmp_path / "ddp", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])
    for h1, h2 in zip(single["history"], ddp["history"]):
        for key in h1:
            if key.startswith("train/"):
                assert h2[key] == pytest.approx(h1[key], rel=1e-4, abs=1e-5), key
    # Adam normalises gradients, so float-order differences in near-zero gradients move a weight by up to
    # a fraction of one step (lr = 1e-3); a wrong objective would drift by many steps.
    for name, w in single["model"].items():
        if w.is_floating_point():
            assert torch.allclose(w, ddp["model"][name], atol=2e-3, rtol=0), name


# Dropout a method keeps under its own keys (the generic ones are switched off in `ddp_parity`)
NO_DROPOUT = {"lcr2s_teacher": ["lcr2s_teacher.lcr2s.mhaf_dropout=0.0"], "lcr2s": ["lcr2s.lcr2s.mhaf_dropout=0.0"]}


@pytest.mark.slow
@pytest.mark.parametrize("method", available_methods())
def test_ddp_two_cpu_processes_match_single_process(method, tmp_path, tiny_simpedes, stand_in_sets, read_sets):
    extra = (*stand_in_sets(method), *read_sets(method), *NO_DROPOUT.get(method, []))
    ddp_parity(method, REPO / "params.yaml", tiny_simpedes, tmp_path, extra=extra)


def test_image_cache_gives_the_same_run(tiny_params, tmp_path):
    """data.cache_images only saves decoding: same losses and metrics, and the cache is filled once per image."""
    exp_a, a = _train(tiny_params("baseline.data.cache_images=false"))
    exp_b, b = _train(tiny_params("baseline.data.cache_images=true", f"baseline.out_dir={tmp_path / 'cached'}"))
    assert exp_a.image_cache is None
    n_images = len({p.path for p in exp_b.train_set.pairs}) + len(exp_b.val_set.image_paths) + len(exp_b.test_set.image_paths)
    assert len(exp_b.image_cache) == n_images
    assert a["summary"] == b["summary"]
    assert [h["train/loss"] for h in a["history"]] == [h["train/loss"] for h in b["history"]]


def test_image_loader_flip_matches_torchvision(tiny_simpedes):
    from tireid_core.data.datasets import read_image
    from tireid_core.data.transforms import ImageLoader, build_image_transform

    path = next(Path(tiny_simpedes).glob("imgs/**/*.png"))
    reference = build_image_transform(48, 16, train=True)
    cache: dict = {}
    loader = ImageLoader(48, 16, train=True, cache=cache)
    for seed in range(6):  # both outcomes of the flip
        torch.manual_seed(seed)
        expected = reference(read_image(path))
        torch.manual_seed(seed)
        assert torch.equal(loader(path), expected)
    assert len(cache) == 1
    assert torch.equal(ImageLoader(48, 16, train=False)(path), build_image_transform(48, 16, train=False)(read_image(path)))


def test_channels_last_run_uses_nhwc_weights(tiny_params, tmp_path):
    exp, result = _train(tiny_params("baseline.train.channels_last=true"))
    conv = next(m for m in exp.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert result["summary"]["best"]["test"]["R@1"] >= 0


@pytest.mark.parametrize("method", ["baseline", "ssan", "nafs", "cmr"])
def test_channels_last_gives_the_same_image_features(tiny_params, method):
    """NHWC is a layout, not a different model: stripes, pooling and heads see the same numbers."""
    exp = build_experiment(tiny_params(section=method))
    model = exp.model.eval()
    images = torch.randn(3, 3, exp.params.data.height, exp.params.data.width)
    with torch.no_grad():
        nchw = model.encode_images(images)
        model.to(memory_format=torch.channels_last)
        nhwc = model.encode_images(images.contiguous(memory_format=torch.channels_last))
    flat = lambda x: torch.cat([t.flatten() for t in (x.values() if isinstance(x, dict) else [x])])  # noqa: E731
    assert torch.allclose(flat(nchw), flat(nhwc), atol=1e-5, rtol=1e-4)


BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()


@pytest.mark.skipif(BF16, reason="this CPU supports bfloat16")
def test_cpu_bf16_without_native_support_is_a_clear_error(tiny_params):
    with pytest.raises(ValueError, match=r"baseline.train.cpu_bf16: this CPU has no native bfloat16"):
        _train(tiny_params("baseline.train.cpu_bf16=true", "baseline.train.device=cpu"))


@pytest.mark.skipif(not BF16, reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")
def test_cpu_bf16_trains_in_bfloat16_and_evaluates_in_float32(tiny_params, tmp_path):
    """train.cpu_bf16: bfloat16 autocast for training steps only; evaluation features stay float32; repeatable."""
    params = tiny_params("baseline.train.cpu_bf16=true", "baseline.train.device=cpu")
    exp = build_experiment(params)
    seen = {True: set(), False: set()}
    conv = next(m for m in exp.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda mod, inp, out: seen[mod.training].add(out.dtype))
    first = fit(exp)
    assert seen[True] == {torch.bfloat16} and seen[False] == {torch.float32}
    _, again = _train(tiny_params("baseline.train.cpu_bf16=true", "baseline.train.device=cpu",
                                  f"baseline.out_dir={tmp_path / 'again'}"))
    assert first["summary"] == again["summary"]


def test_resume_refuses_changed_parameters(tiny_params, tmp_path):
    out = f"baseline.out_dir={tmp_path / 'r'}"
    _train(tiny_params(out, "baseline.train.epochs=1"))
    with pytest.raises(ValueError, match=r"cannot resume with changed parameters \(baseline.train.lr: 0.001 in the "
                                         r"checkpoint, 0.01 now\)"):
        _train(tiny_params(out, "baseline.train.epochs=2", "baseline.train.lr=0.01"), resume=True)
    _, extended = _train(tiny_params(out, "baseline.train.epochs=2"), resume=True)  # more epochs: allowed
    assert len(extended["history"]) == 2


def test_divergence_stops_at_the_first_non_finite_loss(tiny_params):
    with pytest.raises(ValueError, match=r"training diverged at epoch 1, step \d+: loss term\(s\) .*not finite"):
        _train(tiny_params("baseline.train.lr=1e30", "baseline.train.warmup_epochs=0"))


def test_outputs_follow_the_umask(tiny_params):
    exp, _ = _train(tiny_params())
    for name in ("metrics.json", "params.resolved.yaml", "history.json"):
        mode = (exp.run_dir / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~_umask(), (name, oct(mode))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("content", [b"", b"garbage", None])
def test_bad_checkpoints_are_named(tmp_path, content):
    from tireid_core.io import CheckpointError, atomic_torch_save, load_checkpoint

    path = tmp_path / "last.pt"
    if content is None:
        atomic_torch_save({"weights": torch.zeros(2)}, path)  # a torch file, but not one of this project
        with pytest.raises(CheckpointError, match=r"last.pt: holds a dict with keys \['weights'\], not a checkpoint"):
            load_checkpoint(path)
    else:
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=r"last.pt: not a readable checkpoint"):
            load_checkpoint(path)


def test_checkpoint_of_another_model_is_named(tiny_params, tmp_path):
    from tireid_core.io import CheckpointError, load_checkpoint, load_model_state

    exp, _ = _train(tiny_params())
    other = build_experiment(tiny_params("baseline.model.feature_dim=8", f"baseline.out_dir={tmp_path / 'o'}"))
    path = exp.run_dir / "checkpoints" / "best.pt"
    with pytest.raises(CheckpointError, match=r"best.pt: does not fit the model of these parameters.*size mismatch"):
        load_model_state(other.model, load_checkpoint(path), path)


def test_a_corrupt_image_fails_before_training(tiny_params, tmp_path):
    import shutil

    from tireid_core.data.records import DatasetError

    root = tmp_path / "data"
    shutil.copytree(tiny_params().data.root, root)
    victim = sorted((root / "imgs").rglob("*.png"))[-1]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated
    with pytest.raises(DatasetError, match=rf"1 image\(s\) cannot be read:\n  cannot decode image .*{victim.name}"):
        build_experiment(tiny_params(f"baseline.data.root={root}"))


def test_reid_val_split_holds_out_evenly_spaced_identities():
    from pathlib import Path as P

    from tireid_core.data.records import ReIDImage
    from tireid_core.experiment import reid_val_split

    images = [ReIDImage(P(f"/x/{pid}_{k}.png"), pid, cam) for pid in (2, 4, 6, 8, 10, 12)
              for k, cam in enumerate((0, 0, 1) if pid != 8 else (3, 3, 3))]
    train, val = reid_val_split(images, 3, "m.data.val_ids")
    assert sorted({im.pid for im in train}) == [4, 8, 12]  # ids 2, 6, 10: positions 0, 2, 4 of 6 sorted ids
    assert [im.path.name for im in val.query] == ["2_0.png", "6_0.png", "10_0.png"]  # a camera another image lacks
    assert len(val.gallery) == 6 and not set(val.query) & set(val.gallery)
    _, one_camera = reid_val_split(images, 2, "m.data.val_ids")  # ids 2 and 8; 8 was seen by camera 4 only
    assert [im.pid for im in one_camera.query] == [2] and {im.pid for im in one_camera.gallery} == {2, 8}
    with pytest.raises(ValueError, match="m.data.val_ids: 5 val identities leave fewer than 2"):
        reid_val_split(images, 5, "m.data.val_ids")
