"""Word tokens, vocabulary building, padding/truncation and sub-sentence splitting."""
import torch

from tireid_core.data.tokenizers import (
    WordTokenizer,
    WordVocab,
    sub_sentence_spans,
    sub_sentences,
    word_tokens,
)


def test_word_tokens_lower_case_without_punctuation():
    caption = "A man in a navy windbreaker and grey jogging pants, carrying a green duffel bag over his left shoulder."
    assert word_tokens(caption) == [
        "a", "man", "in", "a", "navy", "windbreaker", "and", "grey", "jogging", "pants",
        "carrying", "a", "green", "duffel", "bag", "over", "his", "left", "shoulder",
    ]  # the processed_tokens of the same caption in the dataset spec
    assert word_tokens("She wears a T-shirt; the man's bag (black)!") == ["she", "wears", "a", "t-shirt", "the", "man's", "bag", "black"]
    assert word_tokens(" ,.!") == []


def test_vocab_first_seen_order_and_min_count():
    vocab = WordVocab.build([["a", "Man", "red"], ["a", "woman"], ["man", "red", "red", "hat"]], min_count=2)
    assert vocab.words == ["a", "man", "red"]  # first-seen order, lower-cased, singletons dropped
    assert vocab.index == {"a": 1, "man": 2, "red": 3}
    assert len(vocab) == 3 and vocab.num_embeddings == 4
    assert WordVocab.build([["x", "y"]], min_count=1).words == ["x", "y"]


def test_oov_deleted_by_default_or_mapped_to_unk(tmp_path):
    tokens = [["a", "man", "red"], ["a", "man", "red"]]
    deleting = WordVocab.build(tokens)
    assert deleting.encode_tokens(["a", "tall", "man"]) == [1, 2]
    with_unk = WordVocab.build(tokens, unk=True)
    assert with_unk.unk_id == 4 and with_unk.num_embeddings == 5
    assert with_unk.encode_tokens(["a", "tall", "man"]) == [1, 4, 2]

    path = tmp_path / "vocab.json"
    with_unk.save(path)
    loaded = WordVocab.load(path)
    assert loaded.words == with_unk.words and loaded.unk_id == 4


def test_word_tokenizer_pads_truncates_and_accepts_token_lists():
    vocab = WordVocab(["a", "man", "red", "shirt"])
    tokenizer = WordTokenizer(vocab)
    assert tokenizer.encode("A man, red shirt!") == [1, 2, 3, 4]
    assert tokenizer.encode(["a", "red", "hat"]) == [1, 3]  # processed_tokens work too
    ids, mask = tokenizer.encode_batch(["A man in a red shirt", "red", "unknown words only"], max_len=4)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.tolist() == [[1, 2, 1, 3], [3, 0, 0, 0], [0, 0, 0, 0]]
    assert mask.tolist() == [[True] * 4, [True, False, False, False], [False] * 4]
    assert tokenizer.vocab_size == 5


def test_sub_sentence_spans():
    caption = "A woman with long hair, wearing a white shirt; she carries a bag. "
    assert sub_sentences(caption) == ["A woman with long hair", "wearing a white shirt", "she carries a bag"]
    spans = sub_sentence_spans(caption)
    assert len(spans) == len(word_tokens(caption))
    assert spans == [0] * 5 + [1] * 4 + [2] * 4
    assert sub_sentence_spans("No punctuation at all") == [0, 0, 0, 0]
    assert sub_sentence_spans("Red hat,, , blue shoes...") == [0, 0, 1, 1]  # empty pieces are skipped
    assert sub_sentence_spans("") == []


def test_hf_unknown_words_keep_their_span_and_sub_sentence(tiny_bert_dir):
    """An [UNK] stands for a real word: it keeps its character span, so NAFS's sub-sentence units include it; only
    the tokens the tokenizer adds ([CLS], [SEP]) have no span."""
    from tireid_core.data.tokenizers import HFTokenizer

    tok = HFTokenizer(str(tiny_bert_dir))
    caption = "A man, zzzq shoes."  # 'zzzq' is not in the tiny vocabulary (nor are its pieces)
    ids, offsets = tok.encode_with_offsets(caption)
    unk = ids.index(tok.tokenizer.unk_token_id)
    assert caption[slice(*offsets[unk])] == "zzzq"
    assert offsets[0] is None and offsets[-1] is None and all(o is not None for o in offsets[1:-1])
    _, _, pieces = tok.encode_batch_pieces([caption], 12)
    assert pieces[0, unk] == 1  # the second sub-sentence, like "shoes"
