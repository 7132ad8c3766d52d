"""Find labelled X-rays in a folder, summarise them, split them by patient, and feed them to training."""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISLNK
from typing import Any

import numpy as np
import pandas as pd

from pneumo.core.files import atomic_write_text
from pneumo.core.paths import CLASS_NAMES
from pneumo.data.decode import load_image
from pneumo.data.pixels import InvalidImageError, to_uint8

# scikit-learn is imported where used: the dashboard imports this module at start, and scikit-learn adds ~2 s.

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}
SPLIT_NAMES = ("train", "val", "test")

NPZ_SEPARATOR = "::"

Progress = Callable[[int, int], None]

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
class LinkReport:
    """Films reached through a symbolic link (the file, or a folder above it inside the scanned folder): how
    many were followed and how many refused, with one example of each, and where links were allowed to
    lead. A count the scan keeps, so that "n = 36" is never said without "and 36 links refused"."""

    followed: int = 0
    refused: int = 0
    followed_example: str | None = None
    refused_example: str | None = None
    refused_reason: str | None = None  # why refused_example was refused
    allowed: str = ""  # where links may lead, in words

    def add(self, path: Path, refusal: str | None) -> None:
        """Count the film at path, reached through a link: followed (refusal None) or refused, and why."""
        if refusal is None:
            self.followed += 1
            self.followed_example = self.followed_example or str(path)
        else:
            self.refused += 1
            if self.refused_example is None:
                self.refused_example, self.refused_reason = str(path), refusal

    def to_dict(self) -> dict[str, Any]:
        return {
            "followed": self.followed,
            "refused": self.refused,
            "followed_example": self.followed_example,
            "refused_example": self.refused_example,
            "refused_reason": self.refused_reason,
            "allowed": self.allowed,
        }

    def lines(self) -> list[str]:
        """What a reader of the counts must know, one line each: nothing when no film is a link."""
        out = []
        if self.followed:
            out.append(
                f"{self.followed} film(s) are symbolic links, followed ({self.allowed}); e.g. {self.followed_example}"
            )
        if self.refused:
            out.append(
                f"{self.refused} film(s) are symbolic links, refused and not counted; e.g. {self.refused_example}: "
                f"{self.refused_reason}"
            )
        return out


def link_lines(links: dict[str, Any]) -> list[str]:
    """A stored link report (LinkReport.to_dict) as its lines: what a reader of the counts must know."""
    return LinkReport(**links).lines() if links else []


@dataclass(frozen=True)
class _LinkPolicy:
    """Where a film's symbolic links may lead: inside the scanned folder or one of roots, or, with follow, anywhere
    when the links were made by the user running the command (or root)."""

    follow: bool = False
    roots: tuple[Path, ...] = ()

    @classmethod
    def make(cls, follow_links: bool, allowed_roots: Sequence[str | Path] | None) -> _LinkPolicy:
        roots = []
        for root in allowed_roots or ():
            try:
                roots.append(Path(root).expanduser().resolve())
            except (OSError, RuntimeError):  # a root that is a symlink loop allows nothing
                continue
        return cls(follow_links, tuple(roots))

    def describe(self, inside: Path | str) -> str:
        """Where links may lead, in words, for messages and LinkReport.allowed."""
        if self.follow:
            return "anywhere when made by you or root: the command line follows its own user's links"
        return " or ".join(str(p) for p in (inside, *self.roots))

    def refusal(self, link: Path, base: Path, real: Path, inside: Path) -> str | None:
        """Why the film at link (under the scanned folder base, resolving to real) is not opened, or None.

        Inside the scanned folder (resolved: inside) or a root, any link is followed. With follow, a link out
        of them is followed too when every link on the way (the file, or a folder between base and it) was made
        by the user running the command or by root: the command line reads what its user can read, on the
        folder its user named, and a link that user made is theirs. A link another user made, in a folder
        shared with them, is not: it could lead the command to read the runner's own files into a report."""
        if any(real.is_relative_to(p) for p in (inside, *self.roots)):
            return None
        if not self.follow:
            return f"a link to a file outside {self.describe(inside)}; refused, not opened"
        maker = _foreign_link_owner(link, base)
        if maker is not None:
            return f"a link made by another user (uid {maker}); refused, not opened"
        return None


def _foreign_link_owner(link: Path, base: Path) -> int | None:
    """The owner of the first symbolic link between base and link (both included) made by neither the user running
    this nor root; None when there is none (or the system has no user ids)."""
    if not hasattr(os, "getuid"):
        return None
    trusted = {os.getuid(), 0}
    try:
        parts = link.relative_to(base).parts
    except ValueError:
        return None
    for i in range(len(parts) + 1):
        try:
            st = os.lstat(base.joinpath(*parts[:i]))
        except OSError:
            continue
        if S_ISLNK(st.st_mode) and st.st_uid not in trusted:
            return st.st_uid
    return None


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


@dataclass
class Summary:
    """What an analyst wants to know about a labelled collection before training on it."""

    root: str
    layout: str
    n_images: int
    counts: pd.DataFrame  # rows: split, columns: class names
    imbalance_ratio: float  # majority / minority class count
    class_weights: dict[int, float]
    patients_per_class: dict[str, int]
    images_per_patient: pd.Series  # index: patient_id
    subtypes: dict[str, int]
    duplicate_groups: list[list[str]]
    image_stats: pd.DataFrame  # path, class_name, width, height, mean, std, hash (of the decoded pixels)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    links: LinkReport = field(default_factory=LinkReport)  # films reached through symbolic links
    # Films that decode: the imbalance and the class weights are computed on these only (a weight from files
    # that cannot be read is computed from nothing: 100,000 empty files once reported "balanced" weights).
    n_readable: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "layout": self.layout,
            "n_images": self.n_images,
            "n_readable": self.n_images if self.n_readable is None else self.n_readable,
            "counts": {split: {k: int(v) for k, v in row.items()} for split, row in self.counts.iterrows()},
            # null, not Infinity or NaN (neither is JSON): one class, or no readable film, has no ratio
            "imbalance_ratio": round(self.imbalance_ratio, 3) if math.isfinite(self.imbalance_ratio) else None,
            "class_weights": {CLASS_NAMES[k]: round(v, 4) for k, v in self.class_weights.items()},
            "patients_per_class": self.patients_per_class,
            "images_per_patient": {
                "mean": round(float(self.images_per_patient.mean()), 3) if len(self.images_per_patient) else 0.0,
                "max": int(self.images_per_patient.max()) if len(self.images_per_patient) else 0,
                "patients_with_several": int((self.images_per_patient > 1).sum()),
            },
            "subtypes": self.subtypes,
            "duplicate_groups": self.duplicate_groups,
            "image_size": _describe(self.image_stats, ["width", "height"]),
            "intensity": _describe(self.image_stats, ["mean", "std"]),
            "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
            "links": self.links.to_dict(),
        }


def _describe(frame: pd.DataFrame, columns: list[str]) -> dict[str, dict[str, float]]:
    if frame.empty:
        return {}
    desc = frame[columns].describe().loc[["min", "mean", "max"]]
    return {c: {k: round(float(v), 4) for k, v in desc[c].items()} for c in columns}


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
    (_LinkPolicy.refusal). Refused links are listed in ``problems`` with the reason, and never opened.
    """
    root = Path(root).expanduser()
    policy = _LinkPolicy.make(follow_links, allowed_roots)
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
    policy: _LinkPolicy | None = None,
    links: LinkReport | None = None,
) -> list[dict[str, Any]]:
    rows = []
    policy = policy or _LinkPolicy()
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


def _scan_manifest(csv_path: Path, policy: _LinkPolicy | None = None) -> Dataset:
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
    policy = policy or _LinkPolicy()
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


NPZ_OPEN_MAX = 8  # open .npz archives kept; a run reads one or two, a long-lived app may see many


@functools.lru_cache(maxsize=NPZ_OPEN_MAX)
def _open_npz(file: str, mtime_ns: int, size: int) -> Any:
    """An open .npz archive, kept so items are not re-opened one by one. Keyed by the file's modification
    time and size too: a file rewritten in place is opened afresh, never read through a stale handle.
    An evicted archive is closed by NpzFile's own finaliser once no reader holds it."""
    return np.load(file)


def read_item(path: str) -> np.ndarray:
    """Decode one dataset item (a file, or an image inside a MedMNIST .npz) to [0, 1] grayscale."""
    if NPZ_SEPARATOR in path:
        file, split, index = path.split(NPZ_SEPARATOR)
        stat = os.stat(file)
        archive = _open_npz(file, stat.st_mtime_ns, stat.st_size)
        img = np.asarray(archive[f"{split}_images"][int(index)], dtype=np.float32)
        img = img.mean(axis=-1) if img.ndim == 3 else img
        return img / 255.0
    return load_image(path)


def _inspect(path: str) -> dict[str, Any]:
    try:
        img = read_item(path)
    except (InvalidImageError, OSError, ValueError) as exc:
        return {"path": path, "error": str(getattr(exc, "reason", exc))}
    return {
        "path": path,
        "height": img.shape[0],
        "width": img.shape[1],
        "mean": float(img.mean()),
        "std": float(img.std()),
        "hash": pixel_hash(img),
    }


def pixel_hash(img: np.ndarray) -> str:
    """The hash of a decoded film's 8-bit pixels: equal for the same image under any name or format."""
    pixels = to_uint8(img)
    return hashlib.blake2b(pixels.tobytes() + str(pixels.shape).encode(), digest_size=16).hexdigest()


STATS_COLUMNS = ["path", "height", "width", "mean", "std", "hash", "error"]
STATS_CACHE_FILES = 16  # folders whose image statistics stay cached on disk


def inspect_images(
    paths: Iterable[str], progress: Progress | None = None, workers: int = 4, cache_dir: str | Path | None = None
) -> pd.DataFrame:
    """Decode every image once: size, intensity, pixel hash, or the reason it is unreadable.

    cache_dir: keep the result on disk, keyed by the files' paths, sizes and modification times, so the
    same folder is decoded once, not on every visit (any changed, added or removed file is a new key).
    """
    paths = list(paths)
    cached = _stats_cache_file(paths, cache_dir) if cache_dir else None
    if cached is not None and cached.exists():
        try:
            frame = pd.read_csv(
                cached,
                dtype={"path": str, "hash": str, "error": str},
                keep_default_na=False,
                na_values={"height": [""], "width": [""], "mean": [""], "std": [""]},
            )
            frame["error"] = frame["error"].replace("", None)
            frame["hash"] = frame["hash"].replace("", None)
            if list(frame.columns) == STATS_COLUMNS and frame["path"].tolist() == paths:
                if progress:
                    progress(len(paths), len(paths))
                return frame
        except (OSError, ValueError):
            pass  # a damaged cache entry is decoded again and replaced
    results = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, result in enumerate(pool.map(_inspect, paths, chunksize=16)):
            results.append(result)
            if progress and (i % 50 == 0 or i + 1 == len(paths)):
                progress(i + 1, len(paths))
    frame = pd.DataFrame(results, columns=STATS_COLUMNS)
    if cached is not None:
        _store_stats(frame, cached)
    return frame


def content_fingerprint(paths: Iterable[str]) -> str:
    """A hash of the files' paths, sizes and modification times: it changes when any film is replaced,
    added or removed, without reading a single one."""
    digest = hashlib.sha256()
    for p in paths:
        file = p.split(NPZ_SEPARATOR)[0]
        try:
            st = os.stat(file)
            digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{p}\0missing\n".encode())
    return digest.hexdigest()[:32]


def _stats_cache_file(paths: list[str], cache_dir: str | Path) -> Path:
    return Path(cache_dir) / f"image-stats-{content_fingerprint(paths)}.csv"


def _store_stats(frame: pd.DataFrame, path: Path) -> None:
    try:
        atomic_write_text(path, frame.to_csv(index=False))
        entries = sorted(path.parent.glob("image-stats-*.csv"), key=lambda f: f.stat().st_mtime, reverse=True)
        for old in entries[STATS_CACHE_FILES:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only or full cache folder only costs the next visit a decode


def duplicate_groups(stats: pd.DataFrame) -> list[list[str]]:
    """Groups of paths whose decoded pixels are identical."""
    ok = stats[stats["error"].isna()]
    groups = ok.groupby("hash")["path"].apply(list)
    return sorted((sorted(g) for g in groups if len(g) > 1), key=lambda g: g[0])


def summarize(
    root: str | Path | Dataset,
    progress: Progress | None = None,
    cache_dir: str | Path | None = None,
    *,
    follow_links: bool = False,
    allowed_roots: Sequence[str | Path] | None = None,
) -> Summary:
    """Counts, imbalance, patients, subtypes, duplicates and image statistics for a labelled collection
    (the decoded statistics kept in cache_dir, see inspect_images). follow_links and allowed_roots: which
    symbolic links to films are followed (see scan); the summary's ``links`` counts them.

    The counts are of the films listed; the imbalance ratio and the class weights are of the films that
    decode (what training can use): with none readable there are no weights (an empty dict) and no ratio
    (NaN; null in to_dict), never figures computed from nothing."""
    dataset = root if isinstance(root, Dataset) else scan(root, follow_links=follow_links, allowed_roots=allowed_roots)
    frame = dataset.frame
    stats = inspect_images(frame["path"], progress, cache_dir=cache_dir)
    merged = frame.merge(stats, on="path", how="left")
    unreadable = [(r.path, r.error) for r in merged.itertuples() if isinstance(r.error, str)] + dataset.problems
    readable = merged[merged["error"].isna()]
    counts = (
        frame.groupby(["split", "class_name"])
        .size()
        .unstack(fill_value=0)
        .reindex(columns=list(CLASS_NAMES), fill_value=0)
    )
    counts = counts.reindex(
        [s for s in (*SPLIT_NAMES, *sorted(set(counts.index) - set(SPLIT_NAMES))) if s in counts.index]
    )
    per_class = readable["label"].value_counts()
    minority = per_class.min() if len(per_class) == 2 else 0
    imbalance = float(per_class.max() / minority) if minority else float("inf") if len(per_class) else float("nan")
    return Summary(
        root=str(dataset.root),
        layout=dataset.layout,
        n_images=len(frame),
        counts=counts,
        imbalance_ratio=imbalance,
        class_weights=class_weights(readable["label"].to_numpy()),
        patients_per_class={c: int(frame.loc[frame.class_name == c, "patient_id"].nunique()) for c in CLASS_NAMES},
        images_per_patient=frame.groupby("patient_id").size().sort_values(ascending=False),
        subtypes={str(k): int(v) for k, v in frame.loc[frame.subtype != "", "subtype"].value_counts().items()},
        duplicate_groups=duplicate_groups(stats),
        image_stats=readable[["path", "class_name", "width", "height", "mean", "std", "hash"]].reset_index(drop=True),
        unreadable=unreadable,
        links=dataset.links,
        n_readable=len(readable),
    )


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """'Balanced' class weights (n_samples / (n_classes × count)) for the classes present."""
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels).astype(int)
    present = np.unique(labels)
    if len(present) == 0:
        return {}
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights)}


def patient_groups(frame: pd.DataFrame, duplicates: list[list[str]]) -> np.ndarray:
    """One group id per image: patients joined with every duplicate group they share an image with."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    patient_of = dict(zip(frame["path"], frame["patient_id"]))
    for group in duplicates:
        patients = [patient_of[p] for p in group if p in patient_of]
        for other in patients[1:]:
            union(patients[0], other)
    return np.array([find(p) for p in frame["patient_id"]])


def split(
    data: Dataset | pd.DataFrame,
    val_fraction: float = 0.15,
    seed: int = 0,
    duplicates: list[list[str]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Carve a validation split from the non-test images, stratified by class and grouped by patient
    and by duplicate group, so no patient and no duplicated image sits on both sides."""
    from sklearn.model_selection import StratifiedGroupKFold

    frame = data.frame if isinstance(data, Dataset) else data
    pool = frame[frame["split"] != "test"].reset_index(drop=True)
    if not 0.0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction must be between 0 and 0.5, got {val_fraction}")
    if duplicates is None:
        duplicates = duplicate_groups(inspect_images(pool["path"]))
    groups = patient_groups(pool, duplicates)
    n_splits = max(2, int(round(1.0 / val_fraction)))
    if len(np.unique(groups)) < n_splits:
        raise DatasetError(
            f"only {len(np.unique(groups))} patients: too few to carve a {val_fraction:.0%} validation split"
        )
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(folds.split(pool, pool["label"], groups))
    return pool.iloc[train_idx].reset_index(drop=True), pool.iloc[val_idx].reset_index(drop=True)


def fold_split(
    data: Dataset | pd.DataFrame,
    fold: int,
    folds: int = 5,
    seed: int = 0,
    duplicates: list[list[str]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held-out) for fold `fold` of `folds`, stratified by class and grouped by patient and
    duplicate group: the held-out parts of one seed's folds partition the non-test images."""
    from sklearn.model_selection import StratifiedGroupKFold

    frame = data.frame if isinstance(data, Dataset) else data
    pool = frame[frame["split"] != "test"].reset_index(drop=True)
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be between 0 and {folds - 1}; got {fold}")
    if duplicates is None:
        duplicates = duplicate_groups(inspect_images(pool["path"]))
    groups = patient_groups(pool, duplicates)
    if len(np.unique(groups)) < folds:
        raise DatasetError(f"only {len(np.unique(groups))} patients: too few for {folds} folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    train_idx, val_idx = list(splitter.split(pool, pool["label"], groups))[fold]
    return pool.iloc[train_idx].reset_index(drop=True), pool.iloc[val_idx].reset_index(drop=True)


def file_list_hash(frame: pd.DataFrame) -> str:
    """A short hash of the sorted file names and labels, to tell which data a model saw."""
    names = sorted(f"{Path(p).name}:{lab}" for p, lab in zip(frame["path"], frame["label"]))
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
