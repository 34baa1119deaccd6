"""Typed, validated parameters read from `params.yaml` (plus optional profile override files).

Every run is described by one `RunParams`; a wrong key or value fails with a message that names
the dotted key (``baseline.train.lr``), so a typo never silently falls back to a default.
Profiles: `params.yaml` holds the demo values; `configs/<profile>.yaml` holds partial overrides
(same layout) for the `tiny` test profile and the `paper` configuration.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ParamsError(ValueError):
    """A parameter file or value is wrong; the message names the file and/or dotted key."""


@dataclass
class DataParams:
    dataset: str = "simpedes"  # a name known to tireid_core.data.datasets.load_text_image_dataset
    root: str = "data/simpedes"
    height: int = 96
    width: int = 32
    hflip: bool = True  # random horizontal flip during training
    normalize: Literal["imagenet", "half"] = "imagenet"  # "half": mean = std = 0.5 per channel (SSAN's code)
    weak_caption: bool = False  # attach a caption of another image of the same identity (SSAN weak positive)
    max_words: int = 48  # tokens per caption, special tokens included
    cls_sep_tokens: bool = False  # word vocabulary: wrap captions as [CLS] words [SEP] (BERT layout; NAFS demo)
    sub_sentences: bool = False  # batches carry each token's sub-sentence index (NAFS locality constraint)
    num_workers: int = 0
    cache_images: bool = False  # keep decoded, resized images in memory: small datasets are decoded once, not every
    # epoch (with num_workers > 0 each worker fills its own copy for one epoch, so leave it off there)


@dataclass
class ModelParams:
    image_backbone: Literal["resnet_small", "resnet50"] = "resnet_small"
    backbone_widths: list[int] | None = None  # resnet_small only
    pretrained: bool | str = False  # True = ImageNet weights through torchvision; or a local .pth path
    last_stride: int = 2
    text_encoder: Literal["bilstm", "transformer", "bert"] = "bilstm"
    text_model: str = "bert-base-uncased"  # name or local folder, for text_encoder=bert
    text_pretrained: bool = True  # for text_encoder=bert
    word_min_count: int = 2  # vocabulary for bilstm/transformer
    word_embed_dim: int = 128
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_dropout: float = 0.1
    feature_dim: int = 256
    pooling: Literal["max", "avg"] = "max"


@dataclass
class TrainParams:
    seed: int = 0
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 4e-5
    backbone_lr_mult: float = 1.0  # lr multiplier for pretrained encoders
    warmup_epochs: int = 1
    # cosine/step: per-iteration linear warm-up then decay. epoch_multistep (NAFS's WarmupMultiStepLR): constant within
    # an epoch, warm-up from `warmup_factor` over `warmup_epochs`, then gamma at each milestone epoch.
    schedule: Literal["cosine", "step", "constant", "epoch_multistep"] = "cosine"
    milestones: list[int] = field(default_factory=list)  # for schedule=step / epoch_multistep
    warmup_factor: float = 0.01  # for schedule=epoch_multistep
    gamma: float = 0.1
    id_weight: float = 1.0
    cmpm_weight: float = 1.0
    cmpm_q_norm: Literal["l1", "l2"] = "l1"
    grad_clip: float = 0.0  # 0 = off
    freeze_bn: bool = False  # BatchNorm layers kept in eval mode (exact DDP parity, fine-tuning)
    selection_split: Literal["val", "test", "last"] = "val"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision (float16 autocast + gradient scaling), used only on CUDA
    cpu_bf16: bool = False  # bfloat16 autocast for CPU training: fast on CPUs with AVX512-BF16/AMX, slow without
    channels_last: bool = False  # NHWC image batches and conv weights: faster convolutions on CPU for some models
    log_every: int = 0  # 0 = progress bar only


@dataclass
class EvalParams:
    ap_convention: Literal["noninterp", "trapezoid"] = "noninterp"
    tie_mode: Literal["stable", "expected"] = "stable"
    batch_size: int = 128
    retrieval_examples: int = 4


@dataclass
class RunParams:
    out_dir: str = "runs/demo/baseline"
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    eval: EvalParams = field(default_factory=EvalParams)


@dataclass
class SSANParams:
    """SSAN switches (ssan.md). Defaults follow the paper; the official code's quirks are named flags (§7)."""

    parts: int = 6  # K horizontal stripes / word-attention parts
    part_features: bool = True  # PFL + word attention module (WAM)
    relation: bool = True  # multi-view non-local network (MV-NLN, the paper's PRL)
    relation_dim: int = 512  # MV-NLN inner and output width
    leaky_slope: float = 0.25
    local_weight: float = 0.5  # ID = ID_g + w·(ID_l + ID_n); CR likewise
    weak_term: bool = True  # compound ranking loss (False = plain ranking loss)
    alpha1: float = 0.2
    beta: float = 0.1
    alpha2_start_epoch: int = 5
    weak_gate: float = 0.0  # official code: 0.16
    weak_neg: Literal["main_captions", "weak_captions"] = "main_captions"  # official: weak_captions
    lambda_mode: Literal["paper", "official_abs"] = "paper"
    cr_reduction: Literal["sum", "mean"] = "sum"
    inplace_part_act: bool = False  # official: LeakyReLU in place also activates the returned part features
    global_pool_includes_padding: bool = False  # official: text max-pool over padded positions too


@dataclass
class SSANRunParams(RunParams):
    ssan: SSANParams = field(default_factory=SSANParams)


@dataclass
class NAFSParams:
    """NAFS switches (nafs.md). Defaults follow the paper where it speaks, else the official code (§7)."""

    scales: Literal["global", "single", "full"] = "full"  # global only; + branch-2 stripes; + branch-3 (staircase)
    part2: int = 3  # stripes of branch 2 (from layer2); paper Fig. 2 draws 2
    part3: int = 2  # stripes of branch 3 (from layer3); paper Fig. 2 draws 4
    shuffle: bool = True  # permute stripes during training (identity at test)
    n_sep: int = 2  # sub-sentence units per caption
    locality: Literal["separate_passes", "masked_single_pass", "none"] = "separate_passes"
    alignment: Literal["cnl", "per_scale"] = "cnl"  # one attention over all scales, or within scale pairs
    unit_norm: Literal["joint", "per_token"] = "joint"  # text key/value LayerNorm over the whole unit block (code)
    temperature: float = 20.0  # λ of the CNL softmax over text units
    leaky_slope: float = 0.1
    cont_weight: float = 0.1  # λ_cont of the local matching term
    cont_scale: float = 20.0  # the CONT softmax scale on S_loc
    cmpm_q_norm: Literal["l1", "l2"] = "l1"  # CMPM paper (l1) or official code (l2), for CMPM and CONT
    cmpc: bool = True
    # Not in NAFS: an ID loss on the global features (classifier shared by both modalities). The paper starts from
    # ImageNet/BERT weights; from random init CMPM + CMPC sit at the uniform-prediction plateau, so the CPU demo uses
    # this as its stand-in for pretrained features. 0 = the paper's loss.
    id_weight: float = 0.0
    rvn_mode: Literal["off", "intended", "official"] = "intended"
    rvn_k: int = 5
    rvn_weight: float = 1.0


@dataclass
class NAFSRunParams(RunParams):
    nafs: NAFSParams = field(default_factory=NAFSParams)


# Which parameter class validates which params.yaml section.
SECTION_PARAMS: dict[str, type] = {"baseline": RunParams, "ssan": SSANRunParams, "nafs": NAFSRunParams}


def _check_value(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a type annotation; return it (ints accepted for floats)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        if value not in typing.get_args(annotation):
            raise ParamsError(f"{key}: {value!r} is not one of {list(typing.get_args(annotation))}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _check_value(value, option, key)
            except ParamsError:
                continue
        raise ParamsError(f"{key}: {value!r} does not have the expected type {annotation}")
    if annotation is type(None):
        if value is not None:
            raise ParamsError(f"{key}: expected null, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_check_value(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is int or annotation is bool or annotation is str:
        if type(value) is not annotation:
            raise ParamsError(f"{key}: expected {annotation.__name__}, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, key)
    raise TypeError(f"unsupported annotation {annotation} for {key}")


def from_dict(cls: type, data: Any, key: str):
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types by dotted name."""
    if not isinstance(data, dict):
        raise ParamsError(f"{key}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ParamsError(f"{key}.{unknown[0]}: unknown key (known keys: {', '.join(sorted(known))})")
    kwargs = {name: _check_value(v, hints[name], f"{key}.{name}") for name, v in data.items()}
    obj = cls(**kwargs)
    _check_ranges(obj, key)
    return obj


def _check_ranges(obj: Any, key: str) -> None:
    """Value checks that a type cannot express."""
    positive = {
        DataParams: ("height", "width", "max_words"),
        ModelParams: ("word_embed_dim", "text_hidden", "text_layers", "text_heads", "feature_dim", "word_min_count"),
        TrainParams: ("epochs", "batch_size"),
        EvalParams: ("batch_size",),
    }.get(type(obj), ())
    for name in positive:
        if getattr(obj, name) <= 0:
            raise ParamsError(f"{key}.{name}: must be positive, got {getattr(obj, name)!r}")
    if isinstance(obj, TrainParams):
        if obj.lr <= 0:
            raise ParamsError(f"{key}.lr: must be positive, got {obj.lr!r}")
        if obj.batch_size < 2:
            raise ParamsError(f"{key}.batch_size: ranking/matching losses need at least 2 samples per batch")
        if obj.warmup_epochs < 0 or obj.warmup_epochs >= obj.epochs and obj.epochs > 1:
            raise ParamsError(f"{key}.warmup_epochs: must be in [0, epochs), got {obj.warmup_epochs!r}")
    if isinstance(obj, SSANParams):
        for name in ("parts", "relation_dim"):
            if getattr(obj, name) <= 0:
                raise ParamsError(f"{key}.{name}: must be positive, got {getattr(obj, name)!r}")
        if obj.relation and not obj.part_features:
            raise ParamsError(f"{key}.relation: the non-local module needs part_features: true")
    if isinstance(obj, NAFSParams):
        for name in ("part2", "part3", "n_sep", "rvn_k"):
            if getattr(obj, name) <= 0:
                raise ParamsError(f"{key}.{name}: must be positive, got {getattr(obj, name)!r}")
        if obj.alignment == "per_scale" and (obj.scales != "full" or obj.locality == "none"):
            raise ParamsError(f"{key}.alignment: per_scale pairs image scales with text scales and needs "
                              "scales: full and a locality mode other than none")
    if isinstance(obj, ModelParams) and obj.last_stride not in (1, 2):
        raise ParamsError(f"{key}.last_stride: must be 1 or 2, got {obj.last_stride!r}")
    if isinstance(obj, DataParams) and obj.num_workers < 0:
        raise ParamsError(f"{key}.num_workers: must be >= 0, got {obj.num_workers!r}")


def deep_merge(base: dict, override: dict) -> dict:
    """Recursively merge `override` into a copy of `base` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: parameter file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    return data


def parse_set(assignments: list[str]) -> dict:
    """Turn ``["baseline.train.lr=0.01", ...]`` into a nested override dict (values parsed as YAML)."""
    out: dict = {}
    for item in assignments:
        if "=" not in item:
            raise ParamsError(f"--set {item!r}: expected KEY=VALUE with a dotted key")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def load_section(
    section: str,
    params_file: str | Path = "params.yaml",
    profile: str = "demo",
    sets: list[str] | None = None,
    configs_dir: str | Path | None = None,
) -> dict:
    """Resolve one section: params.yaml, then configs/<profile>.yaml, then --set overrides."""
    params_file = Path(params_file)
    data = read_yaml(params_file)
    if profile != "demo":
        cdir = Path(configs_dir) if configs_dir else params_file.parent / "configs"
        profile_file = cdir / f"{profile}.yaml"
        if not profile_file.exists():
            known = sorted(p.stem for p in cdir.glob("*.yaml"))
            raise ParamsError(f"profile {profile!r}: {profile_file} not found (known: demo, {', '.join(known)})")
        data = deep_merge(data, read_yaml(profile_file))
    if sets:
        data = deep_merge(data, parse_set(sets))
    if section not in data:
        raise ParamsError(f"{params_file}: section {section!r} missing (sections: {', '.join(sorted(data))})")
    return data[section]


def load_run_params(section: str, params_file: str | Path = "params.yaml", **kwargs) -> RunParams:
    """The validated RunParams of a method section (see `load_section` for the layering).

    Relative paths (out_dir, data.root) resolve against the params file's folder, so a run does
    not depend on the working directory it was started from.
    """
    if section not in SECTION_PARAMS:
        raise ParamsError(f"{section}: not a method section (known: {', '.join(sorted(SECTION_PARAMS))})")
    params = from_dict(SECTION_PARAMS[section], load_section(section, params_file=params_file, **kwargs), section)
    base = Path(params_file).resolve().parent
    params.out_dir = str(base / params.out_dir)
    params.data.root = str(base / params.data.root)
    return params


def to_dict(params: Any) -> dict:
    return dataclasses.asdict(params)


def save_params(params: Any, path: str | Path) -> None:
    """Write resolved parameters next to a run's metrics (atomic)."""
    from tireid_core.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(params), sort_keys=False))
