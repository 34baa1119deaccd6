"""SAN model: the paper and demo shapes, initialisation, Euclidean scores, texture targets, parameter errors, and the
three update modes computing exactly the gradients they claim; a resumed SAN run (several optimisers) matches."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tireid_core.data.records import DatasetError, ReIDImage
from tireid_core.engine import TrainStep, lr_lambda
from tireid_core.losses import batch_hard_triplet_loss
from tireid_core.methods import RetrievalModel, get_method
from tireid_core.metrics import reid_metrics
from tireid_core.models.san import SAN, TextureTargets, texture_files
from tireid_core.params import ParamsError, load_run_params

REPO = Path(__file__).resolve().parent.parent


def make(*sets, classes=4, profile="tiny"):
    """The real architecture from random weights (unit tests do not need the image stand-in file)."""
    params = load_run_params("san", params_file=REPO / "params.yaml", profile=profile,
                             sets=["san.model.pretrained=false", *sets])
    torch.manual_seed(0)
    return SAN(params, 0, classes), params


def batch(params, p=2, seed=1):
    """P identity blocks of K = 4 images with exact-looking texture targets."""
    g = torch.Generator().manual_seed(seed)
    h, w = params.data.height, params.data.width
    th, tw = params.san.texture_size
    return {"image": torch.randn(4 * p, 3, h, w, generator=g),
            "texture": torch.rand(4 * p, 3, th, tw, generator=g) * 2 - 1,
            "label": torch.arange(p).repeat_interleave(4)}


def test_paper_configuration_shapes_follow_the_spec():
    model, params = make(profile="paper", classes=767)
    assert isinstance(model, RetrievalModel) and get_method("san").model is SAN and get_method("san").task == "image_reid"
    model.eval()
    x = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        maps = model.backbone(x)
        texture, levels = model.decoder(maps)
    assert [tuple(maps[f"layer{i}"].shape[1:]) for i in range(1, 5)] == [(256, 64, 32), (512, 32, 16), (1024, 16, 8),
                                                                      (2048, 16, 8)]  # last stride 1
    assert [tuple(fd.shape[1:]) for fd in levels] == [(256, 32, 16), (64, 64, 32), (32, 128, 64), (16, 256, 128)]
    assert texture.shape == (1, 3, 256, 256)
    n_decoder = sum(p.numel() for p in model.decoder.parameters())
    assert 9.0e6 < n_decoder < 9.2e6  # the spec's ≈ 9.07 M, mostly in up1's 512-channel block
    assert model.encode_images(x)["global"].shape == (1, 2048)  # gap2048: the paper's f
    fc, _ = make("san.san.embedding=fc512", profile="paper", classes=767)
    assert fc.eval().encode_images(x)["global"].shape == (1, 512) and fc.classifier.in_features == 512


def test_demo_configuration_shapes():
    model, params = make(profile="demo", classes=350)
    x = torch.randn(2, 3, 48, 16)
    texture, levels = model.decode(x)
    # the small backbone's strides are 2, 2, 4, 4: up2 meets fe1 at fe2's resolution (x1), fd4 is twice the input
    assert [tuple(fd.shape[1:]) for fd in levels] == [(16, 24, 8), (8, 24, 8), (8, 48, 16), (8, 96, 32)]
    assert texture.shape == (2, 3, 72, 64)  # SimPEDES' atlas size
    assert model.encode_images(x)["global"].shape == (2, 128)


def test_decoder_initialisation_is_the_official_one():
    model, _ = make(profile="paper")
    conv = model.decoder.up1.res[0].weight
    fan_in, fan_out = conv.shape[1] * 9, conv.shape[0] * 9
    assert conv.std().item() == pytest.approx(0.02 * (2 / (fan_in + fan_out)) ** 0.5, rel=0.05)
    bn = model.decoder.up1.res[1].weight
    assert abs(bn.mean().item() - 1) < 0.01 and bn.std().item() == pytest.approx(0.02, rel=0.2)
    assert (model.decoder.final[1].bias == 0).all() and (model.classifier.bias == 0).all()
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.1)


def test_similarities_are_negative_euclidean_distances():
    model, _ = make()
    q = {"global": torch.tensor([[0.0, 0.0], [3.0, 4.0]])}
    g = {"global": torch.tensor([[0.0, 1.0], [3.0, 0.0], [3.0, 4.5]])}
    s = model.similarities(g, q)["final"]
    assert torch.allclose(s, -torch.tensor([[1.0, 3.0, 5.408326], [4.242641, 4.0, 0.5]]), atol=1e-5)
    # the evaluator ranks -s ascending: query 0's nearest gallery item is 0, query 1's is 2
    m = reid_metrics(-s, torch.tensor([1, 2]), torch.tensor([1, 3, 2]), torch.tensor([0, 0]), torch.tensor([1, 1, 1]))
    assert m["R@1"] == 100.0


def test_forward_terms_and_their_groups():
    model, params = make()
    terms = model(batch(params))
    assert set(terms) == {"id", "triplet", "reid", "rec", "tr", "texture", "loss"}
    assert torch.allclose(terms["reid"], terms["id"] + terms["triplet"])
    assert torch.allclose(terms["texture"], terms["rec"] + terms["tr"])
    assert torch.allclose(terms["loss"], terms["reid"] + terms["texture"])
    # the decoder starts near zero (gain 0.02): every fixed triplet sits at the margin, P - 1 = 1 per level
    assert terms["tr"].item() == pytest.approx(4 * 0.3, abs=1e-3)
    f = model.embed(model.backbone(batch(params)["image"])["layer4"])
    assert terms["triplet"].item() == pytest.approx(batch_hard_triplet_loss(f, batch(params)["label"]).item(), rel=1e-5)
    base, _ = make("san.san.decoder=false")
    assert set(base(batch(params))) == {"id", "triplet", "reid", "loss"} and base.decoder is None
    only_rec, _ = make("san.san.tr_weight=0.0")
    assert "tr" not in only_rec(batch(params))


def test_input_image_target_is_the_input_in_minus_one_one():
    model, params = make("san.san.rec_target=input_image")
    pixels = torch.rand(1, 3, 48, 16)
    mean, std = model.pixel_mean, model.pixel_std
    target = model.input_texture((pixels - mean) / std)
    expected = torch.nn.functional.interpolate(pixels * 2 - 1, size=(72, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(target, expected, atol=1e-5)
    assert model.train_targets([]) is None  # no texture file is read


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def test_atlas_targets_are_the_exact_atlas(tmp_path):
    _, params = make(f"san.data.root={tmp_path}")
    atlas = np.random.default_rng(0).integers(0, 256, (72, 64, 3))
    _write_png(tmp_path / "textures" / "0007.png", atlas)
    image = ReIDImage(tmp_path / "market" / "bounding_box_train" / "0007_c1s1_000025_00.png", 7, 0)
    targets = TextureTargets(texture_files(params, [image]), (72, 64), 255.0)
    texture = targets(image)["texture"]
    assert texture.shape == (3, 72, 64)
    assert torch.allclose(texture, torch.from_numpy(atlas).permute(2, 0, 1).float() / 127.5 - 1, atol=1e-6)
    with pytest.raises(DatasetError, match="1 texture target.*0009.png"):
        texture_files(params, [ReIDImage(image.path, 9, 0)])


def test_released_targets_are_resized_and_scaled(tmp_path):
    folder = tmp_path / "texture_cuhk03_labeled"
    _write_png(folder / "1_001_1_01.png", np.full((64, 64, 3), 225))
    _, params = make(f"san.data.root={tmp_path}", "san.san.pg_source=released",
                     "san.san.pg_dir=texture_cuhk03_labeled", "san.san.texture_size=[256, 256]")
    image = ReIDImage(tmp_path / "images_labeled" / "1_001_1_01.png", 1, 0)
    files = texture_files(params, [image])
    assert files[image.path] == folder / "1_001_1_01.png"
    t255 = TextureTargets(files, (256, 256), 255.0)(image)["texture"]
    t225 = TextureTargets(files, (256, 256), 225.0)(image)["texture"]
    assert t255.shape == (3, 256, 256)
    assert torch.allclose(t255, torch.full_like(t255, 225 / 127.5 - 1), atol=1e-5)
    assert torch.allclose(t225, torch.ones_like(t225), atol=1e-5)  # generate_texture.py's divisor


@pytest.mark.parametrize("sets,words", [
    (["san.san.pg_source=san_pg"], ["san.san.pg_source", "generate_texture.py", "released"]),
    (["san.san.pg_source=densepose_partial"], ["san.san.pg_source", "different method"]),
    (["san.data.dataset=market1501"], ["san.san.pg_source", "synthetic_atlas", "market1501"]),
    (["san.san.pg_source=released"], ["san.san.pg_dir"]),
    (["san.data.ids_per_batch=4"], ["san.data.ids_per_batch", "K = 4"]),
    (["san.san.rec_weight=0", "san.san.tr_weight=0"], ["san.san.decoder", "trains nothing"]),
    (["san.san.decoder_widths=[8, 8, 4]"], ["san.san.decoder_widths"]),
    (["san.san.texture_betas=[0.5, 1.0]"], ["san.san.texture_betas"]),
    (["san.model.last_stride=2"], ["san.model.last_stride", "last stride 1"]),
])
def test_bad_parameters_name_the_key(sets, words):
    with pytest.raises(ParamsError) as err:
        load_run_params("san", params_file=REPO / "params.yaml", profile="tiny", sets=sets)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_other_inputs_that_need_no_texture_files_are_accepted():
    for sets in (["san.data.dataset=market1501", "san.san.rec_target=input_image"],
                 ["san.data.dataset=market1501", "san.san.decoder=false"],
                 ["san.data.ids_per_batch=4", "san.san.l_tr_mining=batch_hard"]):
        load_run_params("san", params_file=REPO / "params.yaml", profile="tiny", sets=sets)


# ------------------------------------------------------------------------------------ the update modes


def _grads(model, loss_key, params, batch_):
    terms = model(batch_)
    grads = torch.autograd.grad(terms[loss_key], params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _step(mode):
    model, params = make(f"san.san.texture_update={mode}", "san.train.weight_decay=0.001")
    b = batch(params)
    reference = copy.deepcopy(model)
    step = TrainStep.build(model, params, torch.device("cpu"), steps_per_epoch=10)
    model.train()
    step(b)
    return model, reference, step, params, b


def _first_moment(opt, p):
    return opt.state[p]["exp_avg"]


def test_same_forward_applies_both_gradients_of_one_forward_pass():
    model, ref, step, params, b = _step("same_forward")
    assert set(step.optimizers) == {"main", "texture_encoder", "texture_decoder"}
    assert set(step.schedulers) == {"main"}  # the texture optimisers keep their lr
    wd = params.train.weight_decay
    enc, ref_enc = list(model.backbone.parameters()), list(ref.backbone.parameters())
    dec, ref_dec = list(model.decoder.parameters()), list(ref.decoder.parameters())
    g_reid = _grads(ref, "reid", ref_enc, b)
    g_tex = _grads(ref, "texture", ref_enc + ref_dec, b)  # at the same (old) weights: one forward pass
    main, tex_enc, tex_dec = (step.optimizers[n] for n in ("main", "texture_encoder", "texture_decoder"))
    for p, p0, g_r, g_t in zip(enc, ref_enc, g_reid, g_tex):
        # Adam's first moment after one step = (1 - beta1) x gradient (AMSGrad, beta1 0.9, coupled weight decay)
        assert torch.allclose(_first_moment(main, p), 0.1 * (g_r + wd * p0.detach()), atol=1e-6)
        assert torch.allclose(_first_moment(tex_enc, p), 0.5 * g_t, atol=1e-6)  # betas (0.5, 0.999), no decay
    for p, g_t in zip(dec, g_tex[len(enc):]):
        assert torch.allclose(_first_moment(tex_dec, p), 0.5 * g_t, atol=1e-6)
        assert p not in main.state  # the ReID optimiser never sees the decoder
    assert main.param_groups[0]["amsgrad"] and tex_enc.param_groups[0]["lr"] == params.san.texture_lr


def test_reforward_takes_the_texture_gradient_after_the_reid_update():
    model, ref, step, params, b = _step("reforward")
    before = copy.deepcopy(ref)
    ref_main = torch.optim.Adam(ref.param_groups(params), lr=params.train.lr, weight_decay=params.train.weight_decay,
                                amsgrad=True, fused=True)
    torch.optim.lr_scheduler.LambdaLR(ref_main, lr_lambda(params, 10))  # the engine's lr at step 0
    ref_main.zero_grad()
    ref(b)["reid"].backward()
    ref_main.step()  # step 1 on the reference copy: the ReID update
    g_tex = _grads(ref, "texture", list(ref.backbone.parameters()), b)  # step 2: a second forward pass
    g_stale = _grads(before, "texture", list(before.backbone.parameters()), b)  # what same_forward would apply
    tex_enc = step.optimizers["texture_encoder"]
    enc = list(model.backbone.parameters())
    for p, g_t in zip(enc, g_tex):
        assert torch.allclose(_first_moment(tex_enc, p), 0.5 * g_t, atol=1e-6)
    assert any(not torch.allclose(_first_moment(tex_enc, p), 0.5 * g, atol=1e-6) for p, g in zip(enc, g_stale))


def test_joint_is_one_backward_of_the_sum_with_one_optimiser():
    model, ref, step, params, b = _step("joint")
    assert set(step.optimizers) == {"main"} and step.routes is None
    wd = params.train.weight_decay
    ref_all = list(ref.parameters())
    g = _grads(ref, "loss", ref_all, b)
    main = step.optimizers["main"]
    for p, p0, g_p in zip(model.parameters(), ref_all, g):
        assert torch.allclose(_first_moment(main, p), 0.1 * (g_p + wd * p0.detach()), atol=1e-6)


def test_a_resumed_san_run_matches_the_uninterrupted_one(tiny_params, tmp_path):
    from tireid_core.engine import fit
    from tireid_core.experiment import build_experiment

    class Stop(Exception):
        pass

    def stop(epoch, record):
        if epoch == 0:
            raise Stop

    full = fit(build_experiment(tiny_params(f"san.out_dir={tmp_path / 'full'}", section="san", row="full")))
    params = tiny_params(f"san.out_dir={tmp_path / 'cut'}", section="san", row="full")
    with pytest.raises(Stop):
        fit(build_experiment(params), on_epoch_end=stop)
    state = torch.load(Path(params.out_dir) / "checkpoints" / "last.pt", weights_only=True)
    assert set(state["optimizers"]) == {"main", "texture_encoder", "texture_decoder"} and set(state["schedulers"]) == {"main"}
    resumed = fit(build_experiment(params), resume=True)
    assert resumed["summary"] == full["summary"]
    assert [h["train/loss"] for h in resumed["history"]] == [h["train/loss"] for h in full["history"]]


# ------------------------------------------------------------------------------------ analysis helpers


def test_view_invariance_by_hand():
    from tireid_core.models.san import view_invariance

    # id 1: front at 0, back at 1; id 2: front at 10 and 10.2, back at 10.5
    feats = torch.tensor([[0.0], [1.0], [10.0], [10.5], [10.2]])
    out = view_invariance(feats, [1, 1, 2, 2, 2], ["front", "back", "front", "back", "front"])
    different = (10 + 10.5 + 10.2 + 9 + 9.5 + 9.2) / 6
    assert out["front_back"] == pytest.approx((1 + 0.5 + 0.3) / 3, abs=1e-5)
    assert out["same_view"] == pytest.approx(0.2, abs=1e-5)
    assert out["different_ids"] == pytest.approx(different, abs=1e-5)
    assert out["front_back_ratio"] == pytest.approx(0.6 / different, abs=1e-6)
    assert out["per_identity"] == pytest.approx({1: 1 / different, 2: 0.4 / different}, abs=1e-6)


def test_texture_errors_score_visible_and_invisible_texels_against_the_atlas(tmp_path):
    from tireid_core.data.simpedes import region_masks
    from tireid_core.models.san import load_atlas, per_image_invisible_error, texture_errors, visible_invisible_summary

    _write_png(tmp_path / "textures" / "0001.png", np.full((72, 64, 3), 100))
    entry = {"view": "front", "facing": None, "person_box": [3, 0, 93, 32], "occlusion_box": None}
    meta = {"params": {"height": 96, "width": 32},
            "identities": [{"id": 1, "attributes": {"build": "average", "bag_type": "none", "lower_type": "trousers"}}]}
    image = ReIDImage(tmp_path / "market" / "query" / "0001_c1s1_000025_00.png", 1, 0)
    atlas = load_atlas(tmp_path, 1)
    guess = atlas.clone()
    back = torch.from_numpy(region_masks()["torso_back"])
    guess[:, back] += 0.2  # wrong by 0.2 of [-1, 1] = 10 % of the range, on a region a front image does not show
    errors = texture_errors(torch.stack([guess]), [(image, entry)], meta, tmp_path, reference=atlas)
    by_region = visible_invisible_summary(errors, by="region")
    assert by_region.loc["torso_back", "invisible_error"] == pytest.approx(10.0, abs=1e-4)
    assert by_region.loc["torso_back", "visible_texels"] == 0
    assert by_region.loc["torso_front", "visible_error"] == pytest.approx(0.0)
    assert by_region.loc["torso_front", "visible_reference_error"] == 0.0  # the reference is the atlas itself
    overall = visible_invisible_summary(errors)
    assert 0 < overall["invisible_error"].item() < 10 and overall["visible_error"].item() == pytest.approx(0.0)
    assert per_image_invisible_error(errors) == pytest.approx({image.path.name: overall["invisible_error"].item()})
