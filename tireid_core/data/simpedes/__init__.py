"""SimPEDES: a deterministic, procedurally generated text-image person dataset (spec: simpedes.md).

The real benchmarks are licence-restricted downloads, so this package builds a small stand-in that a CPU
can train on in minutes and that exercises what the papers rely on: part-structured appearance, several
cameras and views, several annotator styles, skewed attribute frequencies, near-twin identities, and
ground truth real datasets lack (texture atlases, per-token part labels, occlusion boxes).

Everything is written in the real on-disk formats (CUHK-PEDES `reid_raw.json` + `imgs/`, a Market-1501
tree, RDE noise-index file), so real-data loaders read it unchanged.

Determinism: every random draw comes from a seeded sub-stream per purpose and identity / image / caption
(`streams`), so one identity's draws never depend on how many draws another one made; files are encoded with
fixed options (`files`). Only numpy, Pillow and the standard library are used (PyYAML by the CLI).

Modules, in reading order:
    params      SimPEDESParams and its one validation
    streams     seeded random sub-streams
    attributes  parts, labels, views, colours, attribute tables
    identities  attribute sampling, near twins, attribute vectors and frequencies
    atlas       per-identity texture atlas (with per-texel part labels)
    body        person box and body layout per view; expected_stripes
    render      one image from an atlas: camera, background, jitter, occlusion, noise; ground truth
    captions    annotator styles, caption grammar, per-token part labels
    files       byte-stable encoders, file writing, content hash
    market      the Market-1501 tree (queries, gallery extras, file names)
    build       the whole dataset, atomically; noise index; meta.json
    cli         `python -m tireid_core.data.simpedes --params params.yaml --out data/simpedes`
"""
from tireid_core.data.simpedes.atlas import ATLAS_REGIONS, REGION_PART, region_masks
from tireid_core.data.simpedes.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_TABLES, LABELS, PARTS, VIEWS
from tireid_core.data.simpedes.body import expected_stripes
from tireid_core.data.simpedes.build import GENERATOR_VERSION, generate, load_meta, noise_index, token_part_labels
from tireid_core.data.simpedes.cli import main
from tireid_core.data.simpedes.files import content_hash
from tireid_core.data.simpedes.identities import attribute_vector
from tireid_core.data.simpedes.params import SimPEDESParams, validate
from tireid_core.data.simpedes.render import visible_texels

__all__ = [
    "ATLAS_REGIONS", "ATTRIBUTE_NAMES", "ATTRIBUTE_TABLES", "GENERATOR_VERSION", "LABELS", "PARTS", "REGION_PART",
    "SimPEDESParams", "VIEWS", "attribute_vector", "content_hash", "expected_stripes", "generate", "load_meta", "main",
    "noise_index", "region_masks", "token_part_labels", "validate", "visible_texels",
]
