"""Find labelled films under a folder in any layout pneumo reads (split folders, class folders, a CSV manifest, a
MedMNIST .npz), one row per film with its label, split, patient and subtype; patients and subtypes read from
Kermany-style file names."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumo.core.paths import CLASS_NAMES
from pneumo.data.items import NPZ_SEPARATOR
from pneumo.data.links import LinkPolicy, LinkReport

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}
SPLIT_NAMES = ("train", "val", "test")

KERMANY_ATTRIBUTION = (
    "Kermany, D. S., Goldbaum, M., Cai, W. et al. Identifying Medical Diagnoses and Treatable Diseases by "
    "Image-Based Deep Learning. Cell 172(5), 1122-1131.e9 (2018), https://doi.org/10.1016/j.cell.2018.02.010. "
    "Data: Kermany, D., Zhang, K., Goldbaum, M. (2018), Labeled Optical Coherence Tomography (OCT) and Chest X-Ray "
    "Images for Classification, Mendeley Data v2, https://doi.org/10.17632/rscbjbr9sj.2. "
    "Licence: CC BY 4.0, https://creativecommons.org/licenses/by/4.0/"
)


def looks_like_kermany(frame: pd.DataFrame) -> bool:
    """True when most file names follow the Kermany collection's patterns (personN_*, IM-XXXX-YYYY)."""
    names = frame["path"].map(lambda p: Path(p).name)
    return bool(len(names)) and names.str.contains(r"person\d+_|IM-\d+-\d+", regex=True).mean() > 0.5


_PERSON = re.compile(r"person(\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_IM = re.compile(r"(?:NORMAL2-)?IM-(\d+)-\d+", re.IGNORECASE)


class DatasetError(ValueError):
    """A folder that does not hold labelled X-rays in a known layout."""


@dataclass
class Dataset:
    """The labelled images found under a root: one row per image."""

    root: Path
    layout: str
    frame: pd.DataFrame  # path, label, class_name, split, patient_id, subtype
    problems: list[tuple[str, str]] = field(default_factory=list)  # entries refused at scan time, with the reason
    links: LinkReport = field(default_factory=LinkReport)  # films reached through symbolic links

    def __len__(self) -> int:
        return len(self.frame)


def parse_name(path: str) -> tuple[str, str]:
    """Patient id and pneumonia subtype from a Kermany-style file name."""
    if NPZ_SEPARATOR in path:  # MedMNIST items carry no patient: each image is its own group
        return path, ""
    stem = Path(path).stem
    m = _PERSON.search(stem)
    if m:
        return f"person{m.group(1)}", {"bacteria": "bacterial", "virus": "viral"}[m.group(2).lower()]
    m = _IM.search(stem)
    if m:
        # IM-XXXX and NORMAL2-IM-XXXX are two numbering series: the same number is not the same child.
        # Merging them tied the lowest numbers of one series to middling numbers of the other, so a
        # "lowest-numbered" hold-out held neither; exact duplicates across the series are still joined
        # through their duplicate group.
        prefix = "NORMAL2-IM" if stem.upper().startswith("NORMAL2-") else "IM"
        return f"{prefix}-{int(m.group(1)):04d}", ""
    return str(path), ""


def _class_from(name: str) -> int | None:
    upper = name.upper()
    return CLASS_NAMES.index(upper) if upper in CLASS_NAMES else None


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(folder: Path) -> dict[int, list[Path]]:
    """Class folders by label; NORMAL/ and normal/ side by side are both read (merged), never one dropped."""
    found: dict[int, list[Path]] = {}
    for child in sorted(folder.iterdir()):
        if child.is_dir():
            label = _class_from(child.name)
            if label is not None:
                found.setdefault(label, []).append(child)
    return found


def scan(root: str | Path, *, follow_links: bool = False, allowed_roots: Sequence[str | Path] | None = None) -> Dataset:
    """Find labelled images under root: split folders, class folders, a CSV manifest or a MedMNIST .npz.

    Films reached through symbolic links (a linked file, or a linked folder above it) are counted in
    ``links``, followed or refused. By default a link is followed only where it stays inside the folder
    scanned (the split folder, the class folders' parent, the manifest's folder) or inside one of
    allowed_roots: the app, serving other people, passes its configured roots
    (pneumo.app.settings.AppSettings.allowed_roots()), so a folder's links cannot read other files on the
    machine. follow_links=True also follows links out of them that the user running it (or root) made: the
    command line runs as the machine's user on folders that user named, whose links are that user's own, and
    says how many it followed; a link another user made in a shared folder is still refused
    (LinkPolicy.refusal). Refused links are listed in ``problems`` with the reason, and never opened.
    """
    root = Path(root).expanduser()
    policy = LinkPolicy.make(follow_links, allowed_roots)
    if not root.exists():
        raise DatasetError(f"{root}: no such file or folder")
    if root.is_file():
        if root.suffix == ".npz":
            return _scan_npz(root)
        if root.suffix == ".csv":
            return _scan_manifest(root, policy)
        raise DatasetError(f"{root}: expected a folder, a .csv manifest or a pneumoniamnist .npz file")
    rows: list[dict[str, Any]] = []
    problems: list[tuple[str, str]] = []  # files refused at scan time (links out of their folder)
    links = LinkReport()
    layout = ""
    split_dirs = {c.name.lower(): c for c in sorted(root.iterdir()) if c.is_dir() and c.name.lower() in SPLIT_NAMES}
    if split_dirs:
        layout = "split folders"
        for split, folder in split_dirs.items():
            rows += _rows_from_class_dirs(folder, split, problems, policy, links)
        links.allowed = policy.describe(f"the split folder under {root.resolve()} that holds the link")
    elif _class_dirs(root):
        layout = "class folders"
        rows = _rows_from_class_dirs(root, "train", problems, policy, links)
        links.allowed = policy.describe(root.resolve())
    else:
        manifests = sorted(root.glob("*.csv"))
        npz = sorted(root.glob("pneumoniamnist*.npz"))
        if manifests:
            return _scan_manifest(manifests[0], policy)
        if npz:
            return _scan_npz(npz[0])
    if not rows:
        found = sorted(c.name + ("/" if c.is_dir() else "") for c in root.iterdir())[:20]
        refused = (
            f" {links.refused} film(s) there are symbolic links, refused (e.g. {links.refused_example}: "
            f"{links.refused_reason})."
            if links.refused
            else ""
        )
        raise DatasetError(
            f"{root}: no labelled images found.{refused} Expected train/val/test folders or NORMAL/ and PNEUMONIA/ "
            f"folders with images, a CSV manifest (path,label[,patient_id][,split]) or pneumoniamnist*.npz; "
            f"found: {', '.join(found) if found else 'an empty folder'}"
        )
    return Dataset(root, layout, _frame(rows), problems, links)


def _rows_from_class_dirs(
    folder: Path,
    split: str,
    problems: list[tuple[str, str]] | None = None,
    policy: LinkPolicy | None = None,
    links: LinkReport | None = None,
) -> list[dict[str, Any]]:
    rows = []
    policy = policy or LinkPolicy()
    links = links if links is not None else LinkReport()
    inside = folder.resolve()
    for label, class_dirs in _class_dirs(folder).items():
        for class_dir in class_dirs:
            for path in _image_files(class_dir):
                # Resolved (symlinks followed) before anything is opened, as for manifests: where the policy
                # says a link may not lead (by default, out of the folder), it cannot be used to read, show or
                # probe other files. A film whose resolved path is not where its name says is reached through a
                # link: of the file, or of a folder between it and the scanned folder.
                real = path.resolve()
                if real != inside / path.relative_to(folder):
                    refusal = policy.refusal(path, folder, real, inside)
                    links.add(path, refusal)
                    if refusal is not None:
                        if problems is not None:
                            problems.append((str(path), refusal))
                        continue
                rows.append({"path": str(path), "label": label, "split": split})
    return rows


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    parsed = [parse_name(p) for p in frame["path"]]
    if "patient_id" not in frame or frame["patient_id"].isna().all():
        frame["patient_id"] = [p for p, _ in parsed]
    else:
        frame["patient_id"] = [
            str(pid) if pd.notna(pid) and str(pid) else p for pid, (p, _) in zip(frame["patient_id"], parsed)
        ]
    frame["subtype"] = [s for _, s in parsed]
    frame["label"] = frame["label"].astype(int)
    frame["class_name"] = [CLASS_NAMES[i] for i in frame["label"]]
    frame["split"] = frame["split"].fillna("train").astype(str).str.lower()
    return frame[["path", "label", "class_name", "split", "patient_id", "subtype"]].reset_index(drop=True)


def _parse_label(value: Any, where: str) -> int:
    text = str(value).strip().upper()
    if text in ("0", "NORMAL", "FALSE", "NEGATIVE"):
        return 0
    if text in ("1", "PNEUMONIA", "TRUE", "POSITIVE"):
        return 1
    raise DatasetError(f"{where}: label '{value}' is neither NORMAL/0 nor PNEUMONIA/1")


def _scan_manifest(csv_path: Path, policy: LinkPolicy | None = None) -> Dataset:
    try:
        table = pd.read_csv(csv_path)
    except Exception as exc:
        raise DatasetError(f"{csv_path}: cannot read the CSV manifest ({exc})") from exc
    table.columns = [c.strip().lower() for c in table.columns]
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise DatasetError(
            f"{csv_path}: manifest needs columns path,label[,patient_id][,split]; missing {sorted(missing)}"
        )
    if table.empty:
        raise DatasetError(f"{csv_path}: the manifest lists no images")
    rows = []
    problems: list[tuple[str, str]] = []
    policy = policy or LinkPolicy()
    links = LinkReport(allowed=policy.describe(csv_path.parent.resolve()))
    root = csv_path.parent.resolve()
    folders = {Path(os.path.normpath(csv_path.parent.absolute())), root}  # the folder by its name, and resolved
    for i, (_, rec) in enumerate(table.iterrows()):  # i: the row number (read_csv numbers the rows 0, 1, …)
        path = Path(str(rec["path"]))
        path = path if path.is_absolute() else csv_path.parent / path
        # Resolved (symlinks followed) before anything is opened: a manifest names files under its own
        # folder only, so it cannot be used to read, show or probe other files on the machine. A row named
        # inside the folder that resolves elsewhere is a symbolic link: followed where the policy allows.
        real = path.resolve()
        named = Path(os.path.normpath(path.absolute()))
        base = next((f for f in folders if named.is_relative_to(f)), None)
        if base is not None and real != root / named.relative_to(base):
            refusal = policy.refusal(named, base, real, root)
            links.add(path, refusal)
            if refusal is not None:
                problems.append((str(rec["path"]), f"row {i + 2}: {refusal}"))
                continue
        elif not real.is_relative_to(root):
            problems.append(
                (str(rec["path"]), f"row {i + 2}: outside the manifest's folder {root}; refused, not opened")
            )
            continue
        rows.append(
            {
                "path": str(path),
                "label": _parse_label(rec["label"], f"{csv_path.name} row {i + 2}"),
                "split": rec.get("split", "train") if pd.notna(rec.get("split", "train")) else "train",
                "patient_id": rec.get("patient_id"),
            }
        )
    if not rows:
        raise DatasetError(
            f"{csv_path}: no usable rows; "
            + (f"{links.refused} are links refused; " if links.refused else "")
            + "; ".join(r for _, r in problems[:3])
        )
    frame = _frame(rows)
    labels_per_file = frame.groupby("path")["label"].nunique()
    for path in labels_per_file[labels_per_file > 1].index:
        problems.append((path, "listed with both labels in the manifest; left out"))
    frame = frame[~frame["path"].isin(labels_per_file[labels_per_file > 1].index)]
    frame = frame.drop_duplicates("path").reset_index(drop=True)
    return Dataset(csv_path, "CSV manifest", frame, problems, links)


def _scan_npz(npz_path: Path) -> Dataset:
    try:
        arrays = np.load(npz_path, allow_pickle=False)
        keys = set(arrays.files)
        contents = {k: (np.asarray(arrays[k]).reshape(-1) if k.endswith("_labels") else arrays[k].shape) for k in keys}
    except Exception as exc:
        raise DatasetError(f"{npz_path}: cannot read the .npz file ({type(exc).__name__}: {exc})") from exc
    rows = []
    for split in SPLIT_NAMES:
        if f"{split}_images" in keys and f"{split}_labels" in keys:
            labels = contents[f"{split}_labels"]
            shape = contents[f"{split}_images"]
            if len(shape) not in (3, 4) or shape[0] != len(labels) or min(shape[1:3]) < 8:
                raise DatasetError(
                    f"{npz_path}: {split}_images has shape {shape}; expected N×H×W (or N×H×W×C) "
                    f"with N = {len(labels)} labels"
                )
            if not np.isin(labels, (0, 1)).all():
                bad = sorted(set(np.unique(labels).tolist()) - {0, 1})[:5]
                raise DatasetError(f"{npz_path}: {split}_labels must be 0 (normal) or 1 (pneumonia); found {bad}")
            rows += [
                {"path": f"{npz_path}{NPZ_SEPARATOR}{split}{NPZ_SEPARATOR}{i}", "label": int(lab), "split": split}
                for i, lab in enumerate(labels)
            ]
    if not rows:
        raise DatasetError(f"{npz_path}: expected MedMNIST arrays like train_images/train_labels; found {sorted(keys)}")
    return Dataset(npz_path, "MedMNIST npz", _frame(rows))


def file_list_hash(frame: pd.DataFrame) -> str:
    """A short hash of the sorted file names and labels, to tell which data a model saw."""
    names = sorted(f"{Path(p).name}:{lab}" for p, lab in zip(frame["path"], frame["label"]))
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
