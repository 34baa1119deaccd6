"""CLIP's two towers (a ViT image encoder and a causal text transformer) with the calling conventions of the other
encoders, from one `transformers.CLIPModel` checkpoint.

    image_encoder, text_encoder = create_clip("openai/clip-vit-base-patch16", image_size=(384, 128))  # paper
    image_encoder, text_encoder = create_clip("./data/pretrained/clip_small", image_size=(48, 16))    # demo stand-in
    tokens = image_encoder(images)      # B x (1 + h*w) x d: CLS first, then the patches row by row (grid h x w)
    words = text_encoder(ids, mask)     # B x L x d; the caption's global token is at text_encoder.eos_index(mask)

`name_or_path` is a hub name or a folder written by ``save_pretrained`` (model and CLIP's BPE tokenizer; the tokenizer
is loaded by `tireid_core.data.tokenizers.HFTokenizer`). ``pretrained=False`` builds the same architecture at random
initialisation from the checkpoint's config (for ``openai/clip-vit-base-patch16`` with nothing cached: its published
sizes, so paper models can be built offline). Nothing is downloaded without the Hugging Face cache allowing it; a
missing checkpoint fails with the steps that provide it offline.

Every token goes through its tower's final LayerNorm and CLIP's projection, as in IRRA (whose cross-modal modules read
all tokens): the image CLS token and the text EOS token are then exactly CLIP's own embeddings
(`CLIPModel.get_image_features` / `get_text_features`). CLIP's position table is a square grid (14 x 14 for ViT-B/16
at 224); an input of another shape gets the table resized to its own grid by bicubic interpolation (transformers'
``interpolate_pos_encoding``) on every forward, so the checkpoint's table is what is fine-tuned and a saved model
round-trips unchanged. (IRRA resizes the table once at load and then fine-tunes the resized copy; at initialisation
the two give the same kind of embeddings.)
"""
from __future__ import annotations

import torch
from torch import nn

from tireid_core.hub import hf_offline_help

CLIP_VIT_B16 = ("openai/clip-vit-base-patch16",)


def clip_vit_b16_config():
    """The published sizes of OpenAI's CLIP ViT-B/16: a 12-layer ViT of width 768 (patch 16, 224 x 224) and a 12-layer
    text transformer of width 512 (BPE vocabulary 49,408, 77 positions), both projected to 512."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                     "num_attention_heads": 8, "max_position_embeddings": 77, "bos_token_id": 49406,
                     "eos_token_id": 49407, "pad_token_id": 49407},
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "image_size": 224, "patch_size": 16},
        projection_dim=512,
    )


def load_clip_model(name_or_path: str, pretrained: bool = True):
    """A `transformers.CLIPModel`: the checkpoint's weights, or its architecture at random initialisation."""
    from transformers import CLIPConfig, CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per model would flood notebook exports
    if pretrained:
        try:
            return CLIPModel.from_pretrained(name_or_path)
        except OSError as err:
            raise RuntimeError(hf_offline_help(name_or_path, "pretrained model") + f"\n({err})") from err
    try:
        config = CLIPConfig.from_pretrained(name_or_path, local_files_only=name_or_path in CLIP_VIT_B16)
    except OSError as err:
        if name_or_path not in CLIP_VIT_B16:
            raise RuntimeError(hf_offline_help(name_or_path, "model config") + f"\n({err})") from err
        config = clip_vit_b16_config()
    return CLIPModel(config)


class ClipImageEncoder(nn.Module):
    """CLIP's vision tower and projection: images B x 3 x H x W -> tokens B x (1 + h*w) x d (CLS, then patches)."""

    def __init__(self, vision, projection: nn.Linear, image_size: tuple[int, int]):
        super().__init__()
        patch = vision.config.patch_size
        height, width = image_size
        if height % patch or width % patch:
            raise ValueError(f"image size {height}x{width} is not a whole number of {patch}-pixel patches")
        self.vision, self.projection = vision, projection
        self.image_size = (height, width)
        self.grid = (height // patch, width // patch)  # patch rows x columns
        self.out_dim = projection.out_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"images are {tuple(images.shape[-2:])}, the encoder was built for {self.image_size}")
        hidden = self.vision(pixel_values=images, interpolate_pos_encoding=True).last_hidden_state
        return self.projection(self.vision.post_layernorm(hidden))


class ClipTextEncoder(nn.Module):
    """CLIP's causal text transformer and projection: (ids, mask) B x L -> tokens B x L x d.

    Captions are CLIP-tokenised: start-of-text, words, end-of-text (kept last when a caption is cut), then padding;
    the end-of-text token of each caption (`eos_index`) carries its global embedding."""

    def __init__(self, text, projection: nn.Linear):
        super().__init__()
        self.text, self.projection = text, projection
        self.out_dim = projection.out_features
        self.max_len = text.config.max_position_embeddings

    @staticmethod
    def eos_index(mask: torch.Tensor) -> torch.Tensor:
        """Position of each caption's end-of-text token: its last real token."""
        return (mask.long().sum(1) - 1).clamp(min=0)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.max_len:
            raise ValueError(f"captions of {ids.shape[1]} tokens exceed CLIP's {self.max_len} positions; tokenise "
                             f"with data.max_words <= {self.max_len}")
        hidden = self.text(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return self.projection(hidden)


def clip_encoders(model, image_size: tuple[int, int]) -> tuple[ClipImageEncoder, ClipTextEncoder]:
    """The two towers of a `CLIPModel` as encoders (sharing its modules; its logit scale is not part of them)."""
    return (ClipImageEncoder(model.vision_model, model.visual_projection, image_size),
            ClipTextEncoder(model.text_model, model.text_projection))


def create_clip(name_or_path: str, *, pretrained: bool = True,
                image_size: tuple[int, int] = (384, 128)) -> tuple[ClipImageEncoder, ClipTextEncoder]:
    """Build CLIP's image and text encoders from one checkpoint (see the module docstring).

    pretrained: the checkpoint's weights (True) or its architecture at random initialisation (False).
    image_size: (height, width) of the inputs; both must be multiples of the patch size.
    """
    return clip_encoders(load_clip_model(name_or_path, pretrained), image_size)
