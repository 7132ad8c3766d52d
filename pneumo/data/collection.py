"""Find labelled X-rays in a folder, summarise them, split them by patient, and feed them to training: the names
the rest of pneumo uses, in one place (`from pneumo.data import collection as D`).

Each part lives in its own module, bottom up: items (reading one film of a collection), links (symbolic links
followed and refused), imagestats (every film decoded once: statistics, pixel hashes, duplicates), layouts (the
folder, manifest and .npz layouts scanned into a Dataset), summary (what to know before training) and
grouped_split (validation splits and folds by patient and duplicate group).
"""

from __future__ import annotations

from pneumo.data.grouped_split import fold_split, patient_groups, split
from pneumo.data.imagestats import (
    STATS_CACHE_FILES,
    STATS_COLUMNS,
    Progress,
    content_fingerprint,
    duplicate_groups,
    inspect_images,
    pixel_hash,
)
from pneumo.data.items import NPZ_OPEN_MAX, NPZ_SEPARATOR, _open_npz, read_item
from pneumo.data.layouts import (
    IMAGE_SUFFIXES,
    KERMANY_ATTRIBUTION,
    SPLIT_NAMES,
    Dataset,
    DatasetError,
    file_list_hash,
    looks_like_kermany,
    parse_name,
    scan,
)
from pneumo.data.links import LinkPolicy, LinkReport, link_lines
from pneumo.data.summary import Summary, class_weights, summarize

__all__ = [
    "IMAGE_SUFFIXES",
    "KERMANY_ATTRIBUTION",
    "NPZ_OPEN_MAX",
    "NPZ_SEPARATOR",
    "SPLIT_NAMES",
    "STATS_CACHE_FILES",
    "STATS_COLUMNS",
    "Dataset",
    "DatasetError",
    "LinkPolicy",
    "LinkReport",
    "Progress",
    "Summary",
    "_open_npz",  # the open-archive cache, which tests inspect and clear
    "class_weights",
    "content_fingerprint",
    "duplicate_groups",
    "file_list_hash",
    "fold_split",
    "inspect_images",
    "link_lines",
    "looks_like_kermany",
    "parse_name",
    "patient_groups",
    "pixel_hash",
    "read_item",
    "scan",
    "split",
    "summarize",
]
