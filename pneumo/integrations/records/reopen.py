"""Opening a logged reading again: its film found from the source it recorded, checked by its pixel hash.

The records database keeps no pixels. A reading made from a file remembers the file's absolute path, and one made
from a PACS remembers the study, series and instance UIDs; both remember the SHA-256 of the film's pixels
(pneumo.integrations.records.readings.pixel_sha256). reopen fetches the film from that source and hands it back only
when its pixels are still the ones read: a file replaced under the same name, or gone, is refused in one line,
never shown as the film that was read. An upload's pixels were never kept anywhere, so its reading cannot be
opened again.

What comes back (Reopened) is what a page needs to draw the reading's card again: the decoded film, a Reading with
the stored probability, decision and warnings (not a new reading: the model or its threshold may have changed
since), the pixel hash (a cache key), and whether a given model is the one that read it, which decides whether
Grad-CAM maps made now are that reading's maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumo.integrations.records.db import Records, RecordsError, open_records
from pneumo.integrations.records.readings import FILE, PACS, UPLOAD, model_file_sha256, pixel_sha256, reading_dict
from pneumo.integrations.records.schema import ReadingRow
from pneumo.model.reading import Reading, card_hash


@dataclass
class Reopened:
    """A logged reading with its film found again."""

    reading_id: int
    row: dict[str, Any]  # the stored reading, as reading_dict gives it
    reading: Reading  # the film as decoded now, with the probability, decision and warnings stored then
    pixel_sha256: str | None  # the film's pixel hash (checked against the stored one when it has one)
    found_at: str  # the file's path, or the PACS instance's DICOMweb path
    checked: str  # how the film was recognised: "pixel hash", or "instance UID" (no pixel hash was recorded)

    def same_model(self, loaded: Any) -> bool:
        """Whether `loaded` is the model that made this reading: the same model file (by its SHA-256), or, for a
        reading logged before model files were hashed, the same card name and card hash. Grad-CAM maps made by any
        other model are not this reading's maps."""
        recorded = self.row.get("model_sha256")
        if recorded:
            return model_file_sha256(getattr(loaded, "path", None)) == recorded
        return str(loaded.card.name) == self.row.get("model") and card_hash(loaded) == self.row.get("card_hash")


def _stored(records: Records, reading_id: int) -> dict[str, Any]:
    with records.reading() as session:
        row = session.get(ReadingRow, int(reading_id))
        if row is None:
            raise RecordsError(f"reading {reading_id}: no such reading in {records.url}")
        return reading_dict(row)


def _decode(data: str | bytes, name: str, where: str) -> Any:
    from pneumo.data.decode import load_xray
    from pneumo.data.pixels import InvalidImageError

    try:
        return load_xray(data, name=name)
    except InvalidImageError as exc:
        raise RecordsError(f"{where}: no longer decodes as a film ({exc.reason})") from None
    except OSError as exc:
        raise RecordsError(f"{where}: cannot be read ({exc.strerror or exc})") from None


def reopen(
    reading_id: int,
    *,
    pacs: Any = None,
    url: str | None = None,
    records: Records | None = None,
) -> Reopened:
    """The film of a logged reading, found again from its recorded source, with what is needed to draw its card.

    pacs: a pneumo.integrations.pacs.Pacs client for a reading made from a PACS (its retrieve_instance is used). A
    RecordsError, one line naming the reading and the source, when the reading does not exist, had no film (the
    input could not be read), was an upload (its pixels were never kept), or when its source is gone or now holds
    other pixels. Nothing is written."""
    records = records or open_records(url)
    row = _stored(records, reading_id)
    what = f"reading {reading_id}"
    expected = row.get("pixel_sha256")
    if row.get("error") is not None or row.get("probability") is None:
        raise RecordsError(f"{what}: its input could not be read when it was logged ({row.get('error')}); no film")
    kind, name = row.get("source_kind"), str(row.get("source_name") or "")
    if kind == UPLOAD:
        raise RecordsError(
            f"{what}: an upload ({name}) whose pixels were not kept; open the file itself (a film's readings are "
            "found by its pixel hash)"
        )
    if kind == FILE:
        path = Path(name)
        where = f"{what}: {path}"
        if not path.is_file():
            raise RecordsError(f"{where}: the file is gone (moved or deleted since it was read)")
        if not expected:
            raise RecordsError(f"{where}: no pixel hash was recorded, so the file cannot be checked against it")
        xray = _decode(str(path), path.name, where)
        found_at, checked = str(path), "pixel hash"
    elif kind == PACS:
        study, series, instance = row.get("study_uid"), row.get("series_uid"), row.get("instance_uid")
        where = f"{what}: PACS instance {instance}"
        if not (study and series and instance):
            raise RecordsError(f"{where}: the reading does not record its study, series and instance UIDs")
        if pacs is None:
            raise RecordsError(f"{where}: needs the PACS it came from (no PACS client given)")
        from pneumo.integrations.pacs.config import PacsError  # here: the PACS package imports this package

        try:
            raw = pacs.retrieve_instance(study, series, instance)
        except PacsError as exc:
            raise RecordsError(f"{where}: cannot be retrieved ({' '.join(str(exc).split())[:300]})") from None
        xray = _decode(raw, name or str(instance), where)
        found_at, checked = name or str(instance), "pixel hash" if expected else "instance UID"
    else:
        raise RecordsError(f"{what}: unknown source kind {kind!r}")
    digest = pixel_sha256(xray.pixels)
    if expected and digest != expected:
        raise RecordsError(
            f"{where}: holds other pixels than the film read (pixel hash {digest[:12]}…, recorded {expected[:12]}…): "
            "replaced since it was read"
        )
    reading = Reading(
        Path(name).name if kind == FILE else (name or str(row.get("instance_uid"))),
        xray,
        float(row["probability"]),
        row.get("decision"),
        warnings=[str(w) for w in row.get("warnings") or []],
    )
    return Reopened(int(reading_id), row, reading, digest, found_at, checked)
