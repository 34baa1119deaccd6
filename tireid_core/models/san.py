"""SAN — Semantics-Aligned Network for image person ReID (Jin et al., AAAI 2020), readable top to bottom.

Documentation: docs/san.md. A ReID encoder (SA-Enc: a ResNet, last stride 1) whose feature f is trained with an
identity loss (label smoothing) and a batch-hard triplet loss, plus a decoder (SA-Dec) that regresses the person's
**full texture** in a fixed UV layout from the encoder's maps. A texel (u, v) is always the same point of the body
surface, whatever the pose or view of the input, so to regress it the encoder has to know which body point each of
its positions shows (and guess the invisible ones): its features become semantically aligned. Triplet constraints
on the decoder's maps (L_TR) act as a perceptual loss. The decoder is dropped at test time: retrieval is the
Euclidean distance between the f of two images.

Training (docs/san.md §4): one forward pass, then two gradients of it, each applied by its own optimisers
(`san.texture_update=same_forward`): the ReID gradient (L_ID + L_triplet) by the AMSGrad ReID optimiser, the texture
gradient (L_Rec + L_TR) by two texture optimisers (encoder; decoder) with their own lr and betas. The engine runs this
through `gradient_routes`; `reforward` and `joint` are the alternatives of docs/san.md §4.1.

Texture targets (`san.pg_source`): SimPEDES renders every image from a per-identity atlas, so there the target is
exact ground truth (`synthetic_atlas`); on real data the authors' released pseudo-textures (`released`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tireid_core.data.datasets import read_image
from tireid_core.data.records import DatasetError, ReIDImage
from tireid_core.data.transforms import normalization_stats
from tireid_core.distributed import gather_with_grad
from tireid_core.losses import (batch_hard_map_triplets, batch_hard_triplet_loss, decoder_triplet_loss,
                                official_ltr_triplets, smoothed_id_loss, texture_l1_loss)
from tireid_core.methods import GradientRoute, Method, MethodModel
from tireid_core.models.backbones import create_backbone
from tireid_core.params import ParamsError, RunParams

DECODER_LEVELS = 4  # fd1..fd4, each with its own L_TR term
NOT_IMPLEMENTED_SOURCES = {
    "san_pg": "run the authors' SAN-PG (trained on their synthetic PIT pairs) over every training image with their "
              "generate_texture.py, then use san.pg_source=released with san.pg_dir pointing at its output",
    "densepose_partial": "partial textures from DensePose are a different method (only the visible surface), not "
                         "implemented here",
}


@dataclass
class SANParams:
    """SAN switches (docs/san.md). Defaults follow the paper; the official code's choices are named flags (§7)."""

    decoder: bool = True  # SA-Dec; false = the ResNet baseline (ID + triplet only)
    embedding: Literal["gap2048", "fc512"] = "gap2048"  # paper: f = GAP(fe4); official code: + FC, BN, ReLU
    fc_dim: int = 512  # embedding=fc512: width of the FC layer
    decoder_widths: list[int] = field(default_factory=lambda: [512, 256, 64, 32, 16])  # reduce, fd1, fd2, fd3, fd4
    texture_size: list[int] = field(default_factory=lambda: [256, 256])  # H, W of the regressed texture
    label_smoothing: float = 0.1
    id_weight: float = 1.0
    triplet_weight: float = 1.0
    triplet_margin: float = 0.3
    rec_weight: float = 1.0  # λ_Rec (the official code: 1; a ×0.1 is commented out)
    tr_weight: float = 1.0  # λ_TR (the official code: 1; a ×1e-4 is commented out)
    tr_margin: float = 0.3
    l_tr_mining: Literal["official", "batch_hard"] = "official"  # fixed block triplets (K = 4) or batch-hard
    rec_target: Literal["texture", "input_image"] = "texture"  # input_image: the decoder redraws its input (ablation)
    pg_source: Literal["synthetic_atlas", "released", "san_pg", "densepose_partial"] = "synthetic_atlas"
    pg_dir: str = ""  # pg_source=released: folder of the authors' pseudo-textures, named as the images; relative
    # paths are inside data.root
    pg_norm_divisor: float = 255.0  # texture pixels -> [-1, 1] as (x / divisor - 0.5) * 2; 225: generate_texture.py's typo
    texture_update: Literal["same_forward", "reforward", "joint"] = "same_forward"
    amsgrad: bool = True  # the ReID optimiser (official: Adam with AMSGrad)
    texture_lr: float = 1e-5  # both texture optimisers (official: Adam, lr 1e-5, betas (0.5, 0.999), no decay,
    texture_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])  # no lr schedule)


@dataclass
class SANRunParams(RunParams):
    san: SANParams = field(default_factory=SANParams)

    def check(self, key: str) -> None:
        s, d = self.san, self.data
        k = f"{key}.san"
        if s.pg_source in NOT_IMPLEMENTED_SOURCES:
            raise ParamsError(f"{k}.pg_source: {s.pg_source!r} is not implemented: {NOT_IMPLEMENTED_SOURCES[s.pg_source]}")
        if s.fc_dim <= 0:
            raise ParamsError(f"{k}.fc_dim: must be positive, got {s.fc_dim!r}")
        if len(s.decoder_widths) != DECODER_LEVELS + 1 or min(s.decoder_widths) <= 0:
            raise ParamsError(f"{k}.decoder_widths: five positive widths (reduce, fd1..fd4), got {s.decoder_widths}")
        if s.decoder and self.model.last_stride != 1:
            raise ParamsError(f"{key}.model.last_stride: SAN's decoder adds fe3 to fe4, so layer4 keeps layer3's "
                              f"resolution (last stride 1), got {self.model.last_stride}")
        if len(s.texture_size) != 2 or min(s.texture_size) <= 0:
            raise ParamsError(f"{k}.texture_size: [height, width], got {s.texture_size}")
        if len(s.texture_betas) != 2 or not all(0 <= b < 1 for b in s.texture_betas):
            raise ParamsError(f"{k}.texture_betas: two numbers in [0, 1), got {s.texture_betas}")
        if not 0 <= s.label_smoothing < 1:
            raise ParamsError(f"{k}.label_smoothing: must be in [0, 1), got {s.label_smoothing}")
        for name in ("id_weight", "triplet_weight", "rec_weight", "tr_weight", "triplet_margin", "tr_margin"):
            if not getattr(s, name) >= 0:
                raise ParamsError(f"{k}.{name}: must be >= 0, got {getattr(s, name)!r}")
        if not (s.texture_lr > 0 and s.pg_norm_divisor > 0):
            raise ParamsError(f"{k}.texture_lr and {k}.pg_norm_divisor: must be positive")
        if s.decoder and not (s.rec_weight or s.tr_weight):
            raise ParamsError(f"{k}.decoder: a decoder without a loss (rec_weight = tr_weight = 0) trains nothing; "
                              "set san.decoder: false for the baseline")
        if s.decoder and s.tr_weight and s.l_tr_mining == "official" and self.train.batch_size != 4 * d.ids_per_batch:
            raise ParamsError(f"{key}.data.ids_per_batch: the official L_TR triplets need K = 4 images per identity "
                              f"(batch_size = 4 x ids_per_batch), got batch_size {self.train.batch_size} and "
                              f"{d.ids_per_batch} identities")
        if uses_texture_files(s) and s.pg_source == "synthetic_atlas" and d.dataset != "simpedes-market":
            raise ParamsError(f"{k}.pg_source: synthetic_atlas needs images rendered from per-identity atlases "
                              f"(data.dataset simpedes-market), got {d.dataset!r}; on real data use released")
        if uses_texture_files(s) and s.pg_source == "released" and not s.pg_dir:
            raise ParamsError(f"{k}.pg_dir: pg_source=released needs the folder of the released pseudo-textures")


def uses_texture_files(s: SANParams) -> bool:
    """Whether a run reads texture targets from files (a decoder trained to regress a texture)."""
    return s.decoder and s.rec_weight > 0 and s.rec_target == "texture"


# ---------------------------------------------------------------------------------------------- texture targets


class TextureTargets:
    """Training image -> {"texture": 3 × H × W in [−1, 1]} at the decoder's texture size: the pseudo-ground-truth
    L_Rec regresses. Not flipped with the image (a flip swaps the body's sides, not the UV map; docs/san.md §7 item
    5). Files are decoded once and kept as uint8; picklable, so DataLoader workers can load them."""

    def __init__(self, files: dict[Path, Path], size: tuple[int, int], divisor: float):
        self.files, self.size, self.divisor = files, size, divisor
        self.cache: dict[Path, torch.Tensor] = {}

    def __call__(self, image: ReIDImage) -> dict[str, torch.Tensor]:
        path = self.files[image.path]
        raw = self.cache.get(path)
        if raw is None:
            raw = self.cache[path] = torch.from_numpy(np.array(read_image(path))).permute(2, 0, 1).contiguous()
        texture = (raw.float() / self.divisor - 0.5) * 2
        if tuple(texture.shape[1:]) != self.size:  # e.g. the released 64 × 64 textures for a 256 × 256 decoder
            texture = F.interpolate(texture[None], size=self.size, mode="bilinear", align_corners=False)[0]
        return {"texture": texture}


def texture_files(params: SANRunParams, images: list[ReIDImage]) -> dict[Path, Path]:
    """The texture file of every training image, all checked to exist.

    synthetic_atlas: SimPEDES' `<data.root>/textures/<pid:04d>.png`, the atlas every image of that identity was
    rendered from. released: the file of the image's own name in `san.pg_dir` (the authors' CUHK03-labeled set is
    named as torchreid extracts CUHK03, images_labeled/1_001_1_01.png, so it fits that layout)."""
    s, root = params.san, Path(params.data.root)
    if s.pg_source == "synthetic_atlas":
        files = {im.path: root / "textures" / f"{im.pid:04d}.png" for im in images}
        where = f"{root / 'textures'} (SimPEDES' atlases)"
    else:
        folder = root / s.pg_dir
        files = {im.path: folder / im.path.name for im in images}
        where = f"{folder} (san.pg_dir)"
    missing = sorted({str(t) for t in files.values() if not t.is_file()})
    if missing:
        raise DatasetError(f"{len(missing)} texture target(s) missing in {where}, e.g. {', '.join(missing[:3])}")
    return files


# ---------------------------------------------------------------------------------------------- the decoder


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """A 1 × 1 convolution + BatchNorm + ReLU: the decoder's reduce layer and its skip embeddings."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ConvResBlock(nn.Module):
    """[3×3 conv (no bias) – BN – ReLU – 3×3 conv (no bias) – BN] + identity → ReLU → bilinear × `scale` → reflection
    pad 1 → 3×3 conv c_in → c_out (with bias): one upsampling step of SA-Dec (scale 2 in ResNet-50)."""

    def __init__(self, c_in: int, c_out: int, scale: int = 2):
        super().__init__()
        self.res = nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1, bias=False), nn.BatchNorm2d(c_in),
                                 nn.ReLU(inplace=True), nn.Conv2d(c_in, c_in, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(c_in))
        self.up = nn.Sequential(nn.Upsample(scale_factor=scale, mode="bilinear") if scale > 1 else nn.Identity(),
                                nn.ReflectionPad2d(1), nn.Conv2d(c_in, c_out, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.res(x) + x))


class SADecoder(nn.Module):
    """SA-Dec (docs/san.md §2.2): reduce(fe4) + skip(fe3) → up1 = fd1, + skip(fe2) → up2 = fd2, + skip(fe1) → up3 =
    fd3 → up4 = fd4 → reflection pad 3 + 7 × 7 conv to RGB (no tanh) → bilinear (align_corners) to the texture size.
    Returns the texture and [fd1, fd2, fd3, fd4] (for L_TR).

    up1 and up2 upsample to the resolution of the skip they meet, up3 and up4 double: ×2 each in ResNet-50 (last
    stride 1: strides 4, 8, 16, 16), so fd4 has the input's size; the demo's small backbone (strides 2, 2, 4, 4) keeps
    layer1 and layer2 at one resolution, so its up2 keeps the size (×1) and fd4 is twice the input."""

    def __init__(self, channels: dict[str, int], strides: dict[str, int], widths: list[int],
                 texture_size: tuple[int, int]):
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        if strides["layer4"] != strides["layer3"]:
            raise ValueError("SA-Dec adds fe3 to the reduced fe4: the backbone needs last stride 1")
        self.texture_size = texture_size
        self.reduce = conv_bn_relu(channels["layer4"], w0)
        self.skip3 = conv_bn_relu(channels["layer3"], w0)
        self.up1 = ConvResBlock(w0, w1, strides["layer3"] // strides["layer2"])
        self.skip2 = conv_bn_relu(channels["layer2"], w1)
        self.up2 = ConvResBlock(w1, w2, strides["layer2"] // strides["layer1"])
        self.skip1 = conv_bn_relu(channels["layer1"], w2)
        self.up3 = ConvResBlock(w2, w3)
        self.up4 = ConvResBlock(w3, w4)
        self.final = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(w4, 3, 7))
        self.apply(_init_decoder)

    def forward(self, maps: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        fd1 = self.up1(self.reduce(maps["layer4"]) + self.skip3(maps["layer3"]))
        fd2 = self.up2(fd1 + self.skip2(maps["layer2"]))
        fd3 = self.up3(fd2 + self.skip1(maps["layer1"]))
        fd4 = self.up4(fd3)
        texture = F.interpolate(self.final(fd4), size=self.texture_size, mode="bilinear", align_corners=True)
        return texture, [fd1, fd2, fd3, fd4]


def _init_decoder(m: nn.Module) -> None:
    """The official decoder init: Xavier-normal (gain 0.02) conv/linear weights, zero biases, BN weights N(1, 0.02)."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_normal_(m.weight, gain=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------- the model


class SAN(MethodModel):
    similarity = "euclidean"
    fixed_lr_optimizers = ("texture_encoder", "texture_decoder")  # official: lr 1e-5 throughout, no schedule

    def __init__(self, params: SANRunParams, vocab_size: int = 0, num_classes: int = 1, tokenizer=None):
        super().__init__()
        m, s = params.model, params.san
        self.s = s
        self.pretrained = bool(m.pretrained)
        self.texture_size = tuple(s.texture_size)
        mean, std = normalization_stats(params.data.normalize)  # to undo the input normalisation (input_texture)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        widths = tuple(m.backbone_widths) if m.backbone_widths else None
        self.backbone = create_backbone(m.image_backbone, pretrained=m.pretrained, last_stride=m.last_stride,
                                        widths=widths)
        channels = self.backbone.channels
        dim = channels["layer4"]
        self.fc = None
        if s.embedding == "fc512":  # the official resnet50_fc512: FC + BN + ReLU before both losses and retrieval
            self.fc = nn.Sequential(nn.Linear(dim, s.fc_dim), nn.BatchNorm1d(s.fc_dim), nn.ReLU(inplace=True))
            nn.init.normal_(self.fc[0].weight, 0, 0.01)
            nn.init.zeros_(self.fc[0].bias)
            dim = s.fc_dim
        self.classifier = nn.Linear(dim, num_classes)  # official init: N(0, 0.01), zero bias
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)
        self.decoder = (SADecoder(channels, self.backbone.strides, s.decoder_widths, self.texture_size) if s.decoder
                        else None)
        self._params = params  # where the texture targets are (train_targets)

    # ------------------------------------------------------------------ features and retrieval
    def embed(self, fe4: torch.Tensor) -> torch.Tensor:
        """f: global average pool of fe4 (gap2048), then the FC layer (fc512)."""
        f = fe4.mean((2, 3))
        return self.fc(f) if self.fc is not None else f

    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"global": f}; the decoder is not run (it is dropped at test time)."""
        return {"global": self.embed(self.backbone(images)["layer4"])}

    def similarities(self, gallery_feats: dict, query_feats: dict) -> dict[str, torch.Tensor]:
        """"final": minus the Euclidean distance between unnormalised features (a score: higher = closer)."""
        return {"final": -torch.cdist(query_feats["global"].float(), gallery_feats["global"].float())}

    def decode(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The texture the decoder regresses from `images` and its maps fd1..fd4 (analysis and L_Rec)."""
        return self.decoder(self.backbone(images))

    def input_texture(self, images: torch.Tensor) -> torch.Tensor:
        """The rec_target=input_image target: the (augmented) input itself in [−1, 1], resized to the texture size."""
        rgb = images.float() * self.pixel_std + self.pixel_mean
        return F.interpolate(rgb * 2 - 1, size=self.texture_size, mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------ training
    def train_targets(self, images: list[ReIDImage]):
        """The texture targets of the training images (None when no loss reads a texture file)."""
        if not uses_texture_files(self.s):
            return None
        return TextureTargets(texture_files(self._params, images), self.texture_size, self.s.pg_norm_divisor)

    def l_tr(self, levels: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """L_TR summed over the four decoder levels, on the batch gathered over DDP ranks (its triplets span
        identity blocks that ranks split)."""
        s, total = self.s, 0.0
        official = official_ltr_triplets(labels) if s.l_tr_mining == "official" else None
        for level, fd in enumerate(levels):
            fd = gather_with_grad(fd)
            triplets = official[level] if official is not None else batch_hard_map_triplets(fd, labels)
            total = total + decoder_triplet_loss(fd, *triplets, margin=s.tr_margin)
        return total

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Weighted terms: "reid" = id + triplet and "texture" = rec + tr (the two gradients of the two-step update),
        and their sum "loss". ID and L_Rec on the local batch; the triplet and L_TR on the batch gathered over ranks."""
        s = self.s
        maps = self.backbone(batch["image"])
        f = self.embed(maps["layer4"])
        labels = batch["label"]
        all_labels = gather_with_grad(labels)
        terms = {"id": s.id_weight * smoothed_id_loss(self.classifier(f), labels, s.label_smoothing),
                 "triplet": s.triplet_weight * batch_hard_triplet_loss(gather_with_grad(f), all_labels,
                                                                      s.triplet_margin)}
        terms["reid"] = terms["id"] + terms["triplet"]
        if self.decoder is None:
            terms["loss"] = terms["reid"]
            return terms
        texture, levels = self.decoder(maps)
        if s.rec_weight:
            target = batch["texture"] if s.rec_target == "texture" else self.input_texture(batch["image"])
            terms["rec"] = s.rec_weight * texture_l1_loss(texture.float(), target.float())
        if s.tr_weight:
            terms["tr"] = s.tr_weight * self.l_tr(levels, all_labels)
        terms["texture"] = terms.get("rec", 0.0) + terms.get("tr", 0.0)
        terms["loss"] = terms["reid"] + terms["texture"]
        return terms

    def param_groups(self, params) -> list[dict]:
        """The ReID optimiser's groups: the heads at lr, the encoder at lr · backbone_lr_mult when pretrained; the
        decoder as well under texture_update=joint (otherwise the texture optimisers own it)."""
        tp = params.train
        joint = self.s.texture_update == "joint"
        heads = [p for n, p in self.named_parameters()
                 if not n.startswith("backbone.") and (joint or not n.startswith("decoder."))]
        mult = tp.backbone_lr_mult if self.pretrained else 1.0
        return [{"params": heads, "lr": tp.lr}, {"params": list(self.backbone.parameters()), "lr": tp.lr * mult}]

    def optimizers(self, params) -> dict[str, torch.optim.Optimizer]:
        """"main": the ReID optimiser (Adam with AMSGrad, train.lr and train.weight_decay, the engine's schedule).
        With the two-step update also "texture_encoder" and "texture_decoder": plain Adam at san.texture_lr with
        san.texture_betas, no weight decay, a fixed lr (docs/san.md §4)."""
        tp, s = params.train, self.s
        out = {"main": torch.optim.Adam(self.param_groups(params), lr=tp.lr, weight_decay=tp.weight_decay,
                                        amsgrad=s.amsgrad, fused=True)}
        if self.gradient_routes() is not None:
            for name, module in (("texture_encoder", self.backbone), ("texture_decoder", self.decoder)):
                out[name] = torch.optim.Adam(module.parameters(), lr=s.texture_lr, betas=tuple(s.texture_betas),
                                             fused=True)
        return out

    def gradient_routes(self) -> tuple[GradientRoute, ...] | None:
        """same_forward: both gradients of one forward pass, the ReID one applied by "main", the texture one by the
        texture optimisers. reforward: the texture gradient from a second forward pass with the updated weights.
        joint (and the decoder-free baseline): one backward pass of the sum (None)."""
        if self.decoder is None or self.s.texture_update == "joint":
            return None
        return (GradientRoute("reid", ("main",)),
                GradientRoute("texture", ("texture_encoder", "texture_decoder"),
                              reforward=self.s.texture_update == "reforward"))


METHOD = Method("san", params=SANRunParams, model=SAN, task="image_reid")


# ---------------------------------------------------------------------------------------------- analysis helpers
# (used by the notebooks: texture regression scored against SimPEDES' exact atlases, view invariance of f)


def simpedes_test_images(evalset, meta: dict, root: Path) -> list[tuple[ReIDImage, dict]]:
    """(image, its meta.json entry) for every test query and gallery image of a SimPEDES split identity (the
    distractor and junk extras have no atlas file), queries first."""
    by_path = {Path(root) / im["market_path"]: im for im in meta["images"] if im.get("market_path")}
    return [(im, by_path[im.path]) for im in (*evalset.query, *evalset.gallery) if im.path in by_path]


def load_atlas(root: Path, pid: int) -> torch.Tensor:
    """SimPEDES' atlas of identity `pid` as 3 × H × W in [−1, 1] (the exact texture target)."""
    return (torch.from_numpy(np.array(read_image(Path(root) / "textures" / f"{pid:04d}.png"))).permute(2, 0, 1)
            .float() / 127.5 - 1)


@torch.no_grad()
def predict_textures(model: SAN, load_image, paths: list[Path], batch_size: int = 64) -> torch.Tensor:
    """The textures the trained decoder regresses from test images (N × 3 × H × W, eval mode)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(paths), batch_size):
        images = torch.stack([load_image(p) for p in paths[start:start + batch_size]]).to(device)
        out.append(model.decode(images)[0].float().cpu())
    model.train(was_training)
    return torch.cat(out)


def texture_errors(textures: torch.Tensor, images: list[tuple[ReIDImage, dict]], meta: dict, root: Path,
                   reference: torch.Tensor | None = None):
    """One row per (test image, atlas region): the mean absolute error of `textures` (as `predict_textures` returns
    them, one per image) against the image's exact atlas, in % of the intensity range, separately over the region's
    texels the input image shows ("visible") and those it does not ("invisible": e.g. the back seen from the
    front), with the texel counts. `reference` (3 × H × W, e.g. the mean training atlas) is scored the same way: a
    predictor that ignores the input."""
    import pandas as pd

    from tireid_core.data.simpedes import REGION_PART, region_masks, visible_texels

    attrs = {ident["id"]: ident["attributes"] for ident in meta["identities"]}
    h, w = meta["params"]["height"], meta["params"]["width"]
    masks = {name: torch.from_numpy(m) for name, m in region_masks().items()}
    rows = []
    for texture, (im, entry) in zip(textures, images):
        atlas = load_atlas(root, im.pid)
        if texture.shape != atlas.shape:
            raise ValueError(f"texture {tuple(texture.shape)} vs atlas {tuple(atlas.shape)}: the run's "
                             "san.texture_size must be the atlas size to be scored texel by texel")
        err = (texture - atlas).abs().mean(0) * 50  # [-1, 1] -> % of the intensity range
        ref = (reference - atlas).abs().mean(0) * 50 if reference is not None else None
        shown = torch.from_numpy(visible_texels(entry, attrs[im.pid], h, w))
        for region, mask in masks.items():
            row = {"image": im.path.name, "pid": im.pid, "view": entry["view"], "region": region,
                   "part": REGION_PART[region]}
            for name, sel in (("visible", mask & shown), ("invisible", mask & ~shown)):
                n = int(sel.sum())
                row[f"{name}_texels"] = n
                row[f"{name}_error"] = float(err[sel].mean()) if n else float("nan")
                if ref is not None:
                    row[f"{name}_reference_error"] = float(ref[sel].mean()) if n else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def visible_invisible_summary(errors, by: str | None = None):
    """Texel-weighted mean errors on visible and invisible texels (`texture_errors` rows), overall or per `by`."""
    import pandas as pd

    def weighted(df):
        out = {}
        for name in ("visible", "invisible"):
            n = df[f"{name}_texels"]
            for col in (f"{name}_error", f"{name}_reference_error"):
                if col in df:
                    out[col] = float((df[col].fillna(0) * n).sum() / max(int(n.sum()), 1))
            out[f"{name}_texels"] = int(n.sum())
        return pd.Series(out)

    if by is None:
        return weighted(errors).to_frame("all test images").T
    return errors.groupby(by).apply(weighted)


def per_image_invisible_error(errors) -> dict[str, float]:
    """{image: texel-weighted error on its invisible texels} (for paired comparisons over test images)."""
    out = {}
    for image, df in errors.groupby("image", sort=False):
        n = df["invisible_texels"]
        if int(n.sum()):
            out[image] = float((df["invisible_error"].fillna(0) * n).sum() / int(n.sum()))
    return out


def view_invariance(feats: torch.Tensor, pids: list[int], views: list[str]) -> dict:
    """How far f of one person's front image lies from f of their back image, relative to other people.

    Returns the mean Euclidean distance of same-identity front–back pairs, same-identity same-view pairs and
    different-identity pairs, their ratios to the different-identity mean, and per identity (with both a front and a
    back image) its front–back distance over the different-identity mean (`per_identity`, for paired comparisons):
    lower = more view-invariant. Scale-free, so models with different feature norms compare."""
    d = torch.cdist(feats.float(), feats.float())
    p = torch.tensor(pids)
    v = list(views)
    same = p[:, None] == p[None, :]
    off = ~torch.eye(len(p), dtype=torch.bool)
    fb = torch.tensor([[{a, b} == {"front", "back"} for b in v] for a in v])
    sv = torch.tensor([[a == b for b in v] for a in v])
    different = float(d[~same].mean())
    front_back = float(d[same & fb].mean())
    same_view = float(d[same & sv & off].mean())
    per_identity = {int(pid): float(d[(p == pid)[:, None] & (p == pid)[None, :] & fb].mean()) / different
                    for pid in sorted(set(pids)) if bool(((p == pid)[:, None] & (p == pid)[None, :] & fb).any())}
    return {"front_back": front_back, "same_view": same_view, "different_ids": different,
            "front_back_ratio": front_back / different, "same_view_ratio": same_view / different,
            "per_identity": per_identity}
