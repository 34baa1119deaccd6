"""SSAN model: shapes, sharing, switches, quirk flags, loss weights and schedule, support captions, batch of one and
empty captions."""
from pathlib import Path

import pytest
import torch

from tireid_core.data.pairs import CaptionCollate, text_input
from tireid_core.data.tokenizers import WordTokenizer, WordVocab
from tireid_core.methods import RetrievalModel, get_method
from tireid_core.models.ssan import SSAN, MultiViewNonLocal, PartLinear, mean_part_attention, retrieval_embedding
from tireid_core.params import ParamsError, load_run_params

REPO = Path(__file__).resolve().parent.parent


def make(*sets, vocab=30, classes=5):
    """The real architecture from random weights (unit tests do not need the image stand-in file)."""
    params = load_run_params("ssan", params_file=REPO / "params.yaml", profile="tiny",
                             sets=["ssan.model.pretrained=false", *sets])
    torch.manual_seed(0)
    return SSAN(params, vocab, classes, None), params


def batch(b=4, length=7, vocab=30):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 4:] = False
    ids[~mask] = 0
    return {
        "image": torch.randn(b, 3, 48, 16, generator=g),
        "ids": ids, "mask": mask, "support_ids": ids.flip(0), "support_mask": mask.flip(0),
        "label": torch.tensor([0, 0, 1, 2][:b]),
    }


def seeded(model, b, seed=0):
    """One forward from a fixed random state, as the engine starts an epoch: reseed the global RNG (dropout), then
    `start_epoch` at the model's current epoch (which reseeds semi-hard mining), so two calls differ only by the
    model or the batch."""
    torch.manual_seed(seed)
    model.start_epoch(model.epoch)
    return model(b)


def test_feature_shapes_follow_the_spec_layout():
    model, p = make()
    assert isinstance(model, RetrievalModel) and get_method("ssan").model is SSAN
    model.eval()  # no dropout: the checks below compare repeated encodings
    b = batch()
    img = model.image_features(b["image"])
    txt = model.text_features(b["ids"], b["mask"])
    d, k, r = p.model.feature_dim, p.ssan.parts, p.ssan.relation_dim
    for feats in (img, txt):
        assert set(feats) == {"global", "local", "relation"}
        assert feats["global"].shape == (4, d)
        assert feats["local"].shape == (4, k, d)
        assert feats["relation"].shape == (4, k, r)
    assert model.backbone(b["image"])["layer4"].shape[2:] == (12, 4)  # 6 stripes of 2 rows
    # the contract's encoders give the same named features
    enc_i, enc_t = model.encode_images(b["image"]), model.encode_texts(text_input(b))
    for mine, theirs in ((enc_i, img), (enc_t, txt)):
        assert set(mine) == set(theirs)
        for key in mine:
            torch.testing.assert_close(mine[key], theirs[key])
    sims = model.similarities(enc_i, enc_t)
    assert set(sims) == {"global", "local", "relation", "final"}
    assert sims["final"].shape == (4, 4)
    assert torch.allclose(sims["final"], sims["global"] + sims["local"] + sims["relation"])
    # each S is one cosine over the concatenated vector (texts x images)
    cos = torch.nn.functional.normalize(txt["local"].flatten(1), dim=1) @ \
        torch.nn.functional.normalize(img["local"].flatten(1), dim=1).t()
    torch.testing.assert_close(sims["local"], cos, atol=1e-5, rtol=1e-5)
    emb_i = retrieval_embedding(enc_i)
    emb_t = retrieval_embedding(enc_t)
    assert emb_i.shape == (4, d + k * d + k * r)
    assert torch.allclose(emb_t @ emb_i.t(), sims["final"], atol=1e-5)


def test_mean_part_attention_reads_the_part_features():
    model, p = make()
    model.eval()
    local = model.image_features(batch()["image"])["local"]  # B x K x d
    att = mean_part_attention(model, local)
    k = p.ssan.parts
    assert att.shape == (k, k)
    expected = model.nonlocal_net.attention(torch.nn.functional.leaky_relu(local, p.ssan.leaky_slope)).mean(0)
    torch.testing.assert_close(att, expected.detach())
    torch.testing.assert_close(att.sum(0), torch.ones(k))  # softmax over the attended part j, for every k
    assert (att.diagonal() < 1e-6).all()


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


def test_official_global_pool_sees_the_padding_up_to_max_words():
    """float64: with the flag on, batches keep every caption padded to max_words (as the official 100-wide tensors), so
    the global max is max(0, max over words) per channel for every caption, the longest one included."""
    tok = WordTokenizer(WordVocab("a man woman in red blue shirt black shoes bag with long hair".split()))
    official, _ = make("ssan.model.text_dropout=0.0", "ssan.ssan.global_pool_includes_padding=true",
                       vocab=tok.vocab_size)
    assert official.text_needs.full_width and not make()[0].text_needs.full_width
    official = official.double().eval()
    captions = ["a man in a red shirt with black shoes", "a woman", "long hair"]
    full = CaptionCollate(tok, 24, full_width=True).tokenize(captions)
    trimmed = CaptionCollate(tok, 24).tokenize(captions)
    assert full["ids"].shape == (3, 24) and trimmed["ids"].shape == (3, 9)
    with torch.no_grad():
        words = official.text_encoder(full["ids"], full["mask"])
        masked = words.masked_fill(~full["mask"].unsqueeze(-1), float("-inf")).amax(1)
        assert (masked[0] < 0).any(), "the example needs a negative channel on the longest caption"
        expected = official.W_g(masked.clamp(min=0))  # by hand: every caption has padded (zero) positions
        torch.testing.assert_close(official.encode_texts(full)["global"], expected, rtol=0, atol=1e-12)
        # a trimmed batch leaves the longest caption without padding: the difference the flag must not have
        assert not torch.allclose(official.encode_texts(trimmed)["global"][0], expected[0])


def test_official_flag_reaches_the_experiment_collate(tiny_params):
    from tireid_core.experiment import build_experiment

    exp = build_experiment(tiny_params("ssan.ssan.global_pool_includes_padding=true", section="ssan"))
    batch = exp.collate()([exp.train_set[i] for i in range(3)])
    assert batch["ids"].shape[1] == exp.params.data.max_words == batch["support_ids"].shape[1]


def test_word_attention_keeps_the_default_init():
    """W_p is PyTorch's default init in the official code (uniform in ±1/√fan_in), not Kaiming fan-out (std √(2/K))."""
    model, _ = make()
    w = model.word_attention.weight
    bound = w.shape[1] ** -0.5
    assert w.abs().max() <= bound < (2 / w.shape[0]) ** 0.5


def test_switches_remove_branches_and_their_losses():
    global_only, p = make("ssan.ssan.part_features=false", "ssan.ssan.relation=false", "ssan.ssan.weak_term=false")
    b = batch()
    img, txt = global_only.encode_images(b["image"]), global_only.encode_texts(text_input(b))
    assert set(img) == set(txt) == {"global"} and img["global"].shape == (4, p.model.feature_dim)
    assert set(global_only.similarities(img, txt)) == {"global", "final"}
    assert retrieval_embedding(img).shape == (4, p.model.feature_dim)
    # without the compound term the support captions are not needed
    plain = {k: v for k, v in b.items() if not k.startswith("support_")}
    terms = global_only(plain)
    assert set(terms) == {"id", "cr", "loss"} and torch.isfinite(terms["loss"])
    parts, _ = make("ssan.ssan.relation=false")
    assert set(parts.encode_images(b["image"])) == {"global", "local"}
    assert set(parts.similarities(parts.encode_images(b["image"]), parts.encode_texts(text_input(b)))) == {
        "global", "local", "final"}


def test_params_need_one_support_caption_for_the_weak_term_and_the_bilstm():
    with pytest.raises(ParamsError, match=r"ssan\.data\.support_captions"):
        load_run_params("ssan", params_file=REPO / "params.yaml", sets=["ssan.data.support_captions=0"])
    with pytest.raises(ParamsError, match=r"ssan\.data\.support_captions"):
        load_run_params("ssan", params_file=REPO / "params.yaml", sets=["ssan.data.support_captions=2"])
    p = load_run_params("ssan", params_file=REPO / "params.yaml",
                        sets=["ssan.data.support_captions=0", "ssan.ssan.weak_term=false"])
    assert p.data.support_captions == 0
    with pytest.raises(ParamsError, match=r"ssan\.model\.text_encoder"):
        load_run_params("ssan", params_file=REPO / "params.yaml", sets=["ssan.model.text_encoder=transformer"])


def test_weak_term_reads_the_support_captions():
    model, _ = make()
    model.train()
    b = batch()
    base = seeded(model, b)
    other = dict(b, support_ids=b["ids"], support_mask=b["mask"])  # the main captions as weak ones
    changed = seeded(model, other)
    assert torch.equal(changed["id"], base["id"])  # ID sees only the main caption
    assert not torch.allclose(changed["cr"], base["cr"])
    with pytest.raises(KeyError):  # no silent fallback when the support set is missing
        model({k: v for k, v in b.items() if not k.startswith("support_")})


def test_id_weight_scales_only_the_id_term():
    model, _ = make()
    double, p = make("ssan.ssan.id_weight=2.0")
    assert p.ssan.id_weight == 2.0
    double.load_state_dict(model.state_dict())
    model.train(), double.train()
    b = batch()
    one, two = seeded(model, b), seeded(double, b)
    torch.testing.assert_close(two["id"], 2 * one["id"])
    torch.testing.assert_close(two["cr"], one["cr"])
    torch.testing.assert_close(two["loss"], two["id"] + two["cr"])


def test_start_epoch_drives_the_alpha2_schedule():
    model, p = make()  # tiny profile: alpha2 adaptive from epoch 1
    start = p.ssan.alpha2_start_epoch
    assert start == 1
    model.train()
    b = batch()
    assert model.epoch == 0
    before = seeded(model, b)
    model.start_epoch(start)
    assert model.epoch == start
    adaptive = seeded(model, b)
    model.start_epoch(start + 2)
    later = seeded(model, b)
    torch.testing.assert_close(adaptive["id"], before["id"])
    assert not torch.allclose(adaptive["cr"], before["cr"])  # fixed alpha2 = alpha1 / 2 before, adaptive after
    torch.testing.assert_close(later["cr"], adaptive["cr"])  # adaptive margins do not depend on the epoch itself
    model.start_epoch(0)
    torch.testing.assert_close(seeded(model, dict(b, epoch=start))["cr"], before["cr"])  # a batch key is ignored


def test_training_step_backpropagates_into_every_branch():
    model, _ = make()
    model.train()
    terms = model(batch())
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
    b["support_mask"], b["support_ids"] = b["mask"].clone(), b["ids"].clone()
    model.train()
    terms = model(b)
    assert torch.isfinite(terms["loss"])
    model.eval()
    t = model.encode_texts(text_input(b))
    assert set(t) == {"global", "local", "relation"}
    for key, value in t.items():
        assert value.shape[0] == 1 and torch.isfinite(value).all(), key
    assert all(v.shape[0] == 1 for v in model.encode_images(b["image"]).values())


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


def test_experiment_batches_carry_one_support_caption_of_another_image(tiny_params):
    from tireid_core.experiment import build_experiment

    exp = build_experiment(tiny_params(section="ssan"))
    assert isinstance(exp.model, SSAN) and exp.params.data.support_captions == 1
    torch.manual_seed(0)
    items = [exp.train_set[i] for i in range(8)]
    pairs = exp.train_set.pairs
    for it in items:
        p = pairs[it["index"]]
        (weak,) = it["support_captions"]
        assert any(q.caption == weak and q.pid == p.pid and q.image_index != p.image_index for q in pairs)
    collate = exp.collate()
    b = collate(items)
    expected = collate.tokenize([it["support_captions"][0] for it in items])
    assert torch.equal(b["support_ids"], expected["ids"]) and torch.equal(b["support_mask"], expected["mask"])
    exp.model.train()
    terms = exp.model(b)
    assert set(terms) == {"id", "cr", "loss"} and torch.isfinite(terms["loss"])


def test_frozen_batchnorm_of_the_nonlocal_module_uses_running_statistics():
    """train.freeze_bn puts BatchNorm layers in eval mode; MV-NLN must then use (and keep) the running statistics."""
    torch.manual_seed(0)
    m = MultiViewNonLocal(parts=3, dim=4, inner=2, slope=0.25).train()
    m.bn.eval()
    before = m.bn.running_mean.clone()
    x = torch.randn(5, 3, 4)
    out = m(x)
    assert torch.equal(m.bn.running_mean, before)
    assert torch.allclose(out[:2], m(x[:2]))  # no batch statistics: a sample's output does not depend on the batch
