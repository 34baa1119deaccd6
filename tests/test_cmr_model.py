"""CMR's model (docs/cmr.md §2, §5): shared queries, which tokens they read, coarse-to-fine embeddings, the fused score,
attention maps, the loss terms and their diagnostics, the memory bank, the optimiser groups and the parameter checks."""
from pathlib import Path

import pytest
import torch

from tireid_core.data.tokenizers import HFTokenizer
from tireid_core.models.cmr import CMR, decoder_attention, part_cosine, query_names, split_commonality
from tireid_core.params import ParamsError, load_run_params

REPO = Path(__file__).resolve().parent.parent


def make(tiny_clip_dir, *sets, num_classes=5):
    params = load_run_params("cmr", REPO / "params.yaml", profile="tiny",
                             sets=[f"cmr.model.text_model={tiny_clip_dir}", "cmr.cmr.decoder_heads=2", *sets])
    torch.manual_seed(0)
    return CMR(params, 0, num_classes), params


def batch_of(tiny_clip_dir, n=6, ids_per=2):
    tokenizer = HFTokenizer(str(tiny_clip_dir))
    words = ["a man in a red shirt", "black pants and white shoes", "a woman with long hair", "a blue bag"]
    ids, mask = tokenizer.encode_batch([words[i % 4] for i in range(n)], 16)
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(n, 3, 48, 16, generator=g), "ids": ids, "mask": mask,
            "label": torch.arange(n) // ids_per}


@pytest.mark.parametrize("mode, shapes", [
    ("two_query_sets", {"global": (6, 16), "coarse": (6, 2, 16), "fine": (6, 4, 16)}),
    ("decoder_depth", {"global": (6, 16), "coarse": (6, 4, 16), "fine": (6, 4, 16)}),
    ("global_plus_parts", {"global": (6, 16), "coarse": (6, 1, 16), "fine": (6, 4, 16)}),
])
def test_coarse_to_fine_shapes(tiny_clip_dir, mode, shapes):
    model, _ = make(tiny_clip_dir, f"cmr.cmr.coarse_to_fine={mode}")
    batch = batch_of(tiny_clip_dir)
    with torch.no_grad():
        img, txt = model.eval().encode_images(batch["image"]), model.encode_texts(batch)
    assert {k: tuple(v.shape) for k, v in img.items()} == shapes == {k: tuple(v.shape) for k, v in txt.items()}
    if mode == "global_plus_parts":
        assert torch.equal(img["coarse"][:, 0], img["global"])
    if mode == "decoder_depth":  # the coarse embeddings are an earlier layer of the same queries
        assert model.decoder.queries.shape[0] == 4 and not torch.allclose(img["coarse"], img["fine"])


def test_one_set_of_queries_and_one_attention_read_both_modalities(tiny_clip_dir):
    model, _ = make(tiny_clip_dir)
    d = model.decoder
    assert d.queries.shape == (2 + 4, 16) and query_names(model)[:3] == ["coarse 0", "coarse 1", "fine 0"]
    assert set(d.ln_keys) == {"image", "text"}  # modality-specific pre-LayerNorms, everything else shared
    q = d.queries.detach()
    assert torch.allclose(q @ q.T, torch.eye(6), atol=1e-5)  # orthogonal init
    batch = batch_of(tiny_clip_dir)
    model(batch)["loss"].backward()
    assert d.queries.grad is not None and d.cross_attn.in_proj_weight.grad is not None
    assert all(ln.weight.grad is not None for ln in d.ln_keys.values())


def test_ablation_switches_build_only_what_they_use(tiny_clip_dir):
    global_only, _ = make(tiny_clip_dir, "cmr.cmr.use_coarse=false", "cmr.cmr.use_fine=false")
    assert global_only.decoder is None and query_names(global_only) == []
    coarse_only, _ = make(tiny_clip_dir, "cmr.cmr.use_fine=false")
    assert coarse_only.decoder.queries.shape[0] == 2
    batch = batch_of(tiny_clip_dir)
    assert set(global_only(batch)) == {"sdm", "id", "loss"}
    assert set(coarse_only(batch)) == {"sdm", "id", "coarse", "loss"}
    fine_fixed, _ = make(tiny_clip_dir, "cmr.cmr.use_coarse=false", "cmr.cmr.margin_mode=fixed")
    assert set(fine_fixed(batch)) == {"sdm", "id", "fine", "loss"}
    depth_coarse, _ = make(tiny_clip_dir, "cmr.cmr.coarse_to_fine=decoder_depth", "cmr.cmr.use_fine=false")
    assert len(depth_coarse.decoder.layers) == 1  # only the layers up to the coarse read-out (tiny: coarse_layer 1)
    depth_coarse(batch)["loss"].backward()
    assert all(p.grad is not None for p in depth_coarse.decoder.parameters())


def test_queries_read_the_words_only(tiny_clip_dir):
    model, _ = make(tiny_clip_dir)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)  # SOT w w EOS pad; SOT EOS (no word)
    assert model.word_keys(mask).tolist() == [[False, True, True, False, False], [False, True, False, False, False]]
    assert model.word_positions(mask).tolist() == [[False, True, True, False, False], [False] * 5]
    wide, _ = make(tiny_clip_dir, "cmr.cmr.decoder_keys=with_global")
    assert torch.equal(wide.word_keys(mask), mask)


def test_attention_maps_are_distributions_over_what_is_read(tiny_clip_dir):
    model, _ = make(tiny_clip_dir)
    batch = batch_of(tiny_clip_dir, n=3)
    maps = decoder_attention(model, batch["image"], {"ids": batch["ids"], "mask": batch["mask"]})
    assert maps["image"].shape == (3, 6, 12, 4)  # every query's weights over the 12 x 4 patch grid
    assert torch.allclose(maps["image"].sum((2, 3)), torch.ones(3, 6), atol=1e-5)
    text, keys = maps["text"], maps["keys"]
    assert torch.allclose(text.sum(-1), torch.ones(3, 6), atol=1e-5) and (text[~keys[:, None].expand_as(text)] == 0).all()


def test_part_cosine_and_the_fused_score(tiny_clip_dir):
    q = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # one caption, two parts
    g = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 3.0], [0.0, -1.0]]])  # two images
    assert part_cosine(q, g)[0].tolist() == pytest.approx([0.5, -0.5], abs=1e-6)  # (1 + 0)/2, (0 - 1)/2
    model, _ = make(tiny_clip_dir, "cmr.cmr.coarse_score_weight=0.5", "cmr.cmr.fine_score_weight=2.0")
    batch = batch_of(tiny_clip_dir, n=3)
    with torch.no_grad():
        s = model.eval().similarities(model.encode_images(batch["image"]), model.encode_texts(batch))
    assert set(s) == {"global", "coarse", "fine", "final"} and s["final"].shape == (3, 3)
    assert torch.allclose(s["final"], s["global"] + 0.5 * s["coarse"] + 2.0 * s["fine"])


def test_loss_terms_and_margin_diagnostics(tiny_clip_dir):
    model, _ = make(tiny_clip_dir)
    model.train()
    model.start_epoch(0)
    terms = model(batch_of(tiny_clip_dir))
    losses = {k: v for k, v in terms.items() if k != "loss" and not k.startswith("diag_")}
    assert set(losses) == {"sdm", "id", "coarse", "fine"}
    assert torch.allclose(terms["loss"], sum(losses.values()))
    diag = {k: float(v) for k, v in terms.items() if k.startswith("diag_")}
    assert set(diag) == {"diag_margin_mean", "diag_margin_p10", "diag_margin_p50", "diag_margin_p90",
                         "diag_floor_rate"}
    assert 0.05 <= diag["diag_margin_p10"] <= diag["diag_margin_p50"] <= diag["diag_margin_p90"] <= 0.2 + 1e-6
    assert diag["diag_floor_rate"] > 0  # minmax gives the most common anchor of every part s = 0, so the floor
    assert not any(v.requires_grad for k, v in terms.items() if k.startswith("diag_"))
    fixed, _ = make(tiny_clip_dir, "cmr.cmr.margin_mode=fixed")
    assert not any(k.startswith("diag_") for k in fixed(batch_of(tiny_clip_dir)))


def test_part_losses_wait_for_their_start_epoch(tiny_clip_dir):
    model, _ = make(tiny_clip_dir, "cmr.cmr.part_loss_start_epoch=1")
    model.start_epoch(0)
    early = {k: float(v.detach()) for k, v in model(batch_of(tiny_clip_dir)).items()}
    assert early["coarse"] == 0.0 and early["fine"] == 0.0
    model.start_epoch(1)
    late = {k: float(v.detach()) for k, v in model(batch_of(tiny_clip_dir)).items()}
    assert late["coarse"] > 0 and late["fine"] > 0


def test_memory_bank_is_a_fifo_of_the_gathered_batches(tiny_clip_dir):
    model, _ = make(tiny_clip_dir, "cmr.cmr.commonality=H4_bank", "cmr.cmr.bank_size=8", num_classes=20)
    assert {"bank_img", "bank_txt", "bank_pids", "bank_next"} <= set(model.state_dict())  # saved with checkpoints
    model.start_epoch(0)
    batch = batch_of(tiny_clip_dir)
    model(batch)
    assert model.bank_pids.tolist() == [0, 0, 1, 1, 2, 2, -1, -1] and int(model.bank_next) == 6
    batch["label"] = batch["label"] + 10
    model(batch)  # persons 10, 10, 11, 11, 12, 12 into slots 6, 7, then 0..3 (the oldest)
    assert model.bank_pids.tolist() == [11, 11, 12, 12, 2, 2, 10, 10] and int(model.bank_next) == 4
    assert torch.allclose(model.bank_img.norm(dim=-1), torch.ones(4, 8), atol=1e-5)


def test_optimiser_groups_follow_plots_solver(tiny_clip_dir):
    model, params = make(tiny_clip_dir, "cmr.train.lr=0.01", "cmr.train.backbone_lr_mult=0.1",
                         "cmr.train.weight_decay=0.001", "cmr.cmr.adam_eps=0.001")
    groups = model.param_groups(params)
    new_weights = groups[0]
    assert new_weights["lr"] == 0.01 and new_weights["weight_decay"] == 0.001  # first: the lr the engine logs
    assert any(p is model.decoder.queries for p in new_weights["params"])
    lrs = sorted((g["lr"], g["weight_decay"]) for g in groups)  # CLIP weights, CLIP biases, new weights, new biases
    assert [v for pair in lrs for v in pair] == pytest.approx([0.001, 0.001, 0.002, 0.0, 0.01, 0.001, 0.02, 0.0])
    assert all(g["eps"] == 0.001 for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_split_commonality_scores_every_caption_and_its_image(tiny_clip_dir):
    model, _ = make(tiny_clip_dir, "cmr.cmr.commonality=H4_bank")
    batch = batch_of(tiny_clip_dir)
    with torch.no_grad():
        gallery, queries = model.eval().encode_images(batch["image"][:3]), model.encode_texts(batch)
    c_img, c_txt = split_commonality(model, gallery, queries, caption_image=[0, 0, 1, 1, 2, 2], pids=[0, 0, 1, 1, 2, 2])
    assert c_img.shape == c_txt.shape == (4, 6) and torch.isfinite(c_txt).all()


@pytest.mark.parametrize("sets, message", [
    (["cmr.cmr.coarse_to_fine=decoder_depth", "cmr.cmr.coarse_layer=2"], r"cmr\.cmr\.coarse_layer"),
    (["cmr.cmr.commonality=H4_bank", "cmr.cmr.bank_size=4"], r"cmr\.cmr\.bank_size"),
    (["cmr.model.image_backbone=resnet_small"], r"cmr\.model: CMR uses CLIP's two towers"),
    (["cmr.model.pretrained=false"], r"cmr\.model\.pretrained: both CLIP towers"),
    (["cmr.cmr.margin_gate=0"], r"cmr\.cmr\.margin_gate"),
    (["cmr.cmr.commonality=H5"], r"cmr\.cmr\.commonality: 'H5' is not one of"),
])
def test_bad_switches_name_their_key(sets, message):
    with pytest.raises(ParamsError, match=message):
        load_run_params("cmr", REPO / "params.yaml", profile="tiny", sets=sets)


def test_attention_mass_per_part_by_hand():
    from tireid_core.models.cmr import assign_parts, image_part_mass, text_part_mass

    parts = ["head", "upper"]
    # one caption "SOT w1 w2 w3 EOS pad": words head, upper, none; two queries
    attention = torch.tensor([[[0.0, 0.6, 0.3, 0.1, 0.0, 0.0], [0.0, 0.1, 0.8, 0.1, 0.0, 0.0]]])
    words = torch.tensor([[False, True, True, True, False, False]])
    mass, share = text_part_mass(attention, words, [["head", "upper", "none", "upper"]], parts)  # last label cut off
    assert mass[0].flatten().tolist() == pytest.approx([0.6, 0.3, 0.1, 0.8])
    assert share[0].tolist() == pytest.approx([1 / 3, 1 / 3])
    assert assign_parts(mass, share, parts) == ["head", "upper"]
    maps = torch.zeros(1, 2, 4, 2)  # 4 patch rows: head row 0, upper rows 1-2
    maps[0, 0, 0, 0] = 0.5
    maps[0, 0, 3, 0] = 0.5
    maps[0, 1, 1:3] = 0.25  # 4 patches
    mass, share = image_part_mass(maps, {"head": [0], "upper": [1, 2]}, parts)
    assert mass[0].flatten().tolist() == pytest.approx([0.5, 0.0, 0.0, 1.0]) and share.tolist() == [0.25, 0.5]
    # lift: query 0 puts 0.5 on a quarter of the rows (x2), query 1 all on half of them (x2 for upper)
    assert assign_parts(mass, share, parts) == ["head", "upper"]


def test_batch_margins_stay_between_the_floor_and_the_margin(tiny_clip_dir):
    from tireid_core.models.cmr import batch_margins

    model, params = make(tiny_clip_dir)
    batch = batch_of(tiny_clip_dir)
    with torch.no_grad():
        gallery, queries = model.eval().encode_images(batch["image"][:3]), model.encode_texts(batch)
    out = batch_margins(model, gallery, queries, [0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], batch_size=4, n_batches=3)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (4, 12) for k in ("s_img", "s_txt", "m_img", "m_txt")}
    assert ((out["m_txt"] >= 0.05 - 1e-7) & (out["m_txt"] <= 0.2 + 1e-7)).all()
    assert torch.allclose(out["m_img"], (0.2 * out["s_img"]).clamp(min=0.05))
