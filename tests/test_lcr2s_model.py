"""LCR²S teacher and student: MHAF shapes and masking, the TextCNN's padding, the support-set edge cases, the empty-support
policies, the frozen teacher, parameter checks, the oracle and the probe (docs/lcr2s.md)."""
import math
from pathlib import Path

import pytest
import torch

from tireid_core.data.pairs import CaptionCollate, PairDataset
from tireid_core.data.records import CaptionPair
from tireid_core.losses import cmpm_loss
from tireid_core.methods import RetrievalModel, get_method
from tireid_core.models.lcr2s import LCR2S, VIEW_SPECIFIC_ATTRIBUTES, view_probe
from tireid_core.models.lcr2s_teacher import (MHAF, LCR2STeacher, MeanFusion, TextCNN, stack_texts,
                                              support_indices, teacher_oracle_scores)
from tireid_core.params import ParamsError, load_run_params
from tireid_core.stats import auc_comparison

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------- MHAF


def test_mhaf_shapes_and_weights():
    torch.manual_seed(0)
    fusion = MHAF(16, heads=8, dropout=0.0, ffn_mult=2).eval()
    fused, weights = fusion(torch.randn(3, 16), torch.randn(3, 2, 16))
    assert fused.shape == (3, 16) and weights.shape == (3, 3)
    assert weights.sum(1).tolist() == pytest.approx([1.0] * 3, abs=1e-6)
    # no supports: the sample attends to itself only
    _, alone = fusion(torch.randn(3, 16), torch.zeros(3, 0, 16))
    assert alone.flatten().tolist() == pytest.approx([1.0] * 3)


def test_mhaf_attention_by_hand_with_identity_projections():
    """One head, identity query/key/value/output projections: the weights are softmax(x·X/√d)."""
    fusion = MHAF(2, heads=1, dropout=0.0, ffn_mult=1).eval()
    with torch.no_grad():
        fusion.attention.in_proj_weight.copy_(torch.cat([torch.eye(2)] * 3))
        fusion.attention.in_proj_bias.zero_()
        fusion.attention.out_proj.weight.copy_(torch.eye(2))
        fusion.attention.out_proj.bias.zero_()
    x, s = torch.tensor([[1.0, 0.0]]), torch.tensor([[[0.0, 1.0]]])
    _, weights = fusion(x, s)
    e = math.exp(1 / math.sqrt(2))  # x·x / √2 against x·s / √2 = 0
    assert weights[0].tolist() == pytest.approx([e / (e + 1), 1 / (e + 1)], rel=1e-5)


def test_mhaf_masked_supports_change_nothing():
    torch.manual_seed(0)
    fusion = MHAF(16, heads=4, dropout=0.0, ffn_mult=2).eval()
    x, s = torch.randn(2, 16), torch.randn(2, 3, 16)
    ignore = torch.tensor([[False, True, True], [True, True, True]])
    a, w = fusion(x, s, ignore)
    b, _ = fusion(x, s + 100 * ignore[..., None], ignore)  # masked supports replaced by anything
    assert torch.allclose(a, b, atol=1e-6)
    assert w[0, 2:].tolist() == [0.0, 0.0] and w[1].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])
    alone, _ = fusion(x[1:], s[1:, :0])
    assert torch.allclose(a[1:], alone, atol=1e-6)  # every support masked = fused with nothing


def test_mean_fusion_by_hand():
    x = torch.tensor([[1.0, 1.0]])
    s = torch.tensor([[[3.0, 3.0], [5.0, 5.0]]])
    fused, w = MeanFusion()(x, s)
    assert fused.tolist() == [[3.0, 3.0]] and w.flatten().tolist() == pytest.approx([1 / 3] * 3)
    fused, w = MeanFusion()(x, s, torch.tensor([[False, True]]))
    assert fused.tolist() == [[2.0, 2.0]] and w.flatten().tolist() == [0.5, 0.5, 0.0]


# ---------------------------------------------------------------------------------------------------- TextCNN


def test_text_cnn_ignores_padding_and_keeps_it_zero():
    torch.manual_seed(0)
    cnn = TextCNN(12, 8, 16, blocks=3)
    tokens = torch.randn(2, 5, 12)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    tokens[~mask] = 0
    cnn.train()
    out = cnn(tokens, mask)
    assert out.shape == (2, 5, 16) and out[~mask].abs().max() == 0
    cnn.eval()
    short = cnn(tokens, mask)
    longer = cnn(torch.cat([tokens, torch.randn(2, 4, 12)], 1), torch.cat([mask, torch.zeros(2, 4, dtype=bool)], 1))
    assert torch.allclose(short, longer[:, :5], atol=1e-6)  # more padding (and junk under it) changes nothing


def test_text_cnn_batch_statistics_come_from_the_real_tokens():
    cnn = TextCNN(3, 4, 8, blocks=1).train()
    tokens = torch.randn(1, 4, 3)
    mask = torch.tensor([[True, True, False, False]])
    cnn(tokens, mask)
    real = cnn.stem(tokens[mask])  # the stem's BatchNorm saw these two tokens only
    expected = 0.9 * torch.zeros(4) + 0.1 * real.mean(0)
    assert torch.allclose(cnn.bn.running_mean, expected.detach(), atol=1e-6)


def test_stack_texts_pads_to_the_widest():
    ids, mask = stack_texts([{"ids": torch.ones(1, 2, dtype=torch.long), "mask": torch.ones(1, 2, dtype=torch.bool)},
                             {"ids": torch.full((2, 3), 2), "mask": torch.ones(2, 3, dtype=torch.bool)}])
    assert ids.tolist() == [[1, 1, 0], [2, 2, 2], [2, 2, 2]] and mask[0].tolist() == [True, True, False]


# ---------------------------------------------------------------------------------------------------- support sets


def _pairs(images_per_id: dict[int, list[int]]) -> list[CaptionPair]:
    """Pairs for {pid: [captions per image, ...]}, image indices running over all identities."""
    pairs, image = [], 0
    for pid, captions in images_per_id.items():
        for n in captions:
            pairs += [CaptionPair(image, pid, Path(f"{image}.png"), f"p{pid} i{image} c{c}") for c in range(n)]
            image += 1
    return pairs


def _item(pairs, index, k, policy="duplicate"):
    ds = PairDataset(pairs, load_image=lambda path: torch.full((1,), float(path.stem)), label_of_pid=None,
                     support_captions=k, support_images=k, support_policy=policy)
    return ds[index]


def test_identity_with_one_image_falls_back_to_itself_and_is_flagged():
    pairs = _pairs({1: [2], 2: [1, 1]})  # identity 1: one image with two captions
    item = _item(pairs, 0, 2)
    assert item["support_images_self"].tolist() == [True, True]
    assert item["support_images"].flatten().tolist() == [0.0, 0.0]  # its own image (loaded again: re-augmented)
    # its other caption belongs to the same image: captions of *other* images only, so none: itself
    assert item["support_captions"] == [pairs[0].caption] * 2 and item["support_captions_self"].tolist() == [True, True]


def test_identity_with_one_caption_elsewhere_draws_it_with_replacement():
    pairs = _pairs({1: [1, 1]})  # ICFG-like: one caption per image, two images
    item = _item(pairs, 0, 2)
    assert item["support_captions"] == [pairs[1].caption] * 2 and not item["support_captions_self"].any()
    assert item["support_images"].flatten().tolist() == [1.0, 1.0] and not item["support_images_self"].any()


def test_k_larger_than_the_pool_uses_the_whole_pool_then_replacement():
    pairs = _pairs({1: [1, 1, 1]})
    item = _item(pairs, 0, 3)
    drawn = item["support_images"].flatten().tolist()
    assert set(drawn[:2]) == {1.0, 2.0} and drawn[2] in (1.0, 2.0)  # without replacement while the pool lasts
    assert not item["support_images_self"].any()
    pool = _pairs({1: [1, 1, 1, 1]})
    assert len(set(_item(pool, 0, 2)["support_images"].flatten().tolist())) == 2  # pool 3 ≥ K: all distinct


def test_collate_stacks_the_self_flags():
    pairs = _pairs({1: [2], 2: [1, 1]})
    ds = PairDataset(pairs, load_image=lambda path: torch.zeros(3, 4, 2), label_of_pid={1: 0, 2: 1},
                     support_captions=1, support_images=1, support_policy="duplicate")

    class Tok:
        def encode_batch(self, captions, max_len):
            return torch.ones(len(captions), 2, dtype=torch.long), torch.ones(len(captions), 2, dtype=torch.bool)

    batch = CaptionCollate(Tok(), 8)([ds[0], ds[2]])
    assert batch["support_images_self"].tolist() == [[True], [False]]
    assert batch["support_captions_self"].tolist() == [[True], [False]]
    assert batch["support_images"].shape == (2, 1, 3, 4, 2)


def test_support_indices_for_evaluation_splits():
    pids = [1, 1, 2, 3, 3, 3]
    index, is_self = support_indices(pids, list(range(6)), k=2, seed=0)
    assert index[2].tolist() == [2, 2] and is_self[2].tolist() == [True, True]  # identity 2 has one item
    assert index[0].tolist() == [1, 1] and not is_self[0].any()  # one other: with replacement
    assert sorted(index[3].tolist()) == [4, 5]  # two others: both, no replacement
    # captions: groups are their images; two captions of one image are never each other's support
    index, is_self = support_indices([1, 1, 1], [0, 0, 1], k=1, seed=0)
    assert index.flatten().tolist()[:2] == [2, 2] and is_self[2].tolist() == [False]


# ---------------------------------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def small_bert(tmp_path_factory):
    """A 1-layer, 32-wide BERT config folder: the models build their real code path from it at random init."""
    from transformers import BertConfig

    folder = tmp_path_factory.mktemp("bert")
    BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=32).save_pretrained(folder)
    return str(folder)


def build(section, small_bert, *sets, teacher=None, classes=5):
    """The tiny profile's architecture from random weights (no stand-in files), with the paper's loss (CMPM alone)
    unless `sets` say otherwise."""
    params = load_run_params(section, params_file=REPO / "params.yaml", profile="tiny", sets=[
        f"{section}.model.pretrained=false", f"{section}.model.text_pretrained=false",
        f"{section}.model.text_model={small_bert}", f"{section}.lcr2s.cmpm_id_weight=0.0", *sets])
    torch.manual_seed(0)
    cls = get_method(section).model
    model = cls(params, 0, classes, None) if teacher is None else cls(params, 0, classes, None, teacher=teacher)
    return model, params


def batch(b=4, k=2, length=6, h=48, w=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 4:] = False
    ids[~mask] = 0
    sup_ids = torch.randint(5, 60, (b * k, length), generator=g)
    return {"image": torch.randn(b, 3, h, w, generator=g), "ids": ids, "mask": mask,
            "support_images": torch.randn(b, k, 3, h, w, generator=g),
            "support_images_self": torch.zeros(b, k, dtype=torch.bool),
            "support_ids": sup_ids, "support_mask": torch.ones(b * k, length, dtype=torch.bool),
            "support_captions_self": torch.zeros(b, k, dtype=torch.bool),
            "label": torch.tensor([0, 0, 1, 2][:b])}


def test_teacher_features_scores_and_loss(small_bert):
    model, params = build("lcr2s_teacher", small_bert)
    assert isinstance(model, RetrievalModel)
    model.eval()
    b = batch()
    img = model.encode_images(b["image"])
    txt = model.encode_texts({"ids": b["ids"], "mask": b["mask"]})
    d = params.lcr2s.text_cnn[1]
    assert set(img) == set(txt) == {"global", "fused"} and img["fused"].shape == (4, d) and txt["global"].shape == (4, d)
    assert model.image_local(b["image"])[1].shape == (4, 48, d)  # the 12×4 map: 48 region vectors
    scores = model.similarities(img, txt)
    assert set(scores) == {"global", "final"} and scores["final"].shape == (4, 4)
    assert torch.isfinite(model.train()(b)["loss"])
    model.eval()  # no dropout, running BN statistics: the same features twice
    terms = model(b)
    assert set(terms) == {"cmpm", "loss"}
    e = model.enriched(b)
    assert torch.allclose(terms["cmpm"], cmpm_loss(e["image"], e["text"], b["label"]), rtol=1e-4)
    assert e["image_weights"].shape == (4, 3)


def test_projection_acts_on_the_pooled_feature_and_on_every_region_and_token(small_bert):
    model, _ = build("lcr2s_teacher", small_bert, "lcr2s_teacher.lcr2s.dim=24")
    model.eval()
    b = batch()
    with torch.no_grad():
        pooled, regions = model.image_local(b["image"])
        raw = model.backbone(b["image"])["layer4"].flatten(2).transpose(1, 2)
        assert pooled.shape == (4, 24) and regions.shape == (4, 48, 24)
        assert torch.allclose(pooled, model.image_proj(raw.amax(1)), atol=1e-6)  # pool, then project
        assert torch.allclose(regions, model.image_proj(raw), atol=1e-6)
        glob, tokens, mask = model.text_local(b["ids"], b["mask"])
    assert glob.shape == (4, 24) and tokens.shape[2] == 24 and tokens[0, 4:].abs().max() == 0  # padding stays 0


def test_an_id_term_can_be_added_to_cmpm(small_bert):
    model, _ = build("lcr2s_teacher", small_bert, "lcr2s_teacher.lcr2s.cmpm_id_weight=0.5")
    model.eval()
    b = batch()
    terms = model(b)
    e = model.enriched(b)
    expected = 0.5 * (torch.nn.functional.cross_entropy(model.classifier(e["image"]), b["label"]) +
                      torch.nn.functional.cross_entropy(model.classifier(e["text"]), b["label"]))
    assert set(terms) == {"cmpm", "id", "loss"} and torch.allclose(terms["id"], expected, rtol=1e-5)


def test_teacher_fuses_the_real_supports(small_bert):
    model, _ = build("lcr2s_teacher", small_bert)
    model.eval()
    b = batch()
    other = dict(b, support_images=torch.randn_like(b["support_images"]))
    with torch.no_grad():
        a, c = model.enriched(b), model.enriched(other)
    assert torch.equal(a["image_single"], c["image_single"]) and not torch.allclose(a["image"], c["image"])


def test_empty_support_policies(small_bert):
    b = batch()
    b["support_images_self"][1] = True
    b["support_captions_self"][1] = True
    with torch.no_grad():
        dup, _ = build("lcr2s_teacher", small_bert, "lcr2s_teacher.lcr2s.empty_support=duplicate")
        dup.eval()
        same = dict(b, support_images=b["support_images"].clone())
        same["support_images"][1] = b["image"][1]  # what "duplicate" must use: the identical sample
        assert torch.allclose(dup.enriched(b)["image"], dup.enriched(same)["image"], atol=1e-6)
        aug, _ = build("lcr2s_teacher", small_bert, "lcr2s_teacher.lcr2s.empty_support=self_aug")
        aug.eval()
        assert not torch.allclose(aug.enriched(b)["image"][1], aug.enriched(same)["image"][1])  # the data's copy
        skip, _ = build("lcr2s_teacher", small_bert, "lcr2s_teacher.lcr2s.empty_support=skip")
        skip.eval()
        e = skip.enriched(b)
        assert e["keep"].tolist() == [True, False, True, True]
        assert e["image_weights"][1, 1:].tolist() == [0.0, 0.0]  # flagged supports left out of MHAF
        terms = skip(b)
    keep = e["keep"]
    expected = cmpm_loss(e["image"][keep], e["text"][keep], b["label"][keep])
    assert torch.allclose(terms["cmpm"], expected, rtol=1e-4)  # the anchor leaves the teacher loss


def test_skip_with_fewer_than_two_anchors_left_gives_a_zero_that_backpropagates(small_bert):
    model, _ = build("lcr2s_teacher", small_bert, "lcr2s_teacher.lcr2s.empty_support=skip")
    b = batch()
    b["support_images_self"][1:] = True  # only anchor 0 keeps a support pool
    terms = model.train()(b)
    assert set(terms) == {"cmpm", "loss"} and terms["loss"].item() == 0.0
    terms["loss"].backward()  # still a graph: the step runs
    assert model.text_cnn.stem.weight.grad is not None


def test_teacher_id_cr_base_loss(small_bert):
    model, _ = build("lcr2s_teacher", small_bert, "lcr2s_teacher.lcr2s.base_loss=id_cr",
                     "lcr2s_teacher.lcr2s.teacher_single_view_loss=true")
    model.train()
    model.start_epoch(0)
    terms = model(batch())
    assert set(terms) == {"id", "cr", "single_id", "single_cr", "loss"}
    assert all(torch.isfinite(v) for v in terms.values())


def _teacher(small_bert):
    teacher, _ = build("lcr2s_teacher", small_bert)
    return teacher.requires_grad_(False).eval()


@pytest.mark.parametrize("reasoner", ["view_queries", "self_attention", "none"])
def test_student_features_for_every_reasoner(small_bert, reasoner):
    model, params = build("lcr2s", small_bert, f"lcr2s.lcr2s.reasoner={reasoner}", teacher=_teacher(small_bert))
    model.eval()
    b = batch()
    img = model.encode_images(b["image"])
    txt = model.encode_texts({"ids": b["ids"], "mask": b["mask"]})
    assert set(img) == {"global", "reasoned"} and img["reasoned"].shape == (4, params.lcr2s.text_cnn[1])
    assert torch.equal(img["global"], img["reasoned"]) == (reasoner == "none")
    assert model.similarities(img, txt)["final"].shape == (4, 4)
    if reasoner == "view_queries":
        views, attention = model.reason_image.views(model.image_local(b["image"])[1], None)
        assert views.shape == (4, 2, params.lcr2s.text_cnn[1]) and attention.shape == (4, 2, 48)  # K views
        _, tokens, mask = model.text_local(b["ids"], b["mask"])
        _, attention = model.reason_text.views(tokens, mask)
        assert attention[0, :, 4:].abs().max() == 0  # padding never attended


def test_student_loss_terms_and_weights(small_bert):
    teacher = _teacher(small_bert)
    model, params = build("lcr2s", small_bert, "lcr2s.lcr2s.lambda_f=2.0", "lcr2s.lcr2s.lambda_r=3.0",
                          "lcr2s.lcr2s.mhaf_dropout=0.0", teacher=teacher)
    model.train()
    b = batch()
    torch.manual_seed(0)
    terms = model(b)
    assert set(terms) == {"cmpm", "kd_feature", "kd_relation", "loss"}
    with torch.no_grad():
        target = teacher.enriched(b)
        img, txt = model.encode_images(b["image"])["reasoned"], model.encode_texts(b)["reasoned"]
    from tireid_core.losses import feature_kd_loss, relation_kd_loss

    kd_f = feature_kd_loss(img, target["image"]) + feature_kd_loss(txt, target["text"])
    assert terms["kd_feature"].item() == pytest.approx(2.0 * kd_f.item(), rel=1e-4)
    kd_r = relation_kd_loss(img, txt, target["image"], target["text"])
    assert terms["kd_relation"].item() == pytest.approx(3.0 * kd_r.item(), rel=1e-4)
    assert terms["loss"].item() == pytest.approx(sum(v.item() for k, v in terms.items() if k != "loss"), rel=1e-5)


def test_student_without_distillation_needs_no_teacher_and_no_supports(small_bert):
    model, params = build("lcr2s", small_bert, "lcr2s.lcr2s.reasoner=none", "lcr2s.lcr2s.lambda_f=0.0",
                          "lcr2s.lcr2s.lambda_r=0.0", "lcr2s.data.support_images=0", "lcr2s.data.support_captions=0",
                          "lcr2s.lcr2s.teacher_row=nowhere")
    assert not hasattr(model, "teacher")
    b = {k: v for k, v in batch().items() if not k.startswith("support_")}
    assert set(model.train()(b)) == {"cmpm", "loss"}


def test_frozen_teacher_and_bert_stay_fixed_while_the_student_trains(small_bert):
    teacher = _teacher(small_bert)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    model, params = build("lcr2s", small_bert, teacher=teacher)
    model.train()
    assert not model.teacher.training and not model.text_encoder.training
    assert all(not m.training for m in model.teacher.modules())  # its BatchNorm layers too
    names = {n for g in model.param_groups(params) for p in g["params"] for n, q in model.named_parameters() if p is q}
    assert names and not any(n.startswith(("teacher.", "text_encoder.")) for n in names)
    opt = torch.optim.Adam([p for g in model.param_groups(params) for p in g["params"]], lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        model(batch())["loss"].backward()
        opt.step()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is None for p in model.text_encoder.parameters())
    after = model.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running statistics


def test_student_refuses_a_teacher_of_another_width(small_bert):
    teacher, _ = build("lcr2s_teacher", small_bert, "lcr2s_teacher.lcr2s.dim=24")
    with pytest.raises(ValueError, match="feature width"):
        build("lcr2s", small_bert, teacher=teacher)


def test_missing_teacher_run_names_the_command(tmp_path, small_bert):
    with pytest.raises(FileNotFoundError, match=r"python -m tireid_core.train lcr2s_teacher --row full"):
        build("lcr2s", small_bert, f"lcr2s_teacher.out_dir={tmp_path}")


@pytest.mark.parametrize("sets, key", [
    (["lcr2s_teacher.data.support_captions=1"], r"lcr2s_teacher\.data\.support_captions"),
    (["lcr2s_teacher.data.support_images=0", "lcr2s_teacher.data.support_captions=0"],
     r"lcr2s_teacher\.data\.support_images"),
    (["lcr2s_teacher.data.support_policy=skip"], r"lcr2s_teacher\.data\.support_policy"),
    (["lcr2s_teacher.lcr2s.text_cnn=[64, 130]"], r"lcr2s_teacher\.lcr2s\.text_cnn"),
    (["lcr2s_teacher.lcr2s.mhaf_heads=3"], r"lcr2s_teacher\.lcr2s\.dim"),
    (["lcr2s_teacher.model.text_encoder=bilstm"], r"lcr2s_teacher\.model\.text_encoder"),
    (["lcr2s_teacher.lcr2s.reasoner=none"], r"lcr2s_teacher\.lcr2s\.reasoner: unknown key"),
])
def test_teacher_parameter_errors_name_the_key(sets, key):
    with pytest.raises(ParamsError, match=key):
        load_run_params("lcr2s_teacher", params_file=REPO / "params.yaml", sets=sets)


def test_student_parameter_errors_name_the_key():
    with pytest.raises(ParamsError, match=r"lcr2s\.data\.support_images"):
        load_run_params("lcr2s", params_file=REPO / "params.yaml",
                        sets=["lcr2s.data.support_images=0", "lcr2s.data.support_captions=0"])
    with pytest.raises(ParamsError, match=r"lcr2s\.lcr2s\.lambda_r"):
        load_run_params("lcr2s", params_file=REPO / "params.yaml", sets=["lcr2s.lcr2s.lambda_r=-1"])
    p = load_run_params("lcr2s", params_file=REPO / "params.yaml", sets=["lcr2s_teacher.out_dir=elsewhere"])
    assert p.reads == {"lcr2s_teacher": str(REPO / "elsewhere")}  # the teacher's section may be set from a student run
    with pytest.raises(ParamsError, match="another section of this run"):
        load_run_params("lcr2s", params_file=REPO / "params.yaml", sets=["ssan.out_dir=elsewhere"])


def test_every_row_is_a_valid_configuration():
    for method in ("lcr2s_teacher", "lcr2s"):
        from tireid_core.params import method_rows

        for row in method_rows(method, REPO / "params.yaml"):
            for profile in ("demo", "tiny", "paper"):
                load_run_params(method, params_file=REPO / "params.yaml", row=row, profile=profile)
    teacher_rows = method_rows("lcr2s_teacher", REPO / "params.yaml")
    for row in method_rows("lcr2s", REPO / "params.yaml"):
        p = load_run_params("lcr2s", params_file=REPO / "params.yaml", row=row)
        assert p.lcr2s.teacher_row in teacher_rows


# ---------------------------------------------------------------------------------------------------- analysis


def test_teacher_oracle_fuses_test_supports_by_identity():
    class Evalset:
        image_pids, caption_pids, caption_image = [1, 1, 2], [1, 1, 2], [0, 1, 2]

    class Mean(torch.nn.Module):
        p = type("P", (), {"empty_support": "self_aug"})()
        fuse_image = fuse_text = MeanFusion()

    gallery = {"global": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])}
    queries = {"global": torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]])}
    scores = teacher_oracle_scores(Mean(), gallery, queries, Evalset(), k=1)
    # images 0 and 1 fuse with each other: both (0.5, 0.5); image 2 has no other image: itself, (1, 1). Captions 0
    # and 1 likewise give (0.5, 0.5); caption 2 stays (-1, 1), orthogonal to every fused image
    assert scores[0].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)
    assert scores[2].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)


def test_view_probe_and_auc():
    assert set(VIEW_SPECIFIC_ATTRIBUTES) == {"ponytail", "logo"}
    g = torch.Generator().manual_seed(0)

    def split(n):
        truth = [{"view": "front" if i % 3 else "back", "attributes": {"hair_style": "ponytail" if i % 2 else "short"}}
                 for i in range(n)]
        feats = torch.randn(n, 8, generator=g)
        feats[:, 0] += torch.tensor([4.0 if t["attributes"]["hair_style"] == "ponytail" else 0.0 for t in truth])
        return feats, truth

    out = view_probe(*split(120), *split(60), "ponytail", "front")
    assert out["n_test"] == 40 and out["test_positives"] == 20
    result = auc_comparison(out["labels"], {"probe": out["scores"], "shuffled": out["scores"][::-1]})
    assert result["probe"]["auc"] > 90 and result["probe"]["low"] <= result["probe"]["auc"] <= result["probe"]["high"]
    assert "diff" in result["shuffled"] and "diff" not in result["probe"]

