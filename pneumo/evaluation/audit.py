"""Label audit: films whose given label their out-of-fold prediction contradicts (confident learning),
and a reviewer's verdicts on them, kept beside the data.

The scores come from predictions out of fold, from a model that never saw the film: in-sample scores
agree with the labels the model memorised and find nothing. cleanlab's confident learning estimates
each class's noise rate from the confident joint and flags the films most likely mislabelled; the
images themselves are never touched. A reviewer's verdict for each suspect (keep, relabel, exclude) is
a row of a CSV beside the data, naming the film by its path relative to the CSV's folder, that
`train --label-review FILE` applies. Reviewers save only what they changed, under a lock, so two of them
saving at once both keep their verdicts.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from pneumo.core.files import atomic_write_text, check_writable, now_iso
from pneumo.core.paths import CLASS_NAMES
from pneumo.data.collection import scan
from pneumo.model.loading import OOF_FILE, load_model

# cleanlab and pneumo.evaluation.metrics (scikit-learn) are imported where an audit runs: pneumo.training.data imports
# this module only to apply a review and needs neither.

REVIEW_FILE = "label_review.csv"
VERDICTS = ("keep", "relabel", "exclude")
REVIEW_COLUMNS = ["path", "label", "verdict", "score", "reviewed"]


class ReviewError(ValueError):
    """A label-review file that cannot be applied; the message names the file and the row."""


def find_suspects(labels: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """Per film: cleanlab's label-quality score (self-confidence: the out-of-fold probability of the
    given label; low is suspicious) and whether confident learning flags it as a label issue."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    y = np.asarray(labels, dtype=int)
    p = np.clip(np.asarray(probabilities, dtype=float), 1e-6, 1 - 1e-6)
    pred_probs = np.column_stack([1.0 - p, p])
    # n_jobs=1: cleanlab's multiprocessing pool costs more than the work on a few thousand films.
    suspect = find_label_issues(y, pred_probs, filter_by="prune_by_noise_rate", n_jobs=1)
    score = get_label_quality_scores(y, pred_probs, method="self_confidence")
    return pd.DataFrame({"score": score, "suspect": suspect})


def audit(predictions: pd.DataFrame) -> pd.DataFrame:
    """Every film of `predictions` (path, label, probability[, fold]) with its score and flag, the most
    suspicious first."""
    missing = {"path", "label", "probability"} - set(predictions.columns)
    if missing:
        raise ValueError(f"predictions lack the column(s) {', '.join(sorted(missing))}")
    ok = predictions[predictions["probability"].notna()].reset_index(drop=True)
    if ok["label"].nunique() < 2:
        raise ValueError("a label audit needs films of both classes")
    found = find_suspects(ok["label"].to_numpy(), ok["probability"].to_numpy())
    out = pd.concat([ok, found], axis=1)
    return out.sort_values("score", kind="stable").reset_index(drop=True)


def summary(audited: pd.DataFrame) -> dict[str, Any]:
    """How many films are suspects, per class."""
    suspects = audited[audited["suspect"]]
    return {
        "n": int(len(audited)),
        "suspects": int(len(suspects)),
        "suspect_share": float(len(suspects) / max(len(audited), 1)),
        "suspects_by_label": {str(k): int(v) for k, v in suspects["label"].value_counts().sort_index().items()},
        "method": "cleanlab find_label_issues (confident learning, prune_by_noise_rate) on out-of-fold "
        "probabilities; score = self-confidence",
    }


def audit_folder(data: str | Path, model_path: str | Path | None = None, progress: Any = None) -> pd.DataFrame:
    """Audit a labelled collection: films with a stored out-of-fold prediction of the model use it
    (source "out of fold"); the others are predicted by the model itself (source "model": out of sample
    only if the model never trained on them, which evaluate.leakage tells)."""
    from pneumo.evaluation.metrics import predict_frame

    loaded = load_model(model_path)
    frame = scan(data).frame
    stored_path = loaded.path.with_name(OOF_FILE)
    stored = pd.read_csv(stored_path) if stored_path.exists() else pd.DataFrame(columns=["path", "probability"])
    oof = dict(zip((_key(p) for p in stored["path"]), stored["probability"]))
    known = np.array([_key(p) in oof for p in frame["path"]], dtype=bool)
    frame = frame.assign(
        probability=[oof.get(_key(p), np.nan) for p in frame["path"]], source=np.where(known, "out of fold", "model")
    )
    if (~known).any():
        predicted = predict_frame(loaded, frame[~known], progress=progress)
        frame.loc[~known, "probability"] = predicted["probability"].to_numpy()
    return audit(frame[["path", "label", "probability", "source"]])


def review_path(data_root: str | Path) -> Path:
    """Where a collection's label review lives: beside its films, never inside a class folder."""
    root = Path(data_root)
    return (root.parent if root.is_file() else root) / REVIEW_FILE


# The review file's paths are POSIX paths relative to the folder that holds it (review_path puts it at the data
# root; for a .npz or .csv collection, beside that file). A relative path names one film exactly wherever the
# collection is copied, where the former class-folder-and-name key let a row for train/NORMAL/a.jpeg relabel
# val/NORMAL/a.jpeg too.
#
# Older files hold the film paths as the app gave them (absolute). They are still read: an absolute path under the
# review's folder is converted to its relative path (the same film, exactly; no guessing by class and name), and an
# absolute path elsewhere (a file written on another machine) is refused with a one-line ReviewError naming the file
# and the row. A relative path is always taken as relative to the review's folder, so a hand-written class/name row
# (NORMAL/a.jpeg) still applies to a collection of class folders. The next save rewrites every row relatively.


def read_review(path: str | Path, root: str | Path | None = None) -> pd.DataFrame:
    """A label-review CSV, validated row by row, with `path` as each film's POSIX path relative to root (by
    default the review's own folder). ReviewError names the file and the bad row; two rows naming one film
    (duplicates or conflicting verdicts) are refused, with their row numbers, rather than letting the last win."""
    path = Path(path)
    base = _review_root(path, root)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            missing = {"path", "verdict"} - set(columns)
            if missing:
                raise ReviewError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
            records: list[tuple[int, dict[str, str]]] = []
            for rec in reader:
                # line_num is the line the row ends on (the header is row 1): the number an editor shows,
                # blank lines included.
                records.append((reader.line_num, {c: rec.get(c) or "" for c in columns}))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReviewError(f"{path}: cannot be read as a label review ({exc})") from exc
    rows_of: dict[str, list[int]] = {}
    for line, rec in records:
        if rec["verdict"] not in VERDICTS:
            raise ReviewError(
                f"{path}, row {line}: verdict must be one of {', '.join(VERDICTS)}; got {rec['verdict']!r}"
            )
        rec["path"] = _row_key(rec["path"], base, f"{path}, row {line}")
        rows_of.setdefault(rec["path"], []).append(line)
    repeated = {film: lines for film, lines in rows_of.items() if len(lines) > 1}
    if repeated:
        verdict_at = {line: rec["verdict"] for line, rec in records}
        named = [
            f"{film} in rows {', '.join(map(str, lines))} ({'/'.join(verdict_at[n] for n in lines)})"
            for film, lines in list(repeated.items())[:5]
        ]
        more = f"; and {len(repeated) - 5} more" if len(repeated) > 5 else ""
        raise ReviewError(
            f"{path}: {len(repeated)} film(s) have more than one row, refused (keep one row per film): "
            f"{'; '.join(named)}{more}"
        )
    return pd.DataFrame([rec for _, rec in records], columns=list(dict.fromkeys(["path", "verdict", *columns])))


def saved_verdicts(review: str | Path, films: Iterable[str], root: str | Path | None = None) -> dict[str, str]:
    """{film: saved verdict} for those of `films` (paths as pneumo.data.collection.scan gives them) that the
    review at `review` holds a row for; {} when there is no review yet. A reviewer's widgets start from these,
    so a second session shows (and keeps) what the first one decided."""
    review = Path(review)
    if not review.exists():
        return {}
    base = _review_root(review, root)
    rows = read_review(review, base)
    saved = dict(zip(rows["path"], rows["verdict"]))
    found = {film: _film_key(film, base) for film in films}
    return {film: saved[key] for film, key in found.items() if key is not None and key in saved}


def changed_verdicts(verdicts: Mapping[str, str], saved: Mapping[str, str]) -> dict[str, str]:
    """The verdicts a reviewer changed: those that differ from the saved one, "keep" standing for a film without
    a saved row (the widget's default). Only these are written, so an untouched widget never overwrites another
    reviewer's verdict, nor records a "keep" for a film nobody looked at."""
    return {film: v for film, v in verdicts.items() if v != saved.get(film, "keep")}


def write_review(
    path: str | Path,
    verdicts: Mapping[str, str],
    audited: pd.DataFrame | None = None,
    root: str | Path | None = None,
) -> Path:
    """Merge verdicts {film path: verdict} into the review CSV at path; the films themselves are never touched.

    The file is read, merged and replaced (atomically) under an exclusive lock on a sidecar file, so two
    reviewers saving at once both keep their verdicts, and rows of films not in `verdicts` are kept as they
    are. A verdict equal to the film's saved one changes nothing (its row keeps its time), and when nothing
    changes the file is not rewritten. Films are stored by their path relative to root (by default the
    review's folder); a film outside it is refused. Callers pass only what a reviewer changed (changed_verdicts)."""
    path = Path(path)
    bad = {v for v in verdicts.values() if v not in VERDICTS}
    if bad:
        raise ReviewError(f"verdicts must be one of {', '.join(VERDICTS)}; got {', '.join(sorted(bad))}")
    base = _review_root(path, root)
    keys: dict[str, str] = {}
    for film in verdicts:
        key = _film_key(film, base)
        if key is None:
            raise ReviewError(
                f"{path}: the film {film} is not under {base}, the folder the review's paths are relative to"
            )
        keys[film] = key
    info: dict[Any, Any] = {} if audited is None else {t.path: t for t in audited.itertuples()}
    check_writable(path)  # a read-only file or folder is refused before a lock file is made beside it
    path.parent.mkdir(parents=True, exist_ok=True)
    with _review_lock(path):
        # Read under the lock: another reviewer's save that finished a moment ago is in this read, and none can
        # start before this one has replaced the file.
        rows: dict[str, dict[str, str]] = {}
        if path.exists():
            for r in read_review(path, base).to_dict("records"):
                rows[r["path"]] = {c: str(r.get(c, "")) for c in REVIEW_COLUMNS}
        changed = False
        for film, verdict in verdicts.items():
            key = keys[film]
            if key in rows and rows[key]["verdict"] == verdict:
                continue
            seen = info.get(film)
            rows[key] = {
                "path": key,
                "label": "" if seen is None else str(int(seen.label)),
                "verdict": verdict,
                "score": "" if seen is None else f"{seen.score:.6f}",
                "reviewed": now_iso(),
            }
            changed = True
        if changed:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=REVIEW_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows.values())
            atomic_write_text(path, buf.getvalue())
    return path


def apply_review(
    frame: pd.DataFrame, review: str | Path, root: str | Path | None = None
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The dataset frame with verdicts applied: 'exclude' drops the film, 'relabel' flips its label,
    'keep' changes nothing. A film is matched by its path relative to root (by default the review's folder),
    so only the very film a row names is changed; rows that match no film are counted as unmatched."""
    base = _review_root(review, root)
    verdicts = read_review(review, base)
    by_key = dict(zip(verdicts["path"], verdicts["verdict"]))  # read_review refuses two rows for one film
    keys = [_film_key(p, base) for p in frame["path"]]
    chosen = [None if k is None else by_key.get(k) for k in keys]
    out = frame.copy()
    relabel = np.array([c == "relabel" for c in chosen], dtype=bool)
    out.loc[relabel, "label"] = 1 - out.loc[relabel, "label"]
    if "class_name" in out.columns:
        out.loc[relabel, "class_name"] = [CLASS_NAMES[int(v)] for v in out.loc[relabel, "label"]]
    keep = np.array([c != "exclude" for c in chosen], dtype=bool)
    counts = {v: int(sum(c == v for c in chosen)) for v in VERDICTS}
    counts["unmatched"] = len(set(by_key) - set(keys))
    if by_key and counts["unmatched"] == len(by_key):
        # Every row names a film that is not here: the review belongs to another folder (or was moved away
        # from its data). Training on without it would drop every verdict silently.
        raise ReviewError(
            f"{review}: none of its {len(by_key)} verdict(s) names a film under {base}; "
            "is this the review of another data folder?"
        )
    return out[keep].reset_index(drop=True), counts


def _review_root(review: str | Path, root: str | Path | None) -> Path:
    return Path(review).parent if root is None else Path(root)


@contextmanager
def _review_lock(path: Path) -> Iterator[None]:
    # flock on a sidecar file, not on the review itself: the review is replaced by a rename, and a lock held on
    # the old inode would not exclude a writer that opened the new one. flock excludes other processes and other
    # open() calls of this one (threads), and is released if the holder dies. The lock file is left in place:
    # removing it would let a waiting writer and a new one lock different files.
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _absolute(path: str | Path) -> Path:
    # Lexical: '..' collapsed, links not followed (a film may be a link to another film inside its folder).
    return Path(os.path.abspath(path))


def _film_key(film: str, root: Path) -> str | None:
    """A film's path (absolute, or relative to the working folder, as scan gives it) relative to root, POSIX;
    None when it is not under root."""
    p, base = _absolute(str(film)), _absolute(root)
    if not p.is_relative_to(base):
        # The same folder reached another way (root given through a link): compare the real folders, the
        # film's own name kept as it is.
        p, base = p.parent.resolve() / p.name, base.resolve()
        if not p.is_relative_to(base):
            return None
    rel = p.relative_to(base)
    return None if rel == Path(".") else rel.as_posix()


def _row_key(stored: str, root: Path, where: str) -> str:
    """A review row's path as the film's POSIX path relative to root (see the note above read_review)."""
    if not stored.strip():
        raise ReviewError(f"{where}: no path")
    if Path(stored).is_absolute():
        key = _film_key(stored, root)
        if key is None:
            raise ReviewError(
                f"{where}: {stored} is not under {root} (an older review, written with absolute paths elsewhere); "
                f"write the film's path relative to {root} instead"
            )
        return key
    rel = PurePosixPath(os.path.normpath(stored).replace(os.sep, "/"))
    if rel.parts[:1] == ("..",):
        raise ReviewError(f"{where}: {stored} leads out of {root}; paths are relative to the review's folder")
    return rel.as_posix()


def _key(path: str) -> str:
    # Class folder and file name, for the stored out-of-fold predictions of a model trained on another copy of the
    # collection (label reviews match by relative path instead: see the note above read_review).
    p = Path(str(path))
    return f"{p.parent.name.upper()}/{p.name}"
