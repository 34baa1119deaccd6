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
# Sub-sentence boundaries (NAFS splits raw captions on the same character class).
_SUB_SENTENCE_BREAK = re.compile(r"[,.;!?]+")


def word_tokens(caption: str) -> list[str]:
    """Lower-case word tokens without punctuation, in the style of CUHK-PEDES `processed_tokens`.

    Close to, not byte-identical with, the distributed `processed_tokens`; prefer those when a dataset has them.
    """
    return _WORD.findall(caption.lower())


def sub_sentences(caption: str) -> list[str]:
    """The caption's non-empty pieces between , . ; ! ? (raw text, for models that encode each piece separately)."""
    return [p.strip() for p in _SUB_SENTENCE_BREAK.split(caption) if word_tokens(p)]


def sub_sentence_spans(caption: str) -> list[int]:
    """For each token of `word_tokens(caption)`, the index of its sub-sentence (0, 1, ...).

    Punctuation never appears inside a word token, so the tokens of the pieces are exactly the caption's tokens.
    Example: "A man, black shoes." -> tokens [a, man, black, shoes] -> [0, 0, 1, 1].
    """
    spans = []
    for index, piece in enumerate(sub_sentences(caption)):
        spans += [index] * len(word_tokens(piece))
    return spans


class Tokenizer:
    """Interface: `encode(caption) -> list[int]` and `encode_batch(captions, max_len) -> (ids, mask)`."""

    pad_id: int = 0

    def encode(self, caption) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, captions: Sequence, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(captions), max_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(captions), max_len), dtype=torch.bool)
        for row, caption in enumerate(captions):
            tokens = self.encode(caption)[:max_len]
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
    """

    pad_id = 0

    def __init__(self, vocab: WordVocab):
        self.vocab = vocab
        self.vocab_size = vocab.num_embeddings

    def encode(self, caption: str | Sequence[str]) -> list[int]:
        tokens = word_tokens(caption) if isinstance(caption, str) else caption
        return self.vocab.encode_tokens(tokens)


class HFTokenizer(Tokenizer):
    """A `transformers.AutoTokenizer` (WordPiece for BERT) behind the common interface.

    Ids include the special tokens ([CLS] ... [SEP]); truncation keeps [SEP] as the last id.
    """

    def __init__(self, name_or_path: str = "bert-base-uncased"):
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        except OSError as err:
            from tireid_core.models.text_encoders import hf_offline_help

            raise RuntimeError(hf_offline_help(name_or_path, "tokenizer") + f"\n({err})") from err
        self.pad_id = self.tokenizer.pad_token_id
        self.vocab_size = len(self.tokenizer)

    def encode(self, caption: str) -> list[int]:
        return self.tokenizer(caption)["input_ids"]

    def encode_batch(self, captions: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.tokenizer(
            list(captions), padding="max_length", truncation=True, max_length=max_len, return_tensors="pt"
        )
        return out["input_ids"], out["attention_mask"].bool()
