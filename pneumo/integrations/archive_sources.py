"""What ``python -m pneumo screen`` reads: folders, single files and CSV manifests, made one list of absolute paths.

The list is built in the driver before Ray starts, so a manifest without a ``path`` column or a folder without
films is refused at once, in one line.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

MANIFEST_MAX_ROWS = 50_000_000  # a manifest is read whole into the driver; past this it is surely not a list of films


def read_manifest(path: str | Path) -> list[str]:
    """The films a CSV manifest lists in its ``path`` column (any other columns are ignored), in order; a relative
    path is taken from the manifest's folder, as pneumo.data.collection reads labelled manifests. ValueError for a
    file without that column or with no rows."""
    manifest = Path(path)
    folder = manifest.parent
    out: list[str] = []
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [name.strip().lower() for name in next(reader, [])]
            if "path" not in header:
                raise ValueError(f"{manifest}: a screening manifest needs a 'path' column; found {header[:8]}")
            column = header.index("path")
            for row in reader:
                if len(out) >= MANIFEST_MAX_ROWS:
                    raise ValueError(f"{manifest}: more than {MANIFEST_MAX_ROWS} rows; split the manifest")
                value = row[column].strip() if column < len(row) else ""
                if value:
                    out.append(str(Path(value) if Path(value).is_absolute() else folder / value))
    except UnicodeDecodeError:
        raise ValueError(f"{manifest}: not a UTF-8 CSV manifest") from None
    except csv.Error as exc:
        raise ValueError(f"{manifest}: cannot be read as CSV ({exc})") from None
    if not out:
        raise ValueError(f"{manifest}: the manifest lists no films")
    return out


def collect_paths(sources: Sequence[str | Path]) -> list[str]:
    """The files to screen, once each, in order: a folder is every image file under it, sorted (predict's rule);
    a ``.csv`` file is a manifest (read_manifest); any other path is one file, kept even when it does not exist so
    that its row says why. Paths are made absolute (not resolved: a link stays the name the user gave)."""
    from pneumo.evaluation.drift import expand

    found: list[str] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            files = expand([path])
            if not files:
                raise ValueError(f"{source}: no image files in this folder")
            found += files
        elif path.suffix.lower() == ".csv" and path.is_file():
            found += read_manifest(path)
        else:
            found.append(str(path))
    return list(dict.fromkeys(os.path.abspath(p) for p in found))
