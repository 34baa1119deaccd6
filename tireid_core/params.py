"""Typed, validated parameters read from `params.yaml` (plus optional profile override files).

Every run is described by one `RunParams` subclass — the generic data/model/train/eval parts here, a method's own part
in its module (`tireid_core.models.<method>`). A wrong key or value fails with a message that names the dotted key
(``baseline.train.lr``), so a typo never silently falls back to a default. Layers, later ones winning: `params.yaml`
(the demo values), `configs/<profile>.yaml` (partial overrides for the `tiny` test profile and the `paper`
configuration), the row's overrides (``<method>_rows``), then ``--set``.
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


def _positive(obj: Any, key: str, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ParamsError(f"{key}.{name}: must be positive, got {getattr(obj, name)!r}")


@dataclass
class DataParams:
    dataset: str = "simpedes"  # a name known to tireid_core.data.datasets (text-image or image-ReID)
    root: str = "data/simpedes"
    height: int = 96
    width: int = 32
    hflip: bool = True  # random horizontal flip during training
    normalize: Literal["imagenet", "half", "clip"] = "imagenet"  # "half": mean = std = 0.5 per channel (SSAN's code);
    # "clip": CLIP's statistics
    max_words: int = 48  # tokens per caption, special tokens included
    # Support sets: each training sample also carries K captions of *other* images of its identity and K other images
    # of its identity (SSAN's weak caption is support_captions = 1; LCR²S uses both). Identities with too few:
    # skip = drop them from training (said in a warning), duplicate = draw with replacement (the sample itself when it
    # has no other image), augment = fill with the sample's own caption / a re-augmented copy of its own image. The
    # batch flags the supports that are the sample itself (support_images_self, support_captions_self).
    support_captions: int = 0
    support_images: int = 0
    support_policy: Literal["skip", "duplicate", "augment"] = "skip"
    ids_per_batch: int = 16  # image ReID: P identities x K images per batch (K = batch_size / P)
    val_ids: int = 0  # image ReID: training identities held out as a val split for checkpoint selection (the
    # Market-style datasets have none); 0 = train on all of them
    num_workers: int = 0
    cache_images: bool = False  # keep decoded, resized images in memory: small datasets are decoded once, not every
    # epoch (with num_workers > 0 each worker fills its own copy for one epoch, so leave it off there)

    def check(self, key: str) -> None:
        _positive(self, key, "height", "width", "max_words", "ids_per_batch")
        for name in ("num_workers", "support_captions", "support_images", "val_ids"):
            if getattr(self, name) < 0:
                raise ParamsError(f"{key}.{name}: must be >= 0, got {getattr(self, name)!r}")


@dataclass
class ModelParams:
    # clip: the vision tower of the CLIP checkpoint named by text_model (models/clip.py; with text_encoder: clip)
    image_backbone: Literal["resnet_small", "resnet50", "clip"] = "resnet_small"
    backbone_widths: list[int] | None = None  # resnet_small only
    pretrained: bool | str = False  # True = ImageNet weights through torchvision (clip: the checkpoint's vision
    # weights); or a local .pth path
    last_stride: int = 2
    text_encoder: Literal["bilstm", "transformer", "bert", "clip"] = "bilstm"
    text_model: str = "bert-base-uncased"  # hub name, or a local folder written by save_pretrained ("./..." is
    # relative to the params file), for text_encoder=bert or clip (a CLIPModel and its tokenizer)
    text_pretrained: bool = True  # for text_encoder=bert or clip
    bert_dropout: float | None = None  # BERT's hidden and attention dropout; None keeps its config's (0.1 in BERT-base)
    word_min_count: int = 2  # vocabulary for bilstm/transformer
    word_embed_dim: int = 128
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_dropout: float = 0.1
    feature_dim: int = 256
    pooling: Literal["max", "avg"] = "max"

    def check(self, key: str) -> None:
        _positive(self, key, "word_embed_dim", "text_hidden", "text_layers", "text_heads", "feature_dim",
                  "word_min_count")
        if self.last_stride not in (1, 2):
            raise ParamsError(f"{key}.last_stride: must be 1 or 2, got {self.last_stride!r}")


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
    warmup_shape: Literal["linear", "exponential"] = "linear"  # epoch_multistep: linear from warmup_factor (NAFS), or
    # the same factor every epoch from warmup_factor to 1 (SAN's warm-up: x1.259 per epoch for 20 epochs)
    gamma: float = 0.1
    grad_clip: float = 0.0  # 0 = off
    freeze_bn: bool = False  # BatchNorm layers kept in eval mode (exact DDP parity, fine-tuning)
    selection_split: Literal["val", "test", "last"] = "val"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision (float16 autocast + gradient scaling), used only on CUDA
    cpu_bf16: bool = False  # bfloat16 autocast for CPU training: fast on CPUs with AVX512-BF16/AMX, slow without
    channels_last: bool = False  # NHWC image batches and conv weights: faster convolutions on CPU for some models
    log_every: int = 0  # 0 = progress bar only

    def check(self, key: str) -> None:
        _positive(self, key, "epochs", "batch_size")
        if not self.lr > 0 or self.lr == float("inf"):
            raise ParamsError(f"{key}.lr: must be a positive finite number, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ParamsError(f"{key}.weight_decay: must be >= 0, got {self.weight_decay!r}")
        if self.batch_size < 2:
            raise ParamsError(f"{key}.batch_size: ranking/matching losses need at least 2 samples per batch")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs and self.epochs > 1:
            raise ParamsError(f"{key}.warmup_epochs: must be in [0, epochs), got {self.warmup_epochs!r}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")
                                          or self.device.startswith("mps")):
            raise ParamsError(f"{key}.device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class EvalParams:
    ap_convention: Literal["noninterp", "trapezoid"] = "noninterp"
    also_trapezoid_map: bool = False  # also report "mAP_trapezoid" (the AP the official SSAN code logs)
    tie_mode: Literal["stable", "expected"] = "stable"
    batch_size: int = 128
    retrieval_examples: int = 4

    def check(self, key: str) -> None:
        _positive(self, key, "batch_size")


@dataclass
class RunParams:
    """Every method's section: generic data/model/train/eval parts. A method subclasses it to add its own part."""

    out_dir: str = "runs/demo/baseline"  # the method's run folder; each row trains into <out_dir>/<row>
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    eval: EvalParams = field(default_factory=EvalParams)
    method: str = ""  # filled by load_run_params, written to params.resolved.yaml
    row: str = ""
    # filled by load_run_params: the run folder (the section's out_dir) of each method this one reads (Method.reads)
    reads: dict[str, str] = field(default_factory=dict)

    def check(self, key: str) -> None:
        """Cross-field checks of a method go in its subclass's `check` (call super().check first)."""


def _check_value(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a type annotation; return it (ints accepted for floats)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        if value not in typing.get_args(annotation) or isinstance(value, bool):
            hint = (" (YAML reads an unquoted off/on/yes/no as a boolean: write it in quotes, e.g. 'off')"
                    if isinstance(value, bool) else "")
            raise ParamsError(f"{key}: {value!r} is not one of {list(typing.get_args(annotation))}{hint}")
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
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {value!r}")
        key_type, item_type = typing.get_args(annotation)
        return {_check_value(k, key_type, f"{key} key"): _check_value(v, item_type, f"{key}.{k}")
                for k, v in value.items()}
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
    if hasattr(obj, "check"):
        obj.check(key)
    return obj


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
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ParamsError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    return data


def _parse_value(option: str, raw: str) -> Any:
    """A --set value as YAML; plain scientific notation (1e-3, which YAML 1.1 reads as a string) as a number."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = str(err).splitlines()[0]
        raise ParamsError(f"--set {option}: the value {raw!r} is not valid YAML ({problem})") from None
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in "e.") else value
        except ValueError:
            return value
    return value


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
            if not isinstance(node, dict):
                raise ParamsError(f"--set {item!r}: {key.strip()} sets a key inside a value that was also set")
        node[parts[-1]] = _parse_value(item, raw)
    return out


def find_repo_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: the working directory) that holds params.yaml and dvc.yaml:
    notebooks opened in JupyterLab run in notebooks/, the pipeline in the repository root."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").exists() and (folder / "dvc.yaml").exists():
            return folder
    raise ParamsError(f"no params.yaml with a dvc.yaml beside it at or above {here}")


def resolve_params_file(params_file: str | Path | None) -> Path:
    """`params_file` as given, or the repository's params.yaml when None."""
    return Path(params_file) if params_file is not None else find_repo_root() / "params.yaml"


def load_sections(params_file: str | Path | None = None, profile: str = "demo", sets: list[str] | None = None,
                  configs_dir: str | Path | None = None) -> dict:
    """All sections: params.yaml, then configs/<profile>.yaml, then --set overrides."""
    params_file = resolve_params_file(params_file)
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
    return data


def load_section(section: str, params_file: str | Path | None = None, **kwargs) -> dict:
    """One section of `load_sections`."""
    data = load_sections(params_file, **kwargs)
    if section not in data:
        raise ParamsError(f"{resolve_params_file(params_file)}: section {section!r} missing "
                          f"(sections: {', '.join(sorted(data))})")
    return data[section]


@dataclass(frozen=True)
class Row:
    """One trained configuration of a method (the full model or an ablation row), from ``<method>_rows``."""

    name: str
    label: str
    overrides: dict  # dotted keys inside the method section, e.g. {"ssan.weak_term": False}


def method_rows(method: str, params_file: str | Path | None = None, profile: str = "demo",
                sets: list[str] | None = None) -> dict[str, Row]:
    """The rows of `method` in params.yaml order: ``<method>_rows: {row: {label: ..., set: {dotted.key: value}}}``."""
    key = f"{method}_rows"
    raw = load_section(key, params_file, profile=profile, sets=sets)
    if not isinstance(raw, dict) or not raw:
        raise ParamsError(f"{key}: expected a mapping of rows, each with a label and its overrides")
    rows = {}
    for name, spec in raw.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("label"), str):
            raise ParamsError(f"{key}.{name}: expected {{label: text, set: {{dotted.key: value}}}}")
        unknown = sorted(set(spec) - {"label", "set"})
        if unknown:
            raise ParamsError(f"{key}.{name}.{unknown[0]}: unknown key (known: label, set)")
        overrides = spec.get("set") or {}
        if not isinstance(overrides, dict):
            raise ParamsError(f"{key}.{name}.set: expected a mapping of dotted keys to values")
        rows[str(name)] = Row(str(name), spec["label"], dict(overrides))
    return rows


def _nest(dotted: dict) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        node = out
        parts = str(key).split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def set_section(item: str) -> str:
    """The section a ``--set`` assignment addresses (the first part of its dotted key)."""
    return item.split("=", 1)[0].strip().split(".", 1)[0]


def _check_set_sections(sets: list[str], method: str, sections: dict, reads: tuple[str, ...] = ()) -> None:
    """A --set key outside the run's method section (and the sections of the methods it reads) would be silently
    unused: refuse it, naming the key."""
    for item in sets:
        head = set_section(item)
        if head in (method, f"{method}_rows", *reads):
            continue
        hint = (f" (did you mean {method}.{item.split('=', 1)[0].strip()}?)"
                if head in {f.name for f in dataclasses.fields(RunParams)} else "")
        where = "another section" if head in sections else "no section"
        raise ParamsError(f"--set {item}: {head!r} is {where} of this run; keys must start with {method!r}{hint}")


def load_run_params(method: str, params_file: str | Path | None = None, row: str | None = None,
                    profile: str = "demo", sets: list[str] | None = None,
                    configs_dir: str | Path | None = None) -> RunParams:
    """The validated parameters of one run: the method's section (params.yaml, profile, then the row's overrides,
    then --set), checked by the method's own parameter class.

    `row` None takes the section as it is, with out_dir as the run folder; a row trains into ``<out_dir>/<row>``.
    Relative paths (out_dir, data.root, a model.pretrained file, a model.text_model starting with ./ or ../) resolve
    against the params file's folder, so a run does not depend on the working directory it was started from.
    """
    from tireid_core.methods import get_method

    params_file = resolve_params_file(params_file)
    sets = list(sets or [])
    sections = load_sections(params_file, profile=profile, configs_dir=configs_dir)
    try:
        spec = get_method(method)
    except ValueError as err:
        raise ParamsError(str(err)) from None
    _check_set_sections(sets, method, sections, spec.reads)
    if method not in sections:
        raise ParamsError(f"{params_file}: section {method!r} missing (sections: {', '.join(sorted(sections))})")
    section = sections[method]
    if row is not None:
        rows = method_rows(method, params_file, profile=profile, sets=sets)
        if row not in rows:
            raise ParamsError(f"{method}_rows: no row {row!r} (rows: {', '.join(rows)})")
        section = deep_merge(section, _nest(rows[row].overrides))
    section = deep_merge(section, parse_set(sets).get(method, {}))
    params = from_dict(spec.params, section, method)
    base = params_file.resolve().parent
    params.out_dir = str(base / params.out_dir / (row or ""))
    params.data.root = str(base / params.data.root)
    if isinstance(params.model.pretrained, str):  # a local weights file (the demo's stand-in)
        params.model.pretrained = str(base / params.model.pretrained)
    if params.model.text_model.startswith(("./", "../")):  # a local save_pretrained folder, not a hub name
        params.model.text_model = str((base / params.model.text_model).resolve())
    params.method, params.row = method, row or ""
    # the methods this one reads, under the same profile and their own --set keys (a student finds its teacher)
    params.reads = {name: load_run_params(name, params_file, profile=profile, configs_dir=configs_dir,
                                          sets=[s for s in sets if set_section(s) == name]).out_dir
                    for name in spec.reads}
    return params


def to_dict(params: Any) -> dict:
    return dataclasses.asdict(params)


def save_params(params: Any, path: str | Path) -> None:
    """Write resolved parameters next to a run's metrics (atomic)."""
    from tireid_core.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(params), sort_keys=False))
