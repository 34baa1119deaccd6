"""Caption tokenisers with one interface, so a paper model can swap a word vocabulary for WordPiece.

    vocab = WordVocab.build([word_tokens(c) for c in train_captions], min_count=2)
    tokenizer = WordTokenizer(vocab)                    # SSAN (Bi-LSTM)
    tokenizer = HFTokenizer("bert-base-uncased")        # NAFS and later (BERT)
    ids, mask = tokenizer.encode_batch(captions, max_len=100)   # LongTensor B x max_len, BoolTensor (True = real)

Batches are right-padded to exactly `max_len` with `pad_id`, and truncated to it.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import torch

# Lower-case letter/digit runs; hyphens and apostrophes inside a word stay ("t-shirt", "man's").
_WORD = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")
_WORD_ANY_CASE = re.compile(_WORD.pattern, re.IGNORECASE)  # same words, with positions in the raw caption
# Sub-sentence boundaries (NAFS splits raw captions on the same character class).
_SUB_SENTENCE_BREAK = re.compile(r"[,.;!?]+")
# NAFS's official split: one character at a time, so ",," and a leading "," give empty pieces.
_OFFICIAL_BREAK = re.compile(r"[;,!?.]")


def word_tokens(caption: str) -> list[str]:
    """Lower-case word tokens without punctuation, in the style of CUHK-PEDES `processed_tokens`.

    Close to, not byte-identical with, the distributed `processed_tokens`; prefer those when a dataset has them.
    """
    return _WORD.findall(caption.lower())


def sub_sentences(caption: str) -> list[str]:
    """The caption's non-empty pieces between , . ; ! ? (raw text, for models that encode each piece separately)."""
    return [p.strip() for p in _SUB_SENTENCE_BREAK.split(caption) if word_tokens(p)]


def official_sub_sentences(caption: str, n_sep: int) -> list[str | None]:
    """NAFS's official pieces: the first `n_sep` pieces of a split on every single , . ; ! ? (empty pieces kept,
    whitespace kept), None for each missing piece (the official code fills it with the literal text "[PAD]")."""
    pieces = _OFFICIAL_BREAK.split(caption)[:n_sep]
    return pieces + [None] * (n_sep - len(pieces))


def sub_sentence_spans(caption: str) -> list[int]:
    """For each token of `word_tokens(caption)`, the index of its sub-sentence (0, 1, ...).

    Punctuation never appears inside a word token, so the tokens of the pieces are exactly the caption's tokens.
    Example: "A man, black shoes." -> tokens [a, man, black, shoes] -> [0, 0, 1, 1].
    """
    return sub_sentence_of_chars(caption, [m.span() for m in _WORD_ANY_CASE.finditer(caption)])


def sub_sentence_of_chars(caption: str, offsets: Sequence[tuple[int, int] | None]) -> list[int]:
    """Sub-sentence index (as in `sub_sentences`) of tokens given by character spans; -1 for special tokens
    (span None) and for tokens inside a punctuation run. Works for any tokeniser that reports character offsets."""
    starts, index = [], 0
    position = 0
    for match in list(_SUB_SENTENCE_BREAK.finditer(caption)) + [None]:
        end = match.start() if match else len(caption)
        if word_tokens(caption[position:end]):  # pieces without words are not sub-sentences (as in sub_sentences)
            starts.append((position, end, index))
            index += 1
        position = match.end() if match else end
    out = []
    for span in offsets:
        piece = -1
        if span is not None:
            for lo, hi, k in starts:
                if lo <= span[0] < hi:
                    piece = k
                    break
        out.append(piece)
    return out


class Tokenizer:
    """Interface: `encode(caption) -> list[int]` and `encode_batch(captions, max_len) -> (ids, mask)`.

    Models with sub-sentence units (NAFS) also use `encode_batch_pieces`, which adds each token's sub-sentence index;
    it needs `encode_with_offsets` (ids and each token's character span, None for special tokens).
    """

    pad_id: int = 0

    def encode(self, caption) -> list[int]:
        raise NotImplementedError

    def encode_with_offsets(self, caption: str) -> tuple[list[int], list[tuple[int, int] | None]]:
        raise NotImplementedError(f"{type(self).__name__} does not report character offsets")

    def encode_batch_pieces(self, captions: Sequence[str], max_len: int):
        """(ids, mask, pieces): `pieces` B × max_len holds each token's sub-sentence index, -1 for [CLS]/[SEP],
        punctuation and padding. Truncation at `max_len` may drop [SEP] (as NAFS's official code does)."""
        ids = torch.full((len(captions), max_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(captions), max_len), dtype=torch.bool)
        pieces = torch.full((len(captions), max_len), -1, dtype=torch.long)
        for row, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise TypeError(f"sub-sentences need raw caption strings, got {type(caption).__name__} at row {row}")
            tokens, offsets = self.encode_with_offsets(caption)
            tokens, offsets = tokens[:max_len], offsets[:max_len]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, : len(tokens)] = True
            pieces[row, : len(tokens)] = torch.tensor(sub_sentence_of_chars(caption, offsets), dtype=torch.long)
        return ids, mask, pieces

    def encode_batch_official_pieces(self, captions: Sequence[str], n_sep: int, max_len: int):
        """(ids, mask) of NAFS's official sub-sentence sequences, n_sep rows per caption, caption-major (caption 0's
        pieces, then caption 1's…). Each piece is tokenised on its own as [CLS] piece [SEP] and cut at `max_len`
        (the cut may drop [SEP]); an empty piece gives [CLS] [SEP]; a missing one [CLS] [PAD] [SEP] with every
        position attended, which is what BERT's tokenizer makes of the official "[PAD]" filler."""
        rows = []
        for caption in captions:
            if not isinstance(caption, str):
                raise TypeError(f"sub-sentences need raw caption strings, got {type(caption).__name__}")
            for piece in official_sub_sentences(caption, n_sep):
                rows.append(self.encode(piece) if piece is not None else [self.cls_id, self.pad_id, self.sep_id])
        return self._padded(rows, max_len)

    def encode_batch(self, captions: Sequence, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._padded([self.encode(caption) for caption in captions], max_len)

    def _padded(self, rows: list[list[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) of id lists, each cut at `max_len` and right-padded with `pad_id`."""
        ids = torch.full((len(rows), max_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), max_len), dtype=torch.bool)
        for row, tokens in enumerate(rows):
            tokens = tokens[:max_len]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, : len(tokens)] = True
        return ids, mask


class WordVocab:
    """Word -> index map: 0 is padding, words are 1..|V| in first-seen order, optional UNK = |V| + 1.

    Out-of-vocabulary words are deleted by default (SSAN); with unk=True they map to `unk_id`.
    """

    UNK = "<unk>"

    def __init__(self, words: Sequence[str], unk: bool = False):
        self.words = list(words)
        self.unk = unk
        self.index = {word: i + 1 for i, word in enumerate(self.words)}
        self.unk_id = len(self.words) + 1 if unk else None

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_count: int = 2, unk: bool = False) -> "WordVocab":
        """Keep lower-cased words seen at least `min_count` times in the training captions, in first-seen order."""
        counts = Counter(token.lower() for tokens in token_lists for token in tokens)
        # Counter preserves insertion (first-seen) order.
        return cls([word for word, count in counts.items() if count >= min_count], unk=unk)

    def __len__(self) -> int:
        """Number of real words (excluding padding and UNK)."""
        return len(self.words)

    @property
    def num_embeddings(self) -> int:
        """Rows an embedding table needs: padding + words (+ UNK)."""
        return len(self.words) + 1 + (1 if self.unk else 0)

    def kept(self, tokens: Sequence[str]) -> list[bool]:
        """Which tokens `encode_tokens` keeps (out-of-vocabulary words are deleted unless the vocabulary has UNK)."""
        return [len(self.encode_tokens([t])) == 1 for t in tokens]

    def encode_tokens(self, tokens: Sequence[str]) -> list[int]:
        if self.unk:
            return [self.index.get(t.lower(), self.unk_id) for t in tokens]
        return [self.index[t.lower()] for t in tokens if t.lower() in self.index]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"words": self.words, "unk": self.unk}, indent=0))

    @classmethod
    def load(cls, path: str | Path) -> "WordVocab":
        data = json.loads(Path(path).read_text())
        return cls(data["words"], unk=data.get("unk", False))


class WordTokenizer(Tokenizer):
    """Captions -> word indices through a `WordVocab`.

    A caption is a raw string (split with `word_tokens`) or an already tokenised list such as `processed_tokens`.
    With `cls_sep=True` every caption becomes [CLS] words [SEP] like BERT's input, the two ids following the
    vocabulary (`cls_id`, `sep_id`), so a small transformer can stand in for BERT with the same unit layout (NAFS demo).
    """

    pad_id = 0

    def __init__(self, vocab: WordVocab, cls_sep: bool = False):
        self.vocab = vocab
        self.cls_sep = cls_sep
        self.cls_id = vocab.num_embeddings if cls_sep else None
        self.sep_id = vocab.num_embeddings + 1 if cls_sep else None
        self.vocab_size = vocab.num_embeddings + (2 if cls_sep else 0)

    def encode(self, caption: str | Sequence[str]) -> list[int]:
        tokens = word_tokens(caption) if isinstance(caption, str) else caption
        ids = self.vocab.encode_tokens(tokens)
        return [self.cls_id, *ids, self.sep_id] if self.cls_sep else ids

    def encode_with_offsets(self, caption: str) -> tuple[list[int], list[tuple[int, int] | None]]:
        ids, offsets = [], []
        for match in _WORD_ANY_CASE.finditer(caption):
            encoded = self.vocab.encode_tokens([match.group()])  # out-of-vocabulary words are deleted (or UNK)
            if encoded:
                ids.append(encoded[0])
                offsets.append(match.span())
        if self.cls_sep:
            return [self.cls_id, *ids, self.sep_id], [None, *offsets, None]
        return ids, offsets


class HFTokenizer(Tokenizer):
    """A `transformers.AutoTokenizer` (WordPiece for BERT) behind the common interface.

    Ids include the special tokens ([CLS] ... [SEP]); truncation keeps [SEP] as the last id.
    """

    def __init__(self, name_or_path: str = "bert-base-uncased"):
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        except OSError as err:
            from tireid_core.hub import hf_offline_help

            raise RuntimeError(hf_offline_help(name_or_path, "tokenizer") + f"\n({err})") from err
        self.pad_id = self.tokenizer.pad_token_id
        self.cls_id = self.tokenizer.cls_token_id
        self.sep_id = self.tokenizer.sep_token_id
        self.vocab_size = len(self.tokenizer)

    def encode(self, caption: str) -> list[int]:
        return self.tokenizer(caption)["input_ids"]

    def encode_with_offsets(self, caption: str) -> tuple[list[int], list[tuple[int, int] | None]]:
        """None only for the tokens the tokenizer adds ([CLS], [SEP]): an [UNK] stands for a real word of the caption
        and keeps its span (so its sub-sentence is known)."""
        out = self.tokenizer(caption, return_offsets_mapping=True, return_special_tokens_mask=True)
        offsets = [None if added else tuple(span)
                   for span, added in zip(out["offset_mapping"], out["special_tokens_mask"])]
        return out["input_ids"], offsets

    def encode_batch(self, captions: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.tokenizer(
            list(captions), padding="max_length", truncation=True, max_length=max_len, return_tensors="pt"
        )
        return out["input_ids"], out["attention_mask"].bool()
