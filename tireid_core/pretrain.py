"""Pretrained stand-ins: the demo's own versions of the public weights every paper starts from.

The papers fine-tune ImageNet ResNet-50 and BERT-base; neither can be downloaded here, and training the demo's small
encoders from random initialisation makes short recipes measure convergence speed instead of the papers' ideas. So the
pipeline makes the equivalents itself, from a *separate* SimPEDES draw (its own seed, its own people):

- ``image``: the demo backbone trained to classify the generator's part attributes (hair colour, upper-body type,
  shoe colour, ...) from single images: a generic visual objective, not the retrieval task, like ImageNet labels;
- ``text``: a small BERT trained by masked language modelling on the draw's captions, with its own fixed vocabulary,
  written with ``save_pretrained`` so the demo loads it through ``from_pretrained`` exactly like BERT-base;
- ``clip``: a small CLIP (a ViT and a text transformer with CLIP's BPE tokenizer, both learnt here) trained by CLIP's
  contrastive image-caption objective, for CMR's OpenAI CLIP ViT-B/16; saved and loaded like it.

    python -m tireid_core.pretrain image      # the `pretrain.image` section of params.yaml
    python -m tireid_core.pretrain text
    python -m tireid_core.pretrain clip

Identities of the pretraining draw whose attribute vector equals that of any identity of the evaluated dataset are
left out (and counted in the report), so no person the demo trains or tests on is ever seen in pretraining.
Adding a stand-in is one function registered in ``STAND_INS`` and one params subsection.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tireid_core.data.simpedes.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_TABLES
from tireid_core.data.simpedes.build import load_meta
from tireid_core.data.transforms import ImageLoader
from tireid_core.io import write_json
from tireid_core.metrics import retrieval_metrics
from tireid_core.models.backbones import create_backbone
from tireid_core.models.clip import clip_encoders
from tireid_core.params import ParamsError, _positive, from_dict, load_section, resolve_params_file
from tireid_core.runtime import seed_everything

# --------------------------------------------------------------------------------------------------------------
# Parameters (the `pretrain:` section)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ImageStandInParams:
    out: str = "data/pretrained/resnet_small"  # a folder: backbone.pth (Backbone state dict) + pretrain_report.json
    backbone: str = "resnet_small"
    backbone_widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    last_stride: int = 1  # the stride the methods use (a stride change can add a shortcut convolution)
    height: int = 48
    width: int = 16
    epochs: int = 6
    batch_size: int = 64
    lr: float = 0.002
    weight_decay: float = 0.0001
    seed: int = 0

    def check(self, key: str) -> None:
        _positive(self, key, "height", "width", "epochs", "batch_size", "lr")


@dataclass
class TextStandInParams:
    out: str = "data/pretrained/bert_small"  # a folder: save_pretrained model + tokenizer, pretrain_report.json
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    max_positions: int = 64
    max_words: int = 48
    mask_prob: float = 0.15
    epochs: int = 4
    batch_size: int = 64
    lr: float = 0.001
    weight_decay: float = 0.01
    seed: int = 0

    def check(self, key: str) -> None:
        _positive(self, key, "hidden", "layers", "heads", "max_positions", "max_words", "epochs", "batch_size", "lr")
        if self.hidden % self.heads:
            raise ParamsError(f"{key}.hidden: must be a multiple of {key}.heads ({self.hidden} vs {self.heads})")
        if not 0 < self.mask_prob < 1:
            raise ParamsError(f"{key}.mask_prob: must be in (0, 1), got {self.mask_prob!r}")


@dataclass
class ClipStandInParams:
    out: str = "data/pretrained/clip_small"  # a folder: save_pretrained CLIPModel + BPE tokenizer, pretrain_report.json
    vocab_size: int = 1000  # BPE merges are learnt until the vocabulary has this many entries or no pair repeats
    hidden: int = 128  # width of both towers and of the joint embedding
    image_layers: int = 2
    text_layers: int = 2
    heads: int = 4
    patch: int = 4  # 48x16 images -> a 12x4 patch grid, the grid ViT-B/16 gives at 192x64 (docs/cmr.md §10)
    grid: int = 8  # side of the square position table (CLIP's is 14 at 224): resized to each input's grid
    max_positions: int = 64
    max_words: int = 48
    height: int = 48
    width: int = 16
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.001
    weight_decay: float = 0.01
    seed: int = 0

    def check(self, key: str) -> None:
        _positive(self, key, "vocab_size", "hidden", "image_layers", "text_layers", "heads", "patch", "grid",
                  "max_positions", "max_words", "height", "width", "epochs", "batch_size", "lr")
        if self.hidden % self.heads:
            raise ParamsError(f"{key}.hidden: must be a multiple of {key}.heads ({self.hidden} vs {self.heads})")
        if self.height % self.patch or self.width % self.patch:
            raise ParamsError(f"{key}.patch: {self.height}x{self.width} images must be whole numbers of patches")
        if self.max_words > self.max_positions:
            raise ParamsError(f"{key}.max_words: at most max_positions ({self.max_positions}), got {self.max_words}")


@dataclass
class PretrainParams:
    data: str = "data/simpedes_pretrain"  # the pretraining draw (DVC stage simpedes_pretrain)
    exclude: str = "data/simpedes"  # the evaluated dataset: its identities never enter pretraining
    image: ImageStandInParams = field(default_factory=ImageStandInParams)
    text: TextStandInParams = field(default_factory=TextStandInParams)
    clip: ClipStandInParams = field(default_factory=ClipStandInParams)


def load_pretrain_params(params_file=None, profile: str = "demo") -> tuple[PretrainParams, Path]:
    """The validated `pretrain:` section and the folder its relative paths resolve against."""
    params_file = resolve_params_file(params_file)
    params = from_dict(PretrainParams, load_section("pretrain", params_file, profile=profile), "pretrain")
    return params, params_file.resolve().parent


# --------------------------------------------------------------------------------------------------------------
# The pretraining draw, less every identity that also exists in the evaluated dataset
# --------------------------------------------------------------------------------------------------------------


def overlapping_identities(pretrain_meta: dict, eval_meta: dict) -> list[int]:
    """Ids of the pretraining draw whose attribute vector equals one of the evaluated dataset's identities.

    The attribute vector is everything the generator knows about a person's look (textures follow the seed), so
    equal vectors are the same person as far as any model can tell."""
    seen = {tuple(ident["attribute_vector"]) for ident in eval_meta["identities"]}
    return [ident["id"] for ident in pretrain_meta["identities"] if tuple(ident["attribute_vector"]) in seen]


@dataclass
class PretrainData:
    root: Path
    meta: dict
    excluded: list[int]

    def images(self, split: str) -> list[dict]:
        """Image entries of one split of the draw (meta.json's `images`), excluded identities left out."""
        skip = set(self.excluded)
        return [im for im in self.meta["images"] if im["split"] == split and im["id"] not in skip]

    def captions(self, split: str) -> list[str]:
        return [c for im in self.images(split) for c in im["caption_texts"]]

    def attributes(self, pid: int) -> list[int]:
        return self.by_id[pid]["attribute_vector"]

    def __post_init__(self):
        self.by_id = {ident["id"]: ident for ident in self.meta["identities"]}


def load_pretrain_data(params: PretrainParams, base: Path) -> PretrainData:
    root, other = base / params.data, base / params.exclude
    for path, stage in ((root, "simpedes_pretrain"), (other, "simpedes")):
        if not (path / "meta.json").is_file():
            raise FileNotFoundError(f"{path / 'meta.json'} not found: run `dvc repro {stage}` first")
    meta, eval_meta = load_meta(root), load_meta(other)
    if meta["seed"] == eval_meta["seed"]:
        raise ParamsError(f"simpedes_pretrain.seed: must differ from simpedes.seed ({meta['seed']}): the pretraining "
                          "draw would repeat the evaluated people")
    texts = {}
    with open(root / "reid_raw.json", encoding="utf-8") as f:
        for rec in json.load(f):
            texts[rec["file_path"]] = rec["captions"]
    for im in meta["images"]:
        im["caption_texts"] = texts[im["file_path"]]
    return PretrainData(root, meta, overlapping_identities(meta, eval_meta))


# --------------------------------------------------------------------------------------------------------------
# Image stand-in: part-attribute classification
# --------------------------------------------------------------------------------------------------------------


def attribute_classes() -> list[int]:
    """Number of values of each attribute (ATTRIBUTE_NAMES order; optional colours count 'none')."""
    return [len(ATTRIBUTE_TABLES[n].get("values_with_none", ATTRIBUTE_TABLES[n]["values"])) for n in ATTRIBUTE_NAMES]


class AttributeClassifier(nn.Module):
    """Backbone, global average pool, one linear head per attribute (a softmax over its values)."""

    def __init__(self, backbone: nn.Module, classes: list[int]):
        super().__init__()
        self.backbone = backbone
        self.classes = classes
        self.head = nn.Linear(backbone.out_channels, sum(classes))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        pooled = self.backbone(images)["layer4"].mean(dim=(2, 3))
        return list(self.head(pooled).split(self.classes, dim=1))


def attribute_loss(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Mean over attributes of the cross-entropy of each attribute's head."""
    return torch.stack([F.cross_entropy(lg, labels[:, i]) for i, lg in enumerate(logits)]).mean()


def _image_tensors(data: PretrainData, split: str, p: ImageStandInParams):
    """Every image of a split decoded once (flips are applied per batch) with its identity's attribute labels."""
    loader = ImageLoader(p.height, p.width, train=False)
    entries = data.images(split)
    images = torch.stack([loader(data.root / "imgs" / im["file_path"]) for im in entries])
    labels = torch.tensor([data.attributes(im["id"]) for im in entries], dtype=torch.long)
    return images, labels


@torch.no_grad()
def attribute_accuracy(model: AttributeClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = torch.zeros(len(model.classes))
    for start in range(0, len(images), 256):
        logits = model(images[start:start + 256])
        correct += torch.stack([(lg.argmax(1) == labels[start:start + 256, i]).sum() for i, lg in enumerate(logits)])
    model.train()
    return round(float(correct.mean() / len(images) * 100), 2)


def pretrain_image(params: PretrainParams, base: Path) -> dict:
    """Train the demo backbone on attribute classification; write its state dict (Backbone format) and a report."""
    p, data = params.image, load_pretrain_data(params, base)
    seed_everything(p.seed)
    train_x, train_y = _image_tensors(data, "train", p)
    val_x, val_y = _image_tensors(data, "val", p)
    backbone = create_backbone(p.backbone, last_stride=p.last_stride,
                               widths=tuple(p.backbone_widths) if p.backbone_widths else None)
    model = AttributeClassifier(backbone, attribute_classes())
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    steps = p.epochs * -(-len(train_x) // p.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.lr, total_steps=steps, pct_start=0.1)
    history, started = [], time.time()
    for epoch in range(p.epochs):
        order = torch.randperm(len(train_x))
        total = 0.0
        for start in range(0, len(order), p.batch_size):
            idx = order[start:start + p.batch_size]
            images = train_x[idx]
            flip = torch.rand(len(idx)) < 0.5  # horizontal flip, as in the demo's training transform
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            loss = attribute_loss(model(images), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        history.append({"epoch": epoch + 1, "train_loss": round(total / len(order), 4),
                        "val_attribute_accuracy": attribute_accuracy(model, val_x, val_y)})
        print(f"image stand-in epoch {epoch + 1}/{p.epochs}: {history[-1]}", flush=True)
    report = {"stand_in": "image", "objective": "part-attribute classification", "weights": f"{p.out}/backbone.pth",
              "train_images": len(train_x), "val_images": len(val_x), "excluded_identities": data.excluded,
              "seconds": round(time.time() - started, 1), "history": history,
              "majority_val_accuracy": _majority_accuracy(train_y, val_y)}
    with output_folder(base / p.out) as tmp:
        torch.save(backbone.state_dict(), tmp / "backbone.pth")
        write_json(tmp / "pretrain_report.json", report)
    return report


@contextmanager
def output_folder(out: Path):
    """Write a stand-in's folder under a temporary sibling and swap it in at the end: a crash leaves no half-written
    stand-in (and any previous one untouched)."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _majority_accuracy(train_y: torch.Tensor, val_y: torch.Tensor) -> float:
    """Accuracy of always answering each attribute's most frequent training value: what 'learned nothing' scores."""
    majority = torch.mode(train_y, dim=0).values
    return round(float((val_y == majority).float().mean() * 100), 2)


# --------------------------------------------------------------------------------------------------------------
# Text stand-in: a small BERT trained by masked language modelling
# --------------------------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_vocab(captions: list[str]) -> list[str]:
    """Special tokens, then every piece BERT's pre-tokeniser makes of the lower-cased captions (most frequent first,
    ties alphabetical): a fixed, whole-word WordPiece vocabulary."""
    from collections import Counter

    from tokenizers.pre_tokenizers import BertPreTokenizer

    pre = BertPreTokenizer()
    counts = Counter(piece for c in captions for piece, _ in pre.pre_tokenize_str(c.lower()))
    return list(SPECIAL_TOKENS) + sorted(counts, key=lambda w: (-counts[w], w))


def mask_tokens(ids: torch.Tensor, mask: torch.Tensor, p: TextStandInParams, mask_id: int, vocab_size: int,
                first_word_id: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: `mask_prob` of the real word tokens become targets; of those 80 % [MASK], 10 % a random word,
    10 % unchanged. Labels are -100 elsewhere."""
    words = mask & (ids >= first_word_id)
    chosen = (torch.rand(ids.shape, generator=generator) < p.mask_prob) & words
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=generator)
    inputs = torch.where(chosen & (roll < 0.8), torch.full_like(ids, mask_id), ids)
    random_words = torch.randint(first_word_id, vocab_size, ids.shape, generator=generator)
    inputs = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_words, inputs)
    return inputs, labels


def pretrain_text(params: PretrainParams, base: Path) -> dict:
    """Train a small BERT by MLM on the draw's captions; save it and its tokenizer with save_pretrained."""
    from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizerFast

    p, data = params.text, load_pretrain_data(params, base)
    seed_everything(p.seed)
    with output_folder(base / p.out) as tmp:
        vocab = {word: i for i, word in enumerate(build_vocab(data.captions("train")))}
        tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=p.max_positions)
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=p.hidden, num_hidden_layers=p.layers,
                            num_attention_heads=p.heads, intermediate_size=4 * p.hidden,
                            max_position_embeddings=p.max_positions)
        mlm = BertForMaskedLM(config)
        encode = lambda caps: tokenizer(caps, padding="max_length", truncation=True, max_length=p.max_words,
                                        return_tensors="pt")
        train, val = encode(data.captions("train")), encode(data.captions("val"))
        first_word_id = len(SPECIAL_TOKENS)
        gen = torch.Generator().manual_seed(p.seed)
        val_inputs, val_labels = mask_tokens(val["input_ids"], val["attention_mask"].bool(), p,
                                             tokenizer.mask_token_id, len(tokenizer), first_word_id, gen)
        opt = torch.optim.AdamW(mlm.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        n = len(train["input_ids"])
        steps = p.epochs * -(-n // p.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.lr, total_steps=steps, pct_start=0.1)
        history, started = [], time.time()
        for epoch in range(p.epochs):
            mlm.train()
            order, total = torch.randperm(n), 0.0
            for start in range(0, n, p.batch_size):
                idx = order[start:start + p.batch_size]
                attention = train["attention_mask"][idx]
                length = int(attention.sum(1).max())  # padding past the longest caption changes nothing; skip it
                ids, attention = train["input_ids"][idx, :length], attention[:, :length]
                inputs, labels = mask_tokens(ids, attention.bool(), p, tokenizer.mask_token_id, len(tokenizer),
                                             first_word_id, gen)
                loss = mlm(input_ids=inputs, attention_mask=attention, labels=labels).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            history.append({"epoch": epoch + 1, "train_loss": round(total / n, 4),
                            "val_masked_accuracy": _masked_accuracy(mlm, val_inputs, val["attention_mask"], val_labels)})
            print(f"text stand-in epoch {epoch + 1}/{p.epochs}: {history[-1]}", flush=True)
        encoder = BertModel(config, add_pooling_layer=False)  # the encoder the methods load (no model reads a pooler)
        encoder.load_state_dict(mlm.bert.state_dict())
        encoder.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        report = {"stand_in": "text", "objective": "masked language modelling", "folder": p.out,
                  "vocab_size": len(tokenizer), "train_captions": n, "val_captions": len(val["input_ids"]),
                  "excluded_identities": data.excluded, "seconds": round(time.time() - started, 1),
                  "history": history}
        write_json(tmp / "pretrain_report.json", report)
    return report


@torch.no_grad()
def _masked_accuracy(mlm, inputs, attention, labels) -> float:
    mlm.eval()
    logits = mlm(input_ids=inputs, attention_mask=attention).logits
    target = labels != -100
    return round(float((logits.argmax(-1)[target] == labels[target]).float().mean() * 100), 2)


# --------------------------------------------------------------------------------------------------------------
# CLIP stand-in: a small CLIPModel (ViT + text transformer) trained contrastively on the draw's image-caption pairs
# --------------------------------------------------------------------------------------------------------------

CLIP_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def build_clip_tokenizer(captions: list[str], vocab_size: int, max_positions: int):
    """CLIP's byte-level BPE tokenizer (its normaliser, pre-tokeniser and "</w>" word ends) with merges learnt from
    `captions`. The vocabulary is laid out as CLIP's: the special tokens, the 256 byte symbols, the same with "</w>",
    then the merged symbols in merge order, so every character has a token and the ids do not depend on hash order."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    backend = CLIPTokenizer().backend_tokenizer  # CLIP's pipeline around an empty BPE
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(CLIP_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>",
                                  show_progress=False)
    backend.train_from_iterator(captions, trainer)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(backend.to_str())["model"]["merges"]]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    symbols = [*CLIP_SPECIAL_TOKENS, *alphabet, *(c + "</w>" for c in alphabet), *("".join(m) for m in merges)]
    vocab = {symbol: i for i, symbol in enumerate(dict.fromkeys(symbols))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_positions)


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: each image's own caption among the batch's captions and vice versa, mean of both."""
    logits = logit_scale.exp() * F.normalize(image_emb, dim=1) @ F.normalize(text_emb, dim=1).t()
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def pretrain_clip(params: PretrainParams, base: Path) -> dict:
    """Train a small CLIP contrastively on the draw's (image, caption) pairs; save model and tokenizer with
    save_pretrained, so CMR's demo loads it through the paper configuration's code (models/clip.py)."""
    from transformers import CLIPConfig, CLIPModel

    p, data = params.clip, load_pretrain_data(params, base)
    seed_everything(p.seed)
    loader = ImageLoader(p.height, p.width, train=False, normalize="clip")
    splits = {split: data.images(split) for split in ("train", "val")}
    images = {split: torch.stack([loader(data.root / "imgs" / im["file_path"]) for im in entries])
              for split, entries in splits.items()}
    with output_folder(base / p.out) as tmp:
        tokenizer = build_clip_tokenizer(data.captions("train"), p.vocab_size, p.max_positions)
        config = CLIPConfig(
            text_config={"vocab_size": len(tokenizer), "hidden_size": p.hidden, "intermediate_size": 4 * p.hidden,
                         "num_hidden_layers": p.text_layers, "num_attention_heads": p.heads,
                         "max_position_embeddings": p.max_positions, "bos_token_id": tokenizer.bos_token_id,
                         "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
            vision_config={"hidden_size": p.hidden, "intermediate_size": 4 * p.hidden,
                           "num_hidden_layers": p.image_layers, "num_attention_heads": p.heads,
                           "image_size": p.grid * p.patch, "patch_size": p.patch},
            projection_dim=p.hidden)
        clip = CLIPModel(config)
        image_encoder, text_encoder = clip_encoders(clip, (p.height, p.width))

        def image_emb(x):
            return image_encoder(x)[:, 0]  # CLS

        def text_emb(ids, mask):
            words = text_encoder(ids, mask)
            return words[torch.arange(len(words)), text_encoder.eos_index(mask)]  # end of text

        def encode(captions):
            out = tokenizer(captions, padding="max_length", truncation=True, max_length=p.max_words,
                            return_tensors="pt")
            return out["input_ids"], out["attention_mask"].bool()

        # one caption per image and epoch (alternating), so an epoch sees every image once
        captions = [im["caption_texts"] for im in splits["train"]]
        opt = torch.optim.AdamW(clip.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        n = len(captions)
        steps = p.epochs * -(-n // p.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.lr, total_steps=steps, pct_start=0.1)
        history, started = [], time.time()
        for epoch in range(p.epochs):
            clip.train()
            ids, mask = encode([caps[epoch % len(caps)] for caps in captions])
            order, total = torch.randperm(n), 0.0
            for start in range(0, n, p.batch_size):
                idx = order[start:start + p.batch_size]
                length = int(mask[idx].sum(1).max())  # padding past the longest caption changes nothing; skip it
                x = images["train"][idx]
                flip = torch.rand(len(idx)) < 0.5  # horizontal flip, as in the demo's training transform
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                loss = clip_loss(image_emb(x), text_emb(ids[idx, :length], mask[idx, :length]), clip.logit_scale)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    clip.logit_scale.clamp_(0, 4.6052)  # CLIP caps the scale at 100
                total += float(loss.detach()) * len(idx)
            history.append({"epoch": epoch + 1, "train_loss": round(total / n, 4),
                            "val_t2i_R@1": _clip_val_r1(clip, image_emb, text_emb, encode, images["val"],
                                                        splits["val"])})
            print(f"clip stand-in epoch {epoch + 1}/{p.epochs}: {history[-1]}", flush=True)
        clip.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        report = {"stand_in": "clip", "objective": "contrastive image-caption matching (CLIP's InfoNCE)",
                  "folder": p.out, "vocab_size": len(tokenizer), "train_images": n,
                  "val_captions": sum(len(im["caption_texts"]) for im in splits["val"]),
                  "val_images": len(splits["val"]), "val_people": len({im["id"] for im in splits["val"]}),
                  "val_metric": "text-to-image R@1 over the val people (same person = hit)",
                  "excluded_identities": data.excluded, "seconds": round(time.time() - started, 1),
                  "history": history}
        write_json(tmp / "pretrain_report.json", report)
    return report


@torch.no_grad()
def _clip_val_r1(clip, image_emb, text_emb, encode, images, entries) -> float:
    """Text-to-image R@1 (%) on the draw's val people: every val caption against every val image."""
    clip.eval()
    captions = [c for im in entries for c in im["caption_texts"]]
    caption_pids = [im["id"] for im in entries for _ in im["caption_texts"]]
    ids, mask = encode(captions)
    length = int(mask.sum(1).max())
    img = torch.cat([image_emb(images[i:i + 256]) for i in range(0, len(images), 256)])
    txt = torch.cat([text_emb(ids[i:i + 256, :length], mask[i:i + 256, :length]) for i in range(0, len(ids), 256)])
    scores = F.normalize(txt, dim=1) @ F.normalize(img, dim=1).t()
    return round(float(retrieval_metrics(scores, caption_pids, [im["id"] for im in entries])["R@1"]), 2)


# --------------------------------------------------------------------------------------------------------------
# Registry and CLI
# --------------------------------------------------------------------------------------------------------------

STAND_INS = {"image": pretrain_image, "text": pretrain_text, "clip": pretrain_clip}


def stand_in_output(name: str, params: PretrainParams) -> str:
    """The file or folder a stand-in writes (relative to the params file), for the pipeline's outs."""
    return getattr(params, name).out


def main(argv=None) -> int:
    from tireid_core import cli

    ap = cli.parser("Make one pretrained stand-in from the `pretrain:` params section.")
    ap.add_argument("stand_in", choices=sorted(STAND_INS))
    return cli.run_main(_main, ap.parse_args(argv))


def _main(args) -> int:
    if args.sets:
        raise ParamsError("--set: the stand-ins take their parameters from the params file's `pretrain:` section")
    params, base = load_pretrain_params(args.params, args.profile)
    report = STAND_INS[args.stand_in](params, base)
    print(f"{args.stand_in} stand-in written ({report['seconds']} s); "
          f"{len(report['excluded_identities'])} pretraining identities left out (equal to evaluated ones)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
