"""NAFS model: staircase stripes and shuffling, sub-sentence units (both locality forms), shapes, switches, losses."""
import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from reference_impl import cnl_scores_loop
from tireid_core.data.pairs import CaptionCollate, text_input
from tireid_core.data.tokenizers import HFTokenizer, WordTokenizer, WordVocab
from tireid_core.engine import lr_lambda
from tireid_core.methods import RetrievalModel, TextNeeds, get_method
from tireid_core.models.nafs import (
    NAFS,
    Staircase,
    cnl_attention,
    piece_sequences,
    shuffled_stripes,
    single_pass_inputs,
    stripe_sizes,
)
from tireid_core.models.backbones import create_backbone
from tireid_core.models.nafs_scoring import rvn_rerank, visual_similarity
from tireid_core.models.text_encoders import TransformerTextEncoder
from tireid_core.params import ParamsError, load_run_params

REPO = Path(__file__).resolve().parent.parent
VOCAB = WordVocab("a man woman in red blue shirt black shoes bag with long hair".split())
TOKENIZER = WordTokenizer(VOCAB, cls_sep=True)
CAPTIONS = ["A man in a red shirt, black shoes.", "A woman with long hair; a blue bag", "man", "zzz unknown"]


# Unit tests build the real architectures from random weights: the tiny image backbone without its stand-in file and
# the small transformer in place of the BERT stand-in (the BERT branch has its own test below).
RANDOM_INIT = ["nafs.model.pretrained=false", "nafs.model.text_encoder=transformer", "nafs.model.text_hidden=16",
               "nafs.model.text_layers=1", "nafs.model.text_heads=2"]


def make(*sets, classes=5):
    params = load_run_params("nafs", params_file=REPO / "params.yaml", profile="tiny", sets=[*RANDOM_INIT, *sets])
    torch.manual_seed(0)
    return NAFS(params, TOKENIZER.vocab_size, classes, TOKENIZER), params


def batch(b=4):
    ids, mask, pieces = TOKENIZER.encode_batch_pieces(CAPTIONS[:b], 16)
    g = torch.Generator().manual_seed(1)
    return {"image": torch.randn(b, 3, 48, 16, generator=g), "ids": ids, "mask": mask, "pieces": pieces,
            "label": torch.tensor([0, 0, 1, 2][:b])}


# ------------------------------------------------------------------------------------------------ image side


def test_stripe_sizes_give_the_remainder_to_the_last_stripe():
    assert stripe_sizes(48, 3) == [16, 16, 16]
    assert stripe_sizes(16, 3) == [5, 5, 6]
    with pytest.raises(ValueError, match="2 rows into 3 stripes"):
        stripe_sizes(2, 3)


def test_shuffling_is_undone_and_only_matters_through_borders():
    x = torch.arange(2 * 1 * 6 * 2, dtype=torch.float).reshape(2, 1, 6, 2)
    for perm in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        out = shuffled_stripes(x, 3, nn.Identity(), torch.tensor(perm))
        torch.testing.assert_close(torch.cat(out, 2), x)  # identity layers: the stripes come back in order
    torch.manual_seed(0)
    pointwise = nn.Conv2d(1, 3, 1)
    conv3 = nn.Conv2d(1, 3, 3, padding=1)
    reference = shuffled_stripes(x, 3, conv3, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(torch.cat(reference, 2), conv3(x))  # no shuffle = the plain run
    shuffled = shuffled_stripes(x, 3, conv3, torch.tensor([2, 0, 1]))
    assert not torch.allclose(torch.cat(shuffled, 2), conv3(x))  # 3×3 kernels see the shuffled neighbours
    # a 1×1 convolution sees no neighbours, so the permutation changes nothing
    torch.testing.assert_close(torch.cat(shuffled_stripes(x, 3, pointwise, torch.tensor([2, 0, 1])), 2), pointwise(x))
    # stride 2 halves every stripe; the inverse permutation still restores the order
    strided = nn.Conv2d(1, 1, 1, stride=2)
    out = shuffled_stripes(x, 3, strided, torch.tensor([1, 2, 0]))
    assert [o.shape[2] for o in out] == [1, 1, 1]
    torch.testing.assert_close(torch.cat(out, 2), strided(x))


def test_staircase_map_sizes_match_the_demo_spec():
    """docs/nafs.md §10: 48×16 demo input → layer2 24×8 (3 stripes of 8 rows), layer3 12×4 (2 stripes of 6 rows)."""
    torch.manual_seed(0)
    backbone = create_backbone("resnet_small", last_stride=1, widths=(8, 8, 16, 16))
    net = Staircase(backbone, "full", 3, 2, shuffle=True).eval()
    x = torch.randn(2, 3, 48, 16)
    maps = backbone(x)
    assert maps["layer2"].shape[2:] == (24, 8) and maps["layer3"].shape[2:] == (12, 4)
    g, stripes = net(x)
    assert g.shape == (2, 16) and stripes.shape == (2, 5, 16)
    # branch copies start from the backbone's weights
    for a, b in zip(net.branch2[0].parameters(), backbone.layer3.parameters()):
        assert torch.equal(a, b) and a is not b
    # test time: identity permutation, deterministic; training: a fresh permutation per step
    torch.testing.assert_close(net(x)[1], stripes)
    net.train()
    torch.manual_seed(3)
    perms = [net._perm(3, "cpu").tolist() for _ in range(20)]
    assert len({tuple(p) for p in perms}) > 1
    assert Staircase(backbone, "single", 3, 2, True).n_stripes == 3 and Staircase(backbone, "global", 3, 2, True).n_stripes == 0


# ------------------------------------------------------------------------------------------------ text side


def test_tokenizer_pieces_follow_the_sub_sentences():
    ids, mask, pieces = TOKENIZER.encode_batch_pieces(CAPTIONS, 12)
    # "A man in a red shirt, black shoes." -> [CLS] a man in a red shirt | black shoes [SEP]
    assert ids[0, :10].tolist() == [TOKENIZER.cls_id, 1, 2, 4, 1, 5, 7, 8, 9, TOKENIZER.sep_id]
    assert pieces[0, :10].tolist() == [-1, 0, 0, 0, 0, 0, 0, 1, 1, -1]
    assert pieces[2, :3].tolist() == [-1, 0, -1]
    assert pieces[3, :2].tolist() == [-1, -1] and mask[3].sum() == 2  # every word out of vocabulary
    assert (pieces[~mask] == -1).all()


def test_hf_tokenizer_pieces_from_character_offsets(tiny_bert_dir):
    tok = HFTokenizer(str(tiny_bert_dir))
    ids, mask, pieces = tok.encode_batch_pieces(["A man, red shirt. long hair"], 16)
    n = int(mask.sum())
    words = tok.tokenizer.convert_ids_to_tokens(ids[0, :n].tolist())
    assert words == ["[CLS]", "a", "man", ",", "red", "shirt", ".", "long", "hair", "[SEP]"]
    assert pieces[0, :n].tolist() == [-1, 0, 0, -1, 1, 1, -1, 2, 2, -1]


def test_piece_sequences_by_hand():
    cls, sep = 90, 91
    ids = torch.tensor([[cls, 5, 6, 7, 8, sep], [cls, 9, sep, 0, 0, 0]])
    pieces = torch.tensor([[-1, 0, 0, 1, 1, -1], [-1, 0, -1, -1, -1, -1]])
    seq, mask, present = piece_sequences(ids, pieces, 2, cls, sep)
    # rows: piece 0 of each caption, then piece 1 of each caption
    assert seq[mask[:, :seq.shape[1]]].tolist() == [cls, 5, 6, sep, cls, 9, sep, cls, 7, 8, sep, cls, sep]
    assert present.tolist() == [True, True, True, False]
    assert (seq[~mask] == 0).all()


def test_masked_single_pass_keeps_locality_and_word_features():
    torch.manual_seed(0)
    enc = TransformerTextEncoder(TOKENIZER.vocab_size, dim=16, layers=2, heads=2, max_len=20, dropout=0.0).eval()
    ids, mask, pieces = TOKENIZER.encode_batch_pieces(CAPTIONS[:2], 12)
    ext = single_pass_inputs(ids, mask, pieces, 2, TOKENIZER.cls_id)
    assert ext[0].shape == (2, 14) and ext[2].shape == (2, 14, 14)
    with torch.no_grad():
        out = enc(ext[0], ext[1], attention=ext[2], positions=ext[3])
        plain = enc(ids, mask)
    # caption tokens never see the extra [CLS] tokens: word features equal a plain pass
    torch.testing.assert_close(out[:, :12][mask], plain[mask], atol=1e-5, rtol=1e-5)
    # an extra [CLS] reads only its own sub-sentence: with one layer, changing a word of sub-sentence 1 leaves
    # sub-sentence 0's feature alone (deeper layers pass context in through the words themselves)
    enc = TransformerTextEncoder(TOKENIZER.vocab_size, dim=16, layers=1, heads=2, max_len=20, dropout=0.0).eval()
    with torch.no_grad():
        out = enc(ext[0], ext[1], attention=ext[2], positions=ext[3])
    changed = ids.clone()
    changed[0, 7] = 3  # "black" -> "blue" (piece 1 of caption 0)
    ext2 = single_pass_inputs(changed, mask, pieces, 2, TOKENIZER.cls_id)
    with torch.no_grad():
        out2 = enc(ext2[0], ext2[1], attention=ext2[2], positions=ext2[3])
    torch.testing.assert_close(out2[0, 12], out[0, 12])
    assert not torch.allclose(out2[0, 13], out[0, 13])


# ------------------------------------------------------------------------------------------------ model


@pytest.mark.parametrize("sets", [
    [],
    ["nafs.nafs.locality=masked_single_pass"],
    ["nafs.nafs.alignment=per_scale"],
    ["nafs.nafs.scales=single", "nafs.nafs.locality=none"],
    ["nafs.nafs.unit_norm=per_token", "nafs.nafs.cmpm_q_norm=l2", "nafs.nafs.rvn_mode=official"],
], ids=["full", "masked_single_pass", "per_scale", "single_no_locality", "flags"])
def test_forward_similarities_and_batch_of_one(sets):
    model, p = make(*sets)
    assert isinstance(model, RetrievalModel)
    b = batch()
    terms = model(b)
    assert {"cmpm", "cmpc", "cont", "loss"} <= set(terms) and torch.isfinite(terms["loss"])
    torch.testing.assert_close(terms["loss"], sum(v for k, v in terms.items() if k != "loss"))
    terms["loss"].backward()
    assert model.image_net.backbone.stem.conv1.weight.grad is not None
    model.eval()
    with torch.no_grad():
        img, txt = model.encode_images(b["image"]), model.encode_texts(text_input(b))
        r, u, d = 1 + model.image_net.n_stripes, model.n_units, p.model.feature_dim
        assert {k: tuple(v.shape) for k, v in img.items()} == {"global": (4, d), "query": (4, r, d),
                                                               "value": (4, r, d)}
        assert {k: tuple(v.shape) for k, v in txt.items()} == {"global": (4, d), "key": (4, u, d),
                                                               "value": (4, u, d), "unit_mask": (4, u)}
        assert txt["unit_mask"].dtype == torch.bool
        sims = model.similarities(img, txt)
        assert set(sims) == {"final", "global", "local"}  # re-ranking is a test-time step (model.rerank)
        assert set(model.rerank(sims, img)) == {"final", "global", "local", "rvn"}
        assert sims["final"].shape == (4, 4)
        torch.testing.assert_close(sims["final"], sims["global"] + sims["local"])
        # the contract's encoders give the same local scores as the model's own feature functions
        direct = model.local_scores(model.text_features(b["ids"], b["mask"], b["pieces"]), model.image_features(b["image"]))
        torch.testing.assert_close(sims["local"], direct)
    model.train()
    one = {k: (v[:1] if torch.is_tensor(v) else v) for k, v in b.items()}
    assert torch.isfinite(model(one)["loss"])  # the official code crashes on a batch of one


def test_global_only_has_no_local_units_and_no_cont_term():
    model, p = make("nafs.nafs.scales=global", "nafs.nafs.locality=none")
    terms = model(batch())
    assert "cont" not in terms and not hasattr(model, "image_query")
    model.eval()
    b = batch()
    with torch.no_grad():
        img, txt = model.encode_images(b["image"]), model.encode_texts({"ids": b["ids"], "mask": b["mask"]})
        assert set(img) == set(txt) == {"global"}
        sims = model.similarities(img, txt)
    assert set(sims) == {"final"}
    assert set(model.rerank(sims, img)) == {"final", "rvn"}
    assert model.image_unit_slices() == {"whole": slice(0, 1), "branch_2": slice(1, 1), "branch_3": slice(1, 1)}


def test_local_score_is_the_cnl_of_the_spec():
    """S_loc of the model = the literal six-step loop on its own units (docs/nafs.md §2.3)."""
    model, _ = make()
    model.eval()
    b = batch()
    with torch.no_grad():
        img, txt = model.image_features(b["image"]), model.text_features(b["ids"], b["mask"], b["pieces"])
        ref = cnl_scores_loop(txt["key"], txt["unit_mask"], img["query"], text_values=txt["value"],
                              image_values=img["value"])
        torch.testing.assert_close(model.local_scores(txt, img), ref, atol=1e-5, rtol=1e-5)
        # unit layout: [global, 2 sub-sentences, words]; caption 2 ("man") has one sub-sentence and one word
        assert txt["unit_mask"][2, :5].tolist() == [True, True, False, True, False]
        att = cnl_attention(model, txt, img, text=2, image=1)
        single = cnl_attention(model, model.encode_texts({k: v[2:3] for k, v in text_input(b).items()}),
                               model.encode_images(b["image"][1:2]))
    assert att.shape == (6, model.n_units)
    torch.testing.assert_close(att.sum(1), torch.ones(6))
    assert (att[:, ~txt["unit_mask"][2]] == 0).all()
    torch.testing.assert_close(single, att, atol=1e-6, rtol=1e-5)  # text=i, image=j pick rows of the dicts
    other = cnl_attention(model, txt, img, text=0, image=1)
    assert not torch.allclose(other, att)
    # the unit layouts the analyses read
    units = model.text_unit_slices()
    assert units == {"global": slice(0, 1), "sub_sentences": slice(1, 3), "words": slice(3, None)}
    assert torch.arange(model.n_units)[units["words"]].numel() == model.max_words - 1  # word positions 1..
    assert model.image_unit_slices() == {"whole": slice(0, 1), "branch_2": slice(1, 4), "branch_3": slice(4, 6)}


def test_optimizer_groups_follow_the_recipe():
    model, p = make("nafs.train.backbone_lr_mult=0.1", "nafs.train.weight_decay=0.00004")
    heads, image, text = model.param_groups(p)
    assert heads["weight_decay"] == 0 and text["weight_decay"] == 0 and image["weight_decay"] == 4e-5
    assert image["lr"] == pytest.approx(p.train.lr * 0.1) and heads["lr"] == p.train.lr
    n = sum(len(g["params"]) for g in (heads, image, text))
    assert n == sum(1 for q in model.parameters() if q.requires_grad)
    assert any(q is model.class_weights for q in heads["params"])
    assert not model.image_bn.bias.requires_grad  # BN neck bias frozen at zero


def test_epoch_multistep_schedule_matches_the_official_multipliers():
    p = load_run_params("nafs", params_file=REPO / "params.yaml", profile="paper")
    factor = lr_lambda(p, steps_per_epoch=3)
    per_epoch = [factor(3 * e + 1) for e in range(60)]
    assert per_epoch[0] == pytest.approx(0.01) and per_epoch[9] == pytest.approx(0.01 + 0.099 * 9)
    assert per_epoch[10:20] == [1.0] * 10
    assert per_epoch[20] == pytest.approx(0.1) and per_epoch[25] == pytest.approx(0.01)
    assert per_epoch[59] == pytest.approx(0.001)


def test_params_reject_inconsistent_switches():
    with pytest.raises(ParamsError, match="nafs.nafs.alignment"):
        load_run_params("nafs", params_file=REPO / "params.yaml", sets=["nafs.nafs.alignment=per_scale",
                                                                           "nafs.nafs.scales=single"])
    with pytest.raises(ParamsError, match="nafs.nafs.locality"):
        load_run_params("nafs", params_file=REPO / "params.yaml", sets=["nafs.nafs.locality=window"])
    with pytest.raises(ParamsError, match=r"nafs\.model\.text_encoder"):
        load_run_params("nafs", params_file=REPO / "params.yaml", sets=["nafs.model.text_encoder=bilstm"])
    params = load_run_params("nafs", params_file=REPO / "params.yaml", sets=[*RANDOM_INIT, "nafs.model.feature_dim=64"])
    with pytest.raises(ValueError, match="feature_dim"):
        NAFS(params, 30, 5, SimpleNamespace(cls_id=28, sep_id=29))


def test_bert_text_branch_both_locality_forms(tiny_bert_dir):
    tok = HFTokenizer(str(tiny_bert_dir))
    for locality in ("separate_passes", "masked_single_pass"):
        params = load_run_params("nafs", params_file=REPO / "params.yaml", profile="tiny", sets=[
            "nafs.model.pretrained=false", "nafs.model.text_encoder=bert", f"nafs.model.text_model={tiny_bert_dir}", "nafs.model.feature_dim=32",
            f"nafs.nafs.locality={locality}"])
        torch.manual_seed(0)
        model = NAFS(params, tok.vocab_size, 5, tok)
        assert (model.cls_id, model.sep_id) == (tok.cls_id, tok.sep_id)
        ids, mask, pieces = tok.encode_batch_pieces(["A man, red shirt. long hair", "a woman with a bag"], 16)
        b = {"image": torch.randn(2, 3, 48, 16), "ids": ids, "mask": mask, "pieces": pieces,
             "label": torch.tensor([0, 1])}
        terms = model(b)
        assert torch.isfinite(terms["loss"])
        txt = model.text_features(ids, mask, pieces)
        assert txt["unit_mask"][0, :3].tolist() == [True, True, True] and txt["unit_mask"][1, :3].tolist() == [True, True, False]
        if locality == "masked_single_pass":  # the 4-D mask reaches BERT: caption tokens ignore the extra [CLS]
            enc = model.text_encoder.eval()
            ext = single_pass_inputs(ids, mask, pieces, 2, tok.cls_id)
            with torch.no_grad():
                out = enc(ext[0], ext[1], attention=ext[2], positions=ext[3])
                plain = enc(ids, mask)
            torch.testing.assert_close(out[:, :16][mask], plain[mask], atol=1e-5, rtol=1e-5)


def test_collate_carries_pieces_trimmed_with_the_ids():
    assert NAFS.text_needs == TextNeeds(cls_sep=True, pieces=True) and get_method("nafs").model is NAFS
    collate = CaptionCollate(TOKENIZER, 40, pieces=True)
    out = collate.tokenize(CAPTIONS)
    assert out["ids"].shape == out["mask"].shape == out["pieces"].shape == (4, 10)  # longest caption: [CLS] + 8 words + [SEP]
    ids, mask, pieces = TOKENIZER.encode_batch_pieces(CAPTIONS, 40)
    assert torch.equal(out["pieces"], pieces[:, :10]) and torch.equal(out["ids"], ids[:, :10])
    plain = CaptionCollate(TOKENIZER, 40).tokenize(CAPTIONS)
    assert set(plain) == {"ids", "mask"}


def test_experiment_tokenizes_with_cls_sep_and_pieces(tiny_params):
    """The method's text needs reach the tokenizer and the collate: [CLS] words [SEP] and sub-sentence indices."""
    from tireid_core.experiment import build_experiment

    exp = build_experiment(tiny_params(section="nafs"))
    assert isinstance(exp.model, NAFS)
    tok = exp.tokenizer
    assert (exp.model.cls_id, exp.model.sep_id) == (tok.cls_id, tok.sep_id)
    items = [exp.train_set[i] for i in range(4)]
    b = exp.collate()(items)
    assert "pieces" in b and b["pieces"].shape == b["ids"].shape
    assert (b["ids"][:, 0] == tok.cls_id).all()
    lengths = b["mask"].sum(1)
    whole = lengths < exp.params.data.max_words  # a caption cut at max_words may lose [SEP] (docs/nafs.md §2.2)
    assert whole.any()
    assert (b["ids"][whole, lengths[whole] - 1] == tok.sep_id).all()
    # word tokens (not [CLS]/[SEP], not punctuation, which BERT keeps as tokens) belong to a sub-sentence
    texts = [tok.tokenizer.convert_ids_to_tokens(row) for row in b["ids"].tolist()]
    wordlike = torch.tensor([[any(ch.isalnum() for ch in t) and t not in ("[CLS]", "[SEP]", "[PAD]", "[UNK]")
                              for t in row] for row in texts])
    words = b["mask"] & wordlike
    assert words.any()
    assert (b["pieces"][:, 0] == -1).all() and (b["pieces"][words] >= 0).all()
    exp.model.train()
    terms = exp.model(b)
    assert {"cmpm", "cmpc", "cont", "loss"} <= set(terms) and torch.isfinite(terms["loss"])


# ------------------------------------------------------------------------------------------------ official text units
# Edge cases of the official rules (models/bert.py, train.py, metric.py of the official code), worked out by hand:
#   split on every single , . ; ! ? (empty pieces kept), first n_sep = 2 pieces, a missing piece is the text "[PAD]";
#   each piece tokenised alone as [CLS] piece [SEP] and cut at 100; a caption of T tokens uses 1 + 2 + T units.
EDGE_CAPTIONS = {
    "no punctuation": ("a man in red shirt", ["a man in red shirt", None]),
    "one sentence ending in '.'": ("a man in red shirt.", ["a man in red shirt", ""]),
    "leading ','": (", a man", ["", " a man"]),
    "',,'": ("a man,, red shirt", ["a man", ""]),
    "three pieces": ("a man; red shirt, black shoes", ["a man", " red shirt"]),
}


@pytest.mark.parametrize("name", sorted(EDGE_CAPTIONS))
def test_official_pieces_follow_the_single_character_split(name):
    from tireid_core.data.tokenizers import official_sub_sentences

    caption, pieces = EDGE_CAPTIONS[name]
    assert official_sub_sentences(caption, 2) == pieces


def test_official_piece_sequences_by_hand(tiny_bert_dir):
    tok = HFTokenizer(str(tiny_bert_dir))
    cls, sep, pad = tok.cls_id, tok.sep_id, tok.pad_id
    w = {word: tok.encode(word)[1] for word in ("a", "man", "red", "shirt")}
    ids, mask = tok.encode_batch_official_pieces(["a man in red shirt", "a man in red shirt.", ", a man",
                                                  "a man,, red shirt"], 2, 100)
    rows = [ids[r, :mask[r].sum()].tolist() for r in range(8)]
    full = tok.encode("a man in red shirt")
    assert rows[0] == full and rows[1] == [cls, pad, sep] and mask[1, :3].all()  # "[PAD]" filler: 3 attended ids
    assert rows[2] == full and rows[3] == [cls, sep]                               # empty piece after the "."
    assert rows[4] == [cls, sep] and rows[5] == [cls, w["a"], w["man"], sep]        # leading ","
    assert rows[6] == [cls, w["a"], w["man"], sep] and rows[7] == [cls, sep]        # ",,"
    # a piece of more than 100 wordpieces is cut at 100 ids, losing its [SEP] (as the official pre_process)
    ids, mask = tok.encode_batch_official_pieces([" ".join(["a"] * 120)], 2, 100)
    assert mask[0].sum() == 100 and ids[0, 0] == cls and (ids[0, 1:100] == w["a"]).all()


def official_nafs(tiny_bert_dir, *sets, max_words=24):
    tok = HFTokenizer(str(tiny_bert_dir))
    params = load_run_params("nafs", params_file=REPO / "params.yaml", profile="tiny", sets=[
        "nafs.model.pretrained=false", "nafs.model.text_encoder=bert", f"nafs.model.text_model={tiny_bert_dir}",
        "nafs.model.feature_dim=32", f"nafs.data.max_words={max_words}", "nafs.nafs.locality=separate_passes", "nafs.nafs.text_units=official",
        *sets])
    torch.manual_seed(0)
    return NAFS(params, tok.vocab_size, 5, tok), tok, params


def test_official_unit_block_and_masks(tiny_bert_dir):
    model, tok, params = official_nafs(tiny_bert_dir)
    assert model.text_needs.full_width and model.text_needs.official_pieces == 2
    assert model.n_units == 1 + 2 + 24 - 2  # official: 98 + 2 + 1 rows for 100-wide captions
    captions = ["a man in red shirt", "a man in red shirt.", " ".join(["a"] * 40)]
    batch = CaptionCollate(tok, 24, pieces=True, full_width=True, official_pieces=2).tokenize(captions)
    assert batch["ids"].shape == (3, 24) and batch["sub_ids"].shape[0] == 6
    # the 40-word caption is cut at 24 ids without [SEP], as the official pre_process does
    assert batch["mask"][2].all() and batch["ids"][2, -1] != tok.sep_id
    model.eval()
    with torch.no_grad():
        txt = model.encode_texts(batch)
    t = batch["mask"].sum(1)  # T: [CLS] 5 words [SEP] = 7, then 8 with the ".", then 24 (cut)
    assert t.tolist() == [7, 8, 24]
    # units used: global, 2 sub-sentences, then positions 1..T of the caption: wordpieces, [SEP], one padding output
    assert txt["unit_mask"].sum(1).tolist() == [3 + 7, 3 + 8, model.n_units]
    assert txt["key"].shape == (3, model.n_units, 32)
    # nothing is zeroed before the joint LayerNorm: padding outputs shape every row's statistics
    assert (txt["key"][0, 3 + 7:].abs().sum(1) > 0).all()
    with pytest.raises(ValueError, match="max_words=24"):
        model.encode_texts(CaptionCollate(tok, 24, pieces=True, official_pieces=2).tokenize(captions[:2]))


def official_cnl_reference(key, value, n_word, query, img_value, temperature=20.0, slope=0.1):
    """The official compute_weiTexts (image → text direction) for one caption, written from metric.py's formulas:
    keys and values cut to the caption's first n_word units, l2norm(query)·l2norm(key), LeakyReLU(0.1), l2norm over
    the image regions, softmax over the units ×λ, attended text, l2norm, cosine with the image value, mean over
    regions."""
    k, v = key[:n_word], value[:n_word]
    qn = query / (query.norm(dim=-1, keepdim=True) + 1e-8)
    kn = k / (k.norm(dim=-1, keepdim=True) + 1e-8)
    attn = torch.nn.functional.leaky_relu(kn @ qn.t(), slope)          # units × regions
    attn = attn / (attn.norm(dim=1, keepdim=True) + 1e-8)              # over regions, per unit
    attn = torch.softmax(attn.t() * temperature, dim=1)               # regions × units
    wei = attn @ v
    wei = wei / (wei.norm(dim=-1, keepdim=True) + 1e-8)
    cos = (img_value * wei).sum(-1) / (img_value.norm(dim=-1) * wei.norm(dim=-1)).clamp(min=1e-8)
    return cos.mean()


def test_official_units_give_the_official_cnl_score_float64(tiny_bert_dir):
    model, tok, _ = official_nafs(tiny_bert_dir)
    model = model.double().eval()
    captions = ["a man, red shirt. long hair", "a woman with a bag"]
    batch = CaptionCollate(tok, 24, pieces=True, full_width=True, official_pieces=2).tokenize(captions)
    g = torch.Generator().manual_seed(3)
    images = torch.randn(3, 3, 48, 16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        txt, img = model.encode_texts(batch), model.encode_images(images)
        ours = model.local_scores(txt, img)  # texts × images
        n_word = batch["mask"].sum(1) + 3   # the official text_length
        for i in range(2):
            for j in range(3):
                expected = official_cnl_reference(txt["key"][i], txt["value"][i], int(n_word[i]), img["query"][j],
                                                  img["value"][j])
                # 1e-7: the project's cosine adds ε to each norm where metric.py clamps the product (a 1e-8 relative
                # difference); a wrong unit selection moves the score by far more (up to 0.34 relative)
                torch.testing.assert_close(ours[i, j], expected, rtol=1e-7, atol=1e-10)


def test_bn_groups_normalise_each_group_and_keep_the_first_groups_running_stats(tiny_bert_dir):
    """bn_group_size = B/2 matches running the two halves as two DataParallel replicas: features of each half equal a
    forward of that half alone (same stripe shuffle), and the running statistics are those after the first half."""
    model, tok, _ = official_nafs(tiny_bert_dir, "nafs.nafs.text_units=intended", "nafs.nafs.bn_group_size=2")
    model.train()
    captions = ["a man, red shirt", "a woman with a bag", "long hair. black shoes", "a man in blue"]
    batch = {"image": torch.randn(4, 3, 48, 16, generator=torch.Generator().manual_seed(5)),
             "label": torch.tensor([0, 1, 2, 0]), **CaptionCollate(tok, 24, pieces=True).tokenize(captions)}
    text = text_input(batch)
    reference = copy.deepcopy(model)
    torch.manual_seed(7)
    img, txt = model.features_in_bn_groups(batch)
    torch.manual_seed(7)
    perms = reference.image_net.draw_perms("cpu")
    halves = [(reference.image_features(batch["image"][rows], perms),
               reference.encode_texts({k: v[rows] for k, v in text.items()}))
              for rows in (slice(0, 2),)]
    after_first = {name: buf.clone() for name, buf in reference.named_buffers()}
    halves.append((reference.image_features(batch["image"][2:], perms),
                   reference.encode_texts({k: v[2:] for k, v in text.items()})))
    for key in img:
        torch.testing.assert_close(img[key], torch.cat([h[0][key] for h in halves]))
    for key in txt:
        torch.testing.assert_close(txt[key], torch.cat([h[1][key] for h in halves]))
    for name, buf in model.named_buffers():
        torch.testing.assert_close(buf, after_first[name])
    whole = copy.deepcopy(reference)
    torch.manual_seed(7)
    assert not torch.allclose(whole.image_features(batch["image"], perms)["global"], img["global"])
    assert txt["global"].shape[0] == 4 and torch.isfinite(model(batch)["loss"])


def test_official_units_train_and_evaluate_through_the_experiment(tiny_params):
    """The flag reaches the collate (full width, official piece sequences, also for chunked evaluation)."""
    from tireid_core.evaluation import encode_texts
    from tireid_core.experiment import build_experiment

    exp = build_experiment(tiny_params("nafs.nafs.text_units=official", "nafs.nafs.locality=separate_passes",
                                       section="nafs"))
    batch = exp.collate()([exp.train_set[i] for i in range(4)])
    assert batch["ids"].shape[1] == exp.params.data.max_words and batch["sub_ids"].shape[0] == 8
    assert torch.isfinite(exp.model(batch)["loss"])
    feats = encode_texts(exp, [exp.train_set[i]["caption"] for i in range(3)], torch.device("cpu"), exp.model, "t")
    assert feats["unit_mask"].shape == (3, exp.model.n_units)


def test_stripe_shuffle_draws_from_its_own_stream():
    """Other random draws (their number can depend on a DDP rank's local batch) never shift the step's stripe order."""
    model, _ = make()
    model.train()
    orders = []
    for other_draws in (0, 1000):
        torch.manual_seed(0)
        model.start_epoch(0)
        torch.rand(other_draws)
        orders.append([p.tolist() for _ in range(5) for p in model.image_net.draw_perms("cpu")])
    assert orders[0] == orders[1]
    assert len({str(o) for o in orders[0][::2]}) > 1  # and it does shuffle


def test_rerank_uses_the_current_settings_and_nothing_else():
    """RVN = final re-ranked by visual neighbours with nafs.rvn_*; off leaves the scores as they are."""
    model, _ = make("nafs.nafs.rvn_k=2", "nafs.nafs.rvn_weight=0.5")
    model.eval()
    b = batch()
    with torch.no_grad():
        img, txt = model.encode_images(b["image"]), model.encode_texts(text_input(b))
        sims = model.similarities(img, txt)
        out = model.rerank(sims, img)
    expected = rvn_rerank(sims["final"], visual_similarity(img["global"]), k=2, weight=0.5, mode="intended")
    torch.testing.assert_close(out["rvn"], expected)
    assert out["final"] is sims["final"]
    off, _ = make("nafs.nafs.rvn_mode='off'")
    assert off.rerank(sims, img) == sims


def test_training_stage_does_not_depend_on_test_time_settings():
    """Changing nafs.rvn_* must re-score (notebook stages), never retrain: the train stage lists every other key."""
    import yaml

    from tireid_core.methods import get_method

    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train_nafs"]["do"]
    listed = set(stage["params"])
    assert not any(k.startswith("nafs.nafs.rvn") for k in listed)
    assert {"nafs.data", "nafs.model", "nafs.train", "nafs.eval", "nafs.nafs.scales", "nafs.nafs.cmpc"} <= listed
    assert set(get_method("nafs").test_time) == {"nafs.rvn_mode", "nafs.rvn_k", "nafs.rvn_weight"}
    for name in ("nafs", "nafs_analysis"):  # the notebooks that re-score do read them
        assert "nafs" in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][name]["params"]
