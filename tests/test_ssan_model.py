"""SSAN model: shapes, sharing, switches, quirk flags, batch of one and empty captions."""
from pathlib import Path

import pytest
import torch

from tireid_core.models.ssan import SSAN, MultiViewNonLocal, PartLinear, retrieval_embedding
from tireid_core.params import load_run_params
from tireid_core.params import TrainParams

REPO = Path(__file__).resolve().parent.parent


def make(*sets, vocab=30, classes=5):
    params = load_run_params("ssan", params_file=REPO / "params.yaml", profile="tiny", sets=list(sets))
    torch.manual_seed(0)
    return SSAN(params, vocab, classes), params


def batch(b=4, length=7, vocab=30):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 4:] = False
    ids[~mask] = 0
    return {
        "image": torch.randn(b, 3, 48, 16, generator=g),
        "ids": ids, "mask": mask, "weak_ids": ids.flip(0), "weak_mask": mask.flip(0),
        "label": torch.tensor([0, 0, 1, 2][:b]), "epoch": 0,
    }


def test_feature_shapes_follow_the_spec_layout():
    model, p = make()
    model.eval()  # no dropout: the checks below compare repeated encodings
    b = batch()
    img = model.image_features(b["image"])
    txt = model.text_features(b["ids"], b["mask"])
    d, k, r = p.model.feature_dim, p.ssan.parts, p.ssan.relation_dim
    for feats in (img, txt):
        assert feats["global"].shape == (4, d)
        assert feats["local"].shape == (4, k, d)
        assert feats["relation"].shape == (4, k, r)
    assert model.backbone(b["image"])["layer4"].shape[2:] == (12, 4)  # 6 stripes of 2 rows
    assert model.encode_images(b["image"]).shape == (4, d + k * d + k * r)
    sims = model.similarities(model.encode_images(b["image"]), model.encode_texts(b["ids"], b["mask"]))
    assert set(sims) == {"global", "local", "relation", "final"}
    assert torch.allclose(sims["final"], sims["global"] + sims["local"] + sims["relation"])
    emb_i = retrieval_embedding(model, model.encode_images(b["image"]))
    emb_t = retrieval_embedding(model, model.encode_texts(b["ids"], b["mask"]))
    assert torch.allclose(emb_t @ emb_i.t(), sims["final"], atol=1e-5)


def test_projections_and_classifiers_are_shared_between_modalities():
    model, _ = make()
    model.eval()
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert {"W_g", "W_l", "nonlocal_net", "id_global", "id_local", "id_relation"} <= names
    # one W_g for both: changing it changes image and text global features
    b = batch()
    before = (model.image_features(b["image"])["global"], model.text_features(b["ids"], b["mask"])["global"])
    with torch.no_grad():
        model.W_g.weight.mul_(2)
    after = (model.image_features(b["image"])["global"], model.text_features(b["ids"], b["mask"])["global"])
    assert torch.allclose(after[0], 2 * before[0], atol=1e-5) and torch.allclose(after[1], 2 * before[1], atol=1e-5)


def test_word_gates_are_independent_sigmoids_and_pooling_ignores_padding():
    model, _ = make("ssan.model.text_dropout=0.0")
    model.eval()
    b = batch()
    gates, _ = model.word_gates(b["ids"], b["mask"])
    assert gates.shape == (4, 7, 6) and (gates > 0).all() and (gates < 1).all()
    assert not torch.allclose(gates.sum(-1), torch.ones(4, 7))  # not a softmax over parts
    # appending padding does not change any feature
    ids = torch.cat([b["ids"], torch.zeros(4, 3, dtype=torch.long)], 1)
    mask = torch.cat([b["mask"], torch.zeros(4, 3, dtype=torch.bool)], 1)
    a, c = model.text_features(b["ids"], b["mask"]), model.text_features(ids, mask)
    for key in a:
        assert torch.allclose(a[key], c[key], atol=1e-5), key


def test_quirk_flags_change_what_they_name():
    model, _ = make("ssan.model.text_dropout=0.0")
    official, _ = make("ssan.model.text_dropout=0.0", "ssan.ssan.inplace_part_act=true",
                       "ssan.ssan.global_pool_includes_padding=true")
    official.load_state_dict(model.state_dict())
    model.eval(), official.eval()
    b = batch()
    ours, theirs = model.text_features(b["ids"], b["mask"]), official.text_features(b["ids"], b["mask"])
    slope = 0.25
    assert torch.allclose(theirs["local"], torch.nn.functional.leaky_relu(ours["local"], slope), atol=1e-6)
    assert torch.allclose(theirs["relation"], ours["relation"], atol=1e-6)  # MV-NLN saw activated parts either way
    # padding-inclusive max = max(0, masked max) per channel for captions with padding (only caption 0 here)
    words = model.text_encoder(b["ids"], b["mask"])
    masked = words.masked_fill(~b["mask"].unsqueeze(-1), float("-inf")).amax(1)
    expected = masked.clone()
    expected[0] = masked[0].clamp(min=0)
    assert (masked[0] < 0).any(), "the example needs a negative channel to show the difference"
    assert torch.allclose(theirs["global"], model.W_g(expected), atol=1e-5)
    assert not torch.allclose(theirs["global"][0], ours["global"][0], atol=1e-5)


def test_switches_remove_branches_and_their_losses():
    global_only, p = make("ssan.ssan.part_features=false", "ssan.ssan.relation=false")
    b = batch()
    assert global_only.encode_images(b["image"]).shape == (4, p.model.feature_dim)
    assert set(global_only.similarities(global_only.encode_images(b["image"]),
                                        global_only.encode_texts(b["ids"], b["mask"]))) == {"global", "final"}
    terms = global_only(b, TrainParams())
    assert set(terms) == {"id", "cr", "loss"} and torch.isfinite(terms["loss"])


def test_training_step_backpropagates_into_every_branch():
    model, _ = make()
    model.train()
    terms = model(batch(), TrainParams())
    terms["loss"].backward()
    for name in ("W_g.weight", "W_l.weight", "word_attention.weight", "local_embed.weight",
                 "nonlocal_net.theta.weight", "id_relation.0.weight", "backbone.layer4.0.conv1.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_batch_of_one_and_empty_caption_work():
    model, p = make()
    b = batch(b=1)
    b["mask"][:] = False  # every word was out of vocabulary
    b["ids"][:] = 0
    model.train()
    terms = model(b, TrainParams())
    assert torch.isfinite(terms["loss"])
    model.eval()
    t = model.encode_texts(b["ids"], b["mask"])
    assert t.shape[0] == 1 and torch.isfinite(t).all()
    assert model.encode_images(b["image"]).shape[0] == 1


def test_part_linear_and_nonlocal_by_hand():
    lin = PartLinear(2, 3, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 0.0, 2.0]]]))
    x = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])
    assert lin(x).tolist() == [[[1.0], [12.0]]]  # part 0 takes x0[0]; part 1 takes 2·x1[2]
    nl = MultiViewNonLocal(parts=3, dim=4, inner=2, slope=0.25)
    attn = nl.attention(torch.randn(5, 3, 4))
    assert torch.allclose(attn.sum(1), torch.ones(5, 3))  # softmax over the attended part j
    assert (attn.diagonal(dim1=1, dim2=2) < 1e-6).all()  # no self-attention
