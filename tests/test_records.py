"""The readings database (pneumo.integrations.records): migrations, readings, verdicts and the audit trail."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from pneumo.cli import main
from pneumo.core.card import ModelCard
from pneumo.data.decode import load_xray
from pneumo.data.pixels import to_uint8
from pneumo.integrations import records as R
from pneumo.integrations.records.db import VERSIONS_DIR
from pneumo.model.loading import LoadedModel
from pneumo.model.reading import Reading, card_hash, compact, pack, unpack
from tests.conftest import make_folder, synthetic_xray, write_png


@pytest.fixture(autouse=True)
def _fresh_engines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Every test on its own database; no engine kept between tests; the default URL never the checkout's runs/."""
    monkeypatch.delenv(R.ENV_DATABASE_URL, raising=False)
    monkeypatch.setenv("PNEUMO_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("PNEUMO_USER", "tester")
    yield
    R.close_all()


def _url(tmp_path: Path, name: str = "records.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def _loaded(tmp_path: Path, threshold: float = 0.3) -> LoadedModel:
    card = ModelCard(name="test-model", architecture="none", threshold=threshold, threshold_rule="test")
    return LoadedModel(keras_model=None, card=card, path=tmp_path / "model.keras")


def _entry(name: str, probability: float | None, *, digest: str | None = None, **kw) -> R.NewReading:
    return R.NewReading(
        source=R.ReadingSource.file(name) if name.startswith("/") else R.ReadingSource.upload(name),
        model=kw.pop("model", "test-model"),
        card_hash="c" * 12,
        operating_point="shipped",
        threshold=kw.pop("threshold", 0.3),
        probability=probability,
        decision=kw.pop("decision", None if probability is None else "PNEUMONIA" if probability >= 0.3 else "NORMAL"),
        pixel_sha256=digest,
        **kw,
    )


def _sqlite(url: str) -> sqlite3.Connection:
    return sqlite3.connect(url.removeprefix("sqlite:///"))


# ---------------------------------------------------------------------- the database and its migrations


def test_database_url_explicit_then_environment_then_secrets_then_the_runs_folder(tmp_path: Path) -> None:
    env = {"PNEUMO_RUNS_DIR": str(tmp_path / "elsewhere")}
    secrets = {"pneumo": {"database_url": "postgresql+psycopg://u:pw@db/pneumo"}}
    assert R.database_url("sqlite:///given.db", secrets, {**env, R.ENV_DATABASE_URL: "sqlite:///env.db"}) == (
        "sqlite:///given.db"
    )
    assert R.database_url(None, secrets, {**env, R.ENV_DATABASE_URL: "sqlite:///env.db"}) == "sqlite:///env.db"
    assert R.database_url(None, secrets, env) == "postgresql+psycopg://u:pw@db/pneumo"
    assert R.database_url(None, {}, env) == f"sqlite:///{(tmp_path / 'elsewhere').resolve() / 'pneumo.db'}"
    # A password never reaches a message.
    assert "pw" not in R.redacted("postgresql+psycopg://u:pw@db/pneumo")


def _legacy_reading(records: R.Records, name: str, probability: float, digest: str, model: str = "test-model") -> int:
    """A reading as pneumo stored it at revision 0001 (no model_sha256 column), with its audit event: the columns of
    0001_initial.py, written through a table of their own (the ORM's table has the newer column)."""
    import sqlalchemy as sa

    from pneumo.integrations.records.schema import ReadingRow, UTCDateTime

    legacy = sa.Table(
        "readings",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("time", UTCDateTime),
        *(sa.Column(c, sa.Text) for c in ("user", "source_kind", "source_name", "pixel_sha256", "model", "card_hash")),
        sa.Column("operating_point", sa.Text),
        sa.Column("threshold", sa.Float),
        sa.Column("probability", sa.Float),
        sa.Column("decision", sa.Text),
        sa.Column("warnings", sa.JSON),
    )
    values = {
        "time": datetime(2024, 6, 1, 9, tzinfo=timezone.utc),
        "user": "old pneumo",
        "source_kind": "upload",
        "source_name": name,
        "pixel_sha256": digest,
        "model": model,
        "card_hash": "c" * 12,
        "operating_point": "shipped",
        "threshold": 0.3,
        "probability": probability,
        "decision": "PNEUMONIA" if probability >= 0.3 else "NORMAL",
        "warnings": [],
    }
    with records.writing() as session:
        reading_id = int(session.execute(legacy.insert().values(**values)).inserted_primary_key[0])
        row = ReadingRow(id=reading_id, study_uid=None, series_uid=None, instance_uid=None, error=None, drift=None)
        for key, value in values.items():
            setattr(row, key, value)
        # The hash revision 0001 gave a reading, by hand: these fields, no model_sha256 among them.
        payload = {
            "id": reading_id,
            "time": "2024-06-01T09:00:00.000000+00:00",
            **{k: v for k, v in values.items() if k != "time"},
            **dict.fromkeys(("study_uid", "series_uid", "instance_uid", "error", "drift")),
        }
        by_hand = hashlib.sha256(
            json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        ).hexdigest()
        assert R.audit.reading_sha256(row) == by_hand
        R.audit.append_event(
            session,
            R.READING,
            f"reading {reading_id}",
            values["decision"],
            user="old pneumo",
            details={"id": reading_id, "row_sha256": by_hand},
            time=values["time"],
        )
    return reading_id


def _model_file(folder: Path, content: bytes, name: str = "test-model") -> Path:
    """A model folder with a card and a model file of the given bytes (the monitor hashes it, never loads it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "card.json").write_text(json.dumps({"name": name, "architecture": "none", "threshold": 0.3}))
    (folder / "model.keras").write_bytes(content)
    return folder / "model.keras"


def test_migrations_run_on_open_and_an_older_database_is_upgraded_keeping_its_rows(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    shutil.copy(VERSIONS_DIR / "0001_initial.py", versions)  # the database as the first pneumo made it
    url = _url(tmp_path)
    first = R.open_records(url, versions=[versions])
    assert first.revision == "0001"
    with _sqlite(url) as db:
        assert "model_sha256" not in [row[1] for row in db.execute("PRAGMA table_info(readings)")]
    old_id = _legacy_reading(first, "film.png", 0.7, "a" * 64)
    R.close_all()
    # This pneumo's migrations (0002 adds readings.model_sha256), then one a later pneumo would ship after them.
    for migration in VERSIONS_DIR.glob("0*.py"):
        shutil.copy(migration, versions)
    (versions / "0099_note.py").write_text(
        '"""A note on readings."""\n'
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f'revision = "0099"\ndown_revision = "{R.head_revision()}"\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade() -> None:\n"
        '    op.add_column("readings", sa.Column("note", sa.Text))\n'
        '    op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True))\n'
    )
    second = R.open_records(url, versions=[versions])
    assert R.head_revision() == "0002" and second.revision == "0099"
    with _sqlite(url) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("0099",)]
        columns = [row[1] for row in db.execute("PRAGMA table_info(readings)")]
        assert "note" in columns and "model_sha256" in columns
        assert "ix_readings_model_sha256" in [r[1] for r in db.execute("PRAGMA index_list(readings)")]
        assert db.execute("SELECT id, probability, pixel_sha256, model_sha256 FROM readings").fetchall() == [
            (old_id, 0.7, "a" * 64, None)
        ]
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):  # the triggers survived the new column
            db.execute("UPDATE readings SET model_sha256 = 'x'")
    # The kept reading still matches its audit event; a new reading records the model file that read it.
    assert R.verify(second).ok
    model = _model_file(tmp_path / "m", b"network one")
    loaded = LoadedModel(
        keras_model=None, card=ModelCard(name="test-model", architecture="none", threshold=0.3), path=model
    )
    reading = Reading("new.png", None, 0.2, "NORMAL")
    [new_id] = R.add_readings(
        [R.new_reading(reading, loaded, R.ReadingSource.upload("new.png"), "b" * 64)], records=second
    )
    with _sqlite(url) as db:
        stored = db.execute("SELECT model_sha256 FROM readings WHERE id = ?", (new_id,)).fetchone()[0]
    assert stored == hashlib.sha256(b"network one").hexdigest()
    assert R.verify(second).ok
    # The monitor counts the old reading by the card's name (and says so) and the new one by the file's hash.
    report = R.monitor_model(model, records=second)
    assert report.readings == 2 and report.by_name_only == 1 and report.other_files == 0
    assert any("1 reading(s) were logged before" in note for note in report.notes)


def test_a_database_this_pneumo_does_not_know_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    url = _url(tmp_path)
    R.add_readings([_entry("film.png", 0.7)], url=url)
    R.close_all()
    with _sqlite(url) as db:
        db.execute("UPDATE alembic_version SET version_num = 'f00d'")  # a newer pneumo's revision
    with pytest.raises(R.RecordsError, match="f00d.*does not know"):
        R.open_records(url)
    with _sqlite(url) as db:
        assert db.execute("SELECT count(*) FROM readings").fetchone() == (1,)
    foreign = _url(tmp_path, "theirs.db")
    with _sqlite(foreign) as db:
        db.execute("CREATE TABLE patients (name TEXT)")
    with pytest.raises(R.RecordsError, match="not pneumo's records.*patients"):
        R.open_records(foreign)
    with _sqlite(foreign) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["patients"]


def test_rows_are_append_only_in_the_database_itself(tmp_path: Path) -> None:
    url = _url(tmp_path)
    [reading_id] = R.add_readings([_entry("film.png", 0.7)], url=url)
    R.add_verdict(reading_id, "NORMAL", user="dr a", url=url)
    with _sqlite(url) as db:
        for statement in (
            "UPDATE readings SET probability = 0.1",
            "DELETE FROM readings",
            "UPDATE verdicts SET label = 'PNEUMONIA'",
            "DELETE FROM verdicts",
            "UPDATE events SET outcome = 'x'",
            "DELETE FROM events",
        ):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                db.execute(statement)


# ---------------------------------------------------------------------- readings


def test_a_reading_row_holds_what_an_audit_needs_and_no_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    film = write_png(tmp_path / "big.png", np.kron(synthetic_xray(rng, 64, pneumonia=True), np.ones((20, 17))))
    xray = load_xray(film)
    assert max(xray.pixels.shape) > 1024  # larger than the app keeps: the hash must not depend on that
    loaded = _loaded(tmp_path)
    loaded.path.write_bytes(b"the network's bytes")
    reading = Reading(xray.name, xray, 0.8123, "PNEUMONIA", warnings=["looks inverted"])
    url = _url(tmp_path)
    drift = {"shifted": True, "p_value": np.float64(0.001), "n": np.int64(12)}
    [reading_id] = R.log_readings(
        [reading], loaded, sources=[R.ReadingSource.file(film)], drift=drift, user="dr b", url=url
    )
    with _sqlite(url) as db:
        db.row_factory = sqlite3.Row
        row = dict(db.execute("SELECT * FROM readings WHERE id = ?", (reading_id,)).fetchone())
    assert set(row) == {
        "id", "time", "user", "source_kind", "source_name", "study_uid", "series_uid", "instance_uid",
        "pixel_sha256", "model", "model_sha256", "card_hash", "operating_point", "threshold", "probability",
        "decision", "warnings", "error", "drift",
    }  # fmt: skip
    assert row["source_kind"] == "file" and row["source_name"] == str(film.resolve())
    assert row["model_sha256"] == hashlib.sha256(b"the network's bytes").hexdigest()
    assert (row["user"], row["model"], row["card_hash"]) == ("dr b", "test-model", card_hash(loaded))
    assert (row["operating_point"], row["threshold"], row["probability"]) == ("shipped", 0.3, 0.8123)
    assert row["decision"] == "PNEUMONIA" and json.loads(row["warnings"]) == ["looks inverted"]
    assert json.loads(row["drift"]) == {"shifted": True, "p_value": 0.001, "n": 12}
    assert all(len(str(v)) < 500 for v in row.values())  # no pixels hide in any column
    # The pixel hash, by hand: the film at 1024 px on its long side, 8-bit, with its shape.
    small = to_uint8(compact(reading).xray.pixels)
    assert row["pixel_sha256"] == hashlib.sha256(small.tobytes() + str(small.shape).encode()).hexdigest()
    # The app's cache keeps pack(compact(reading)); its hash is the same, so a verdict finds either reading.
    assert R.pixel_sha256(unpack(pack(compact(reading))).xray.pixels) == row["pixel_sha256"]


def test_a_rejected_input_is_logged_with_its_error_and_no_score(tmp_path: Path) -> None:
    url = _url(tmp_path)
    rejected = Reading("fake.png", None, None, None, "not an image")
    [reading_id] = R.log_readings([rejected], _loaded(tmp_path), url=url)
    with _sqlite(url) as db:
        assert db.execute("SELECT probability, decision, error, pixel_sha256 FROM readings").fetchone() == (
            None,
            None,
            "not an image",
            None,
        )
        assert db.execute("SELECT kind, object, outcome FROM events").fetchall() == [
            ("reading", f"reading {reading_id}", "rejected")
        ]


def test_bad_readings_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    url = _url(tmp_path)
    R.open_records(url)
    with pytest.raises(R.RecordsError, match="probability"):
        R.add_readings([_entry("a.png", 0.4), _entry("b.png", 1.5)], url=url)
    with pytest.raises(R.RecordsError, match="NaN|JSON"):
        R.add_readings([_entry("a.png", 0.4)], drift={"p": float("nan")}, url=url)
    with _sqlite(url) as db:
        assert db.execute("SELECT count(*) FROM readings").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM events").fetchone() == (0,)
    assert not (tmp_path / "records.db.audit-head.json").exists()  # no event, no head


def test_pacs_run_logs_the_films_it_read_with_their_uids(tmp_path: Path) -> None:
    from pneumo.integrations.pacs.results import ALREADY, SCREENED, SKIPPED, InstanceResult, ScreenRun

    rng = np.random.default_rng(2)
    xray = load_xray(write_png(tmp_path / "f.png", synthetic_xray(rng)))
    read_now = InstanceResult("1.2.3", "1.2.3.4", "1.2.3.4.5", "http://pacs/studies/1.2.3/…/5", SCREENED)
    read_now.reading, read_now.warnings = Reading("f", xray, 0.6, "PNEUMONIA"), ["an SR claimed this film"]
    earlier = InstanceResult("1.2.3", "1.2.3.4", "1.2.3.4.6", "p6", ALREADY, probability=0.2)
    skipped = InstanceResult("1.2.3", "1.2.3.9", "1.2.3.9.1", "p9", SKIPPED, skipped="lateral")
    run = ScreenRun(results=[read_now, earlier, skipped], drift={"shifted": False})
    url = _url(tmp_path)
    ids = R.log_pacs_run(run, _loaded(tmp_path), url=url)
    assert len(ids) == 1
    with _sqlite(url) as db:
        row = db.execute(
            "SELECT source_kind, study_uid, series_uid, instance_uid, pixel_sha256, warnings, drift FROM readings"
        ).fetchone()
    assert row[:4] == ("pacs", "1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert row[4] == R.pixel_sha256(xray.pixels)
    assert json.loads(row[5]) == ["an SR claimed this film"] and json.loads(row[6]) == {"shifted": False}
    loaded = _loaded(tmp_path)
    assert R.reading_ids_by_instance(
        ["1.2.3.4.5", "1.2.3.4.6"], model="test-model", card_hash=card_hash(loaded), url=url
    ) == {"1.2.3.4.5": ids[0]}


def test_a_film_read_whose_results_the_pacs_refused_is_logged_all_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Screening with push against a DICOMweb server started here: the store of one study's SR fails (HTTP 500), and
    for another the results cannot even be written. Both films were read: both are readings in the database, saying
    their results are not in the PACS, and each failed store is a PACS store event with outcome "failed"."""
    import re

    from pneumo.integrations.pacs import Pacs
    from pneumo.integrations.pacs.results import FAILED, SCREENED
    from pneumo.integrations.pacs.screening import screen_studies
    from pneumo.model.loading import load_model
    from tests.test_pacs_hostile import BAD, GOOD, OTHER, _running

    url = _url(tmp_path)
    monkeypatch.setenv(R.ENV_DATABASE_URL, url)  # where the screening logs its readings and store events
    monkeypatch.setenv("PNEUMO_PACS_SECRET", "records-test-secret")
    servers = _running()
    server = next(servers)
    try:
        for study in (GOOD, OTHER, BAD):
            server.pacs.add(study)
        server.on("POST", f"/studies/{re.escape(GOOD)}", lambda r: r.send(500, b"disk full", "text/plain"))
        loaded = load_model()
        run = screen_studies(Pacs(server.url), loaded, [GOOD, OTHER], push=True, log=True)
        import pneumo.integrations.pacs.screening as screening

        def cannot_write(*_: object) -> None:
            raise ValueError("the source header has no Rows")

        monkeypatch.setattr(screening, "_results_to_store", cannot_write)
        later = screen_studies(Pacs(server.url), loaded, [BAD], push=True, log=True)
    finally:
        servers.close()
    assert [r.status for r in run.results] == [FAILED, SCREENED] and run.log_note is None
    assert [r.status for r in later.results] == [FAILED] and later.log_note is None
    refused, stored, unwritten = run.results[0], run.results[1], later.results[0]
    assert refused.reading is not None and refused.prediction is not None  # read before the store failed
    with _sqlite(url) as db:
        rows = db.execute(
            "SELECT instance_uid, probability, decision, warnings, error FROM readings ORDER BY id"
        ).fetchall()
        events = db.execute("SELECT kind, outcome, details FROM events ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [f"{GOOD}.1.1", f"{OTHER}.1.1", f"{BAD}.1.1"]
    assert [(r[1], r[2]) for r in rows] == [
        (refused.probability, refused.prediction),
        (stored.probability, stored.prediction),
        (unwritten.probability, unwritten.prediction),
    ]
    assert all(r[4] is None for r in rows)  # a score and a decision: not an input that could not be read
    notes = [json.loads(r[3]) for r in rows]
    assert notes[0][-1].startswith("results not stored in the PACS: ") and "500" in notes[0][-1]
    assert not any("not stored" in n for n in notes[1])
    assert notes[2][-1].startswith("results not stored in the PACS: ") and "could not be written" in notes[2][-1]
    stores = [(outcome, json.loads(details)) for kind, outcome, details in events if kind == "pacs_store"]
    assert [(o, d["instance"]) for o, d in stores] == [
        ("failed", f"{GOOD}.1.1"),
        ("ok", f"{OTHER}.1.1"),
        ("failed", f"{BAD}.1.1"),
    ]
    assert "no Rows" in stores[2][1]["error"]
    assert [kind for kind, _, _ in events].count("reading") == 3
    assert R.verify(R.open_records(url)).ok


# ---------------------------------------------------------------------- verdicts


def test_verdicts_import_matches_by_path_or_pixel_hash_and_reports_the_rest(tmp_path: Path) -> None:
    url = _url(tmp_path)
    rng = np.random.default_rng(3)
    films = tmp_path / "films"
    paths = [write_png(films / f"f{i}.png", synthetic_xray(rng, pneumonia=i % 2 == 1)) for i in range(4)]
    hashes = [R.pixel_sha256(load_xray(p).pixels) for p in paths]
    ids = R.add_readings(
        [_entry(str(p.resolve()), 0.2 + 0.2 * i, digest=h) for i, (p, h) in enumerate(zip(paths, hashes))], url=url
    )
    # A second reading of film 0 (another day, another model): a verdict on the film applies to both.
    [again] = R.add_readings([_entry("upload-of-f0.png", 0.25, digest=hashes[0], model="other")], url=url)
    moved = shutil.copy(paths[3], tmp_path / "renamed.png")  # film 3 under a name no reading has
    table = tmp_path / "verdicts" / "by_path.csv"
    table.parent.mkdir()
    table.write_text(
        "path,label\n"
        "../films/f0.png,NORMAL\n"  # relative to the CSV's folder
        f"{paths[1]},pneumonia\n"  # absolute, label in any case
        f"{moved},1\n"  # found by decoding it: the pixel hash
        "../films/missing.png,NORMAL\n"  # no reading of it
        "../films/f2.png,maybe\n"  # not a label
    )
    report = R.import_verdicts(table, reader="dr c", url=url)
    assert (report.rows, report.matched, report.unmatched_count, report.invalid_count) == (5, 3, 1, 1)
    assert (report.stored, report.unchanged, report.readings) == (4, 0, 4)
    assert [e["line"] for e in report.unmatched] == [5] and [e["line"] for e in report.invalid] == [6]
    assert R.latest_verdict(ids[0], url=url)["label"] == "NORMAL"
    assert R.latest_verdict(again, url=url)["label"] == "NORMAL"
    assert R.latest_verdict(ids[1], url=url)["label"] == "PNEUMONIA"
    assert R.latest_verdict(ids[3], url=url)["label"] == "PNEUMONIA"
    assert R.latest_verdict(ids[2], url=url) is None
    # By pixel hash; the same verdict again is not stored twice, a changed one is added and becomes the newest.
    by_hash = tmp_path / "by_hash.csv"
    by_hash.write_text(f"sha256,label\n{hashes[1]},PNEUMONIA\n{hashes[2].upper()},NORMAL\n{'0' * 64},NORMAL\n")
    report = R.import_verdicts(by_hash, reader="dr c", url=url)
    assert (report.matched, report.stored, report.unchanged, report.unmatched_count) == (2, 1, 1, 1)
    by_hash.write_text(f"sha256,label\n{hashes[1]},NORMAL\n")
    assert R.import_verdicts(by_hash, reader="dr c", url=url).stored == 1
    newest = R.latest_verdict(ids[1], url=url)
    assert (newest["label"], newest["user"], newest["origin"]) == ("NORMAL", "dr c", "csv:by_hash.csv")
    assert R.verify(R.open_records(url)).ok


def test_verdicts_import_matches_pixels_then_the_exact_path_and_refuses_an_ambiguous_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _url(tmp_path)
    rng = np.random.default_rng(11)

    def film(path: Path) -> tuple[Path, str]:
        written = write_png(path, synthetic_xray(rng))
        return written.resolve(), R.pixel_sha256(load_xray(written).pixels)

    ward1, h1 = film(tmp_path / "ward1" / "a.png")
    ward2, h2 = film(tmp_path / "ward2" / "a.png")  # another film under the same bare name
    _, hb = film(tmp_path / "uploads" / "b.png")
    changed, hx = film(tmp_path / "ward3" / "e.png")
    gone = tmp_path / "gone"
    ids = R.add_readings(
        [
            _entry("a.png", 0.8, digest=h1),  # 1: ward 1's film, uploaded
            _entry("a.png", 0.2, digest=h2),  # 2: ward 2's film, uploaded under the same name
            _entry("b.png", 0.9, digest=hb),  # 3 and 4: one film uploaded twice
            _entry("b.png", 0.9, digest=hb),
            _entry(str(ward1), 0.8, digest=h1),  # 5: ward 1's film read from its file
            _entry(str(gone / "c.png"), 0.1, digest="c" * 64),  # 6: a file since deleted
            _entry(str(gone / "d.png"), 0.1, digest="d" * 64),  # 7 and 8: one path read with two contents
            _entry(str(gone / "d.png"), 0.7, digest="e" * 64),
            _entry(str(changed), 0.6, digest=hx),  # 9: a file overwritten since it was read
        ],
        url=url,
    )
    write_png(changed, synthetic_xray(rng, pneumonia=True))
    table = tmp_path / "verdicts" / "v.csv"
    table.parent.mkdir()
    table.write_text(
        "path,label\n"
        "a.png,NORMAL\n"  # line 2: uploads of two films: ambiguous
        "b.png,PNEUMONIA\n"  # line 3: two uploads of one film: both
        "../ward1/a.png,PNEUMONIA\n"  # line 4: the file decodes: by its pixels, the upload and the file reading
        f"{gone / 'c.png'},NORMAL\n"  # line 5: gone, found by its exact path
        f"{gone / 'd.png'},NORMAL\n"  # line 6: gone, its path read with two contents: ambiguous
        "../ward3/e.png,NORMAL\n"  # line 7: the file now holds a film no reading has
    )
    report = R.import_verdicts(table, reader="dr m", url=url)
    assert (report.rows, report.matched, report.ambiguous_count, report.unmatched_count) == (6, 3, 2, 1)
    assert (report.stored, report.readings) == (5, 5)
    assert [e["line"] for e in report.ambiguous] == [2, 6]
    assert "matches 2 readings of 2 different films" in report.ambiguous[0]["why"]
    assert "no logged reading has" in report.unmatched[0]["why"] and report.unmatched[0]["line"] == 7
    labels = {i: (R.latest_verdict(i, url=url) or {}).get("label") for i in ids}
    assert labels == {
        ids[0]: "PNEUMONIA",
        ids[1]: None,
        ids[2]: "PNEUMONIA",
        ids[3]: "PNEUMONIA",
        ids[4]: "PNEUMONIA",
        ids[5]: "NORMAL",
        ids[6]: None,
        ids[7]: None,
        ids[8]: None,
    }
    # The command says which rows were not applied, and why, and exits 2; nothing more is stored.
    assert main(["verdicts", "import", str(table), "--reader", "dr m", "--database", url]) == 2
    captured = capsys.readouterr()
    assert "3 matched, 1 unmatched, 2 ambiguous (not applied)" in captured.out and "0 verdict(s) stored" in captured.out
    assert "line 2: a.png: this name matches 2 readings of 2 different films" in captured.err
    assert "line 6:" in captured.err and "this path matches 2 readings" in captured.err


def test_verdicts_import_refuses_a_file_without_the_columns(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,diagnosis\na.png,NORMAL\n")
    with pytest.raises(R.RecordsError, match="path,label or sha256,label"):
        R.import_verdicts(bad, reader="dr d", url=_url(tmp_path))


def test_a_verdict_on_one_reading_is_saved_with_user_and_time(tmp_path: Path) -> None:
    url = _url(tmp_path)
    [reading_id] = R.add_readings([_entry("a.png", 0.9)], url=url)
    before = datetime.now(timezone.utc)
    R.add_verdict(reading_id, "normal", user="dr e", url=url)
    saved = R.latest_verdict(reading_id, url=url)
    assert (saved["label"], saved["user"], saved["origin"]) == ("NORMAL", "dr e", "app")
    assert datetime.fromisoformat(saved["time"]) >= before
    with pytest.raises(R.RecordsError, match="no reading 999"):
        R.add_verdict(999, "NORMAL", user="dr e", url=url)
    with pytest.raises(R.RecordsError, match="PNEUMONIA or NORMAL"):
        R.add_verdict(reading_id, "unsure", user="dr e", url=url)


def test_verdicts_import_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _url(tmp_path)
    R.add_readings([_entry("x.png", 0.9, digest="b" * 64)], url=url)
    table = tmp_path / "v.csv"
    table.write_text(f"sha256,label\n{'b' * 64},NORMAL\n")
    assert main(["verdicts", "import", str(table), "--reader", "dr f", "--json", "--database", url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["matched"], out["stored"], out["reader"]) == (1, 1, "dr f")
    table.write_text(f"sha256,label\n{'b' * 64},NORMAL\n{'e' * 64},NORMAL\n")
    assert main(["verdicts", "import", str(table), "--database", url]) == 2  # a row matched nothing
    captured = capsys.readouterr()
    assert "1 matched, 1 unmatched" in captured.out and "line 3" in captured.err


# ---------------------------------------------------------------------- the audit trail


def _trail(url: str) -> list[int]:
    """Events of several kinds, through the library's own calls."""
    [reading_id] = R.add_readings([_entry("a.png", 0.9)], url=url)
    R.add_verdict(reading_id, "PNEUMONIA", user="dr g", url=url)
    return [
        R.log_event(R.LOGIN, "session", user="dr g", url=url),
        R.log_event(R.THRESHOLD_SAVED, "models/card.json", details={"threshold": 0.31}, user="dr g", url=url),
        R.log_event(R.SITE_POINT_APPLIED, "ward A", user="dr g", url=url),
        R.log_event(R.TRAINING_STARTED, "runs/r1", user="dr g", url=url),
        R.log_event(R.TRAINING_STOPPED, "runs/r1", "stopped", user="dr g", url=url),
        R.log_event(R.EXPORT, "pneumo_report.pdf", user="dr g", url=url),
        R.log_event(R.PACS_STORE, "study 1.2.3", R.audit.FAILED, user="dr g", url=url),
    ]


def test_the_audit_trail_chains_every_event_and_exports_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _url(tmp_path)
    _trail(url)
    assert main(["audit-log", "--json", "--database", url]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["kind"] for e in events] == [
        "reading", "verdict", "login", "threshold_saved", "site_point_applied", "training_started",
        "training_stopped", "export", "pacs_store",
    ]  # fmt: skip
    assert events[0]["prev_sha256"] == "0" * 64
    for before, event in zip(events, events[1:]):
        assert event["prev_sha256"] == before["sha256"]
    assert events[-1]["outcome"] == "failed" and events[3]["details"] == {"threshold": 0.31}
    assert {e["user"] for e in events} == {"tester", "dr g"}  # the reading's user came from PNEUMO_USER
    assert main(["audit-log", "--verify", "--database", url]) == 0
    assert "intact: 9 event(s)" in capsys.readouterr().out
    with pytest.raises(R.RecordsError, match="unknown audit event kind"):
        R.log_event("coffee", "kitchen", user="dr g", url=url)


def test_audit_log_since_keeps_the_later_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _url(tmp_path)
    old = datetime(2024, 3, 1, 9, tzinfo=timezone.utc)
    R.add_readings([_entry("old.png", 0.2, time=old), _entry("new.png", 0.2, time=old + timedelta(days=2))], url=url)
    assert main(["audit-log", "--json", "--since", "2024-03-02", "--database", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["object"] for line in lines] == ["reading 2"]


def test_verify_names_an_event_edited_with_sqlite3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _url(tmp_path)
    ids = _trail(url)
    R.close_all()
    threshold_event = ids[1]
    with _sqlite(url) as db:  # what someone who owns the file can do: drop the guard, then edit
        db.execute("DROP TRIGGER events_no_update")
        db.execute("UPDATE events SET details = '{\"threshold\": 0.9}' WHERE id = ?", (threshold_event,))
    assert main(["audit-log", "--verify", "--database", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: audit trail of {url}: event {threshold_event} (threshold_saved")
    assert "does not match its hash" in err
    result = R.verify(R.open_records(url))
    assert result.first_bad_event == threshold_event and not result.ok


def test_verify_names_what_follows_a_removed_event_and_an_edited_reading(tmp_path: Path) -> None:
    url = _url(tmp_path)
    ids = _trail(url)
    R.close_all()
    with _sqlite(url) as db:
        db.execute("DROP TRIGGER events_no_delete")
        db.execute("DELETE FROM events WHERE id = ?", (ids[2],))
    result = R.verify(R.open_records(url))
    assert result.first_bad_event == ids[3]
    assert f"event {ids[3]}" in result.problems[0] and f"does not follow event {ids[1]}" in result.problems[0]
    # A reading edited (its probability lowered): its own event no longer matches it.
    other = _url(tmp_path, "other.db")
    [reading_id] = R.add_readings([_entry("a.png", 0.9)], url=other)
    R.close_all()
    with _sqlite(other) as db:
        db.execute("DROP TRIGGER readings_no_update")
        db.execute("UPDATE readings SET probability = 0.1")
    problems = R.verify(R.open_records(other)).problems
    assert problems == [f"reading {reading_id}: differs from what event 1 recorded (edited)"]


def _head(tmp_path: Path, name: str = "records.db") -> dict:
    return json.loads((tmp_path / f"{name}.audit-head.json").read_text())


def test_removing_the_newest_events_is_found_by_the_head_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _url(tmp_path)
    _trail(url)  # nine events
    events = list(R.iter_events(R.open_records(url)))
    assert _head(tmp_path) | {"written": None} == {"event_id": 9, "sha256": events[-1]["sha256"], "written": None}
    assert (tmp_path / "records.db.audit-head.json").stat().st_mode & 0o777 == 0o644  # readable by other accounts
    assert main(["audit-log", "--verify", "--database", url]) == 0
    assert f"head: event 9 sha256 {events[-1]['sha256']}" in capsys.readouterr().out
    R.close_all()
    with _sqlite(url) as db:  # the export and PACS store events removed: the chain alone is a shorter, intact one
        db.execute("DROP TRIGGER events_no_delete")
        db.execute("DELETE FROM events WHERE id >= 8")
    result = R.verify(R.open_records(url))
    assert result.head_event == 7 and result.head_file_event == 9
    assert result.problems == [
        f"the trail ends at event 7, but the head file {tmp_path / 'records.db.audit-head.json'} records event 9: the "
        "newest events were removed (truncated), or the database was replaced by an older or another one"
    ]
    assert main(["audit-log", "--verify", "--database", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: audit trail of {url}: the trail ends at event 7") and len(err.splitlines()) == 1
    # Events written afterwards do not move the head file past the evidence, even once their ids reach it.
    R.log_event(R.EXPORT, "later.pdf", user="dr g", url=url)
    R.log_event(R.EXPORT, "later2.pdf", user="dr g", url=url)
    assert _head(tmp_path)["event_id"] == 9 and _head(tmp_path)["sha256"] == events[-1]["sha256"]
    problems = R.verify(R.open_records(url)).problems
    assert len(problems) == 1 and problems[0].startswith("event 9 does not carry the hash the head file")


def test_a_recorded_head_finds_a_truncation_that_the_head_file_was_made_to_hide(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _url(tmp_path)
    _trail(url)
    assert main(["audit-log", "--verify", "--json", "--database", url]) == 0
    recorded = json.loads(capsys.readouterr().out)["head_sha256"]  # what an operator keeps in another system
    assert main(["audit-log", "--verify", "--expect-head", recorded.upper(), "--database", url]) == 0
    R.close_all()
    with _sqlite(url) as db:
        db.execute("DROP TRIGGER events_no_delete")
        db.execute("DELETE FROM events WHERE id = 9")
    (tmp_path / "records.db.audit-head.json").unlink()  # whoever owns both files removes the head file too
    # The limit, as documented: from the database alone the shorter chain is intact.
    assert main(["audit-log", "--verify", "--database", url]) == 0
    assert "no head file yet" in capsys.readouterr().err
    assert main(["audit-log", "--verify", "--expect-head", recorded, "--database", url]) == 2
    err = capsys.readouterr().err
    assert f"no event carries the expected head {recorded}" in err and "ends at event 8" in err
    # A malformed head is refused before the database is opened; so is a malformed head file.
    assert main(["audit-log", "--verify", "--expect-head", "abc", "--database", url]) == 2
    assert "--expect-head: a SHA-256 is 64 hexadecimal digits" in capsys.readouterr().err
    (tmp_path / "records.db.audit-head.json").write_text("{not json")
    assert main(["audit-log", "--verify", "--database", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "records.db.audit-head.json: not an audit head file" in err


def test_writers_at_once_never_fork_the_chain(tmp_path: Path) -> None:
    url = _url(tmp_path)
    R.open_records(url)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(8):
                R.log_event(R.EXPORT, f"writer {n} file {i}", user=f"u{n}", url=url)
        except BaseException as exc:  # collected: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    result = R.verify(R.open_records(url))
    assert result.ok and result.events == 32


# ---------------------------------------------------------------------- reopening a reading


class _StubPacs:
    """retrieve_instance of pneumo.integrations.pacs.Pacs: the instances it holds, by UIDs, else a 404 PacsError."""

    def __init__(self, instances: dict[tuple[str, str, str], bytes]):
        self.instances = instances

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        from pneumo.integrations.pacs.config import PacsError

        found = self.instances.get((study_uid, series_uid, sop_uid))
        if found is None:
            raise PacsError(f"PACS http://pacs: retrieving instance {sop_uid}: HTTP 404 (not found)")
        return found


def _dicom_film(pixels: np.ndarray, uids: tuple[str, str, str]) -> bytes:
    import io

    import pydicom

    from pneumo.integrations.pacs_server import film_dataset

    ds = film_dataset(
        (pixels * 255).astype(np.uint8),
        patient_id="P1",
        study_uid=uids[0],
        series_uid=uids[1],
        sop_uid=uids[2],
        study_date="20240101",
        accession="A1",
        series_number=1,
        modality="CR",
        view_position="PA",
        source_name="synthetic",
        series_description="CHEST PA",
    )
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def test_a_reading_is_reopened_from_its_file_or_its_pacs_instance_when_the_pixels_still_match(tmp_path: Path) -> None:
    url = _url(tmp_path)
    rng = np.random.default_rng(5)
    film = write_png(tmp_path / "films" / "f.png", synthetic_xray(rng, pneumonia=True))
    digest = R.pixel_sha256(load_xray(film).pixels)
    uids = ("1.2.3", "1.2.3.4", "1.2.3.4.5")
    pacs_pixels = synthetic_xray(rng)
    raw = _dicom_film(pacs_pixels, uids)
    pacs_digest = R.pixel_sha256(load_xray(raw).pixels)
    model = _model_file(tmp_path / "m", b"network")
    loaded = LoadedModel(
        keras_model=None, card=ModelCard(name="test-model", architecture="none", threshold=0.3), path=model
    )
    by_file = R.new_reading(
        Reading("f.png", None, 0.81, "PNEUMONIA", warnings=["looks rotated"]),
        loaded,
        R.ReadingSource.file(film),
        digest,
    )
    by_pacs = R.new_reading(
        Reading("x", None, 0.12, "NORMAL"),
        loaded,
        R.ReadingSource("pacs", "http://pacs/…/1.2.3.4.5", *uids),
        pacs_digest,
    )
    unhashed = R.new_reading(Reading("x", None, 0.4, "PNEUMONIA"), loaded, R.ReadingSource("pacs", "p", *uids), None)
    file_id, pacs_id, unhashed_id = R.add_readings([by_file, by_pacs, unhashed], url=url)
    [upload_id, rejected_id] = R.add_readings(
        [_entry("up.png", 0.5, digest="f" * 64), _entry("bad.png", None)], url=url
    )

    again = R.reopen(file_id, url=url)
    assert again.found_at == str(film.resolve()) and again.checked == "pixel hash" and again.pixel_sha256 == digest
    assert np.array_equal(again.reading.xray.pixels, load_xray(film).pixels)
    assert (again.reading.name, again.reading.probability, again.reading.decision) == ("f.png", 0.81, "PNEUMONIA")
    assert again.reading.warnings == ["looks rotated"] and again.row["threshold"] == 0.3
    assert again.same_model(loaded)
    other = LoadedModel(keras_model=None, card=loaded.card, path=_model_file(tmp_path / "m2", b"another network"))
    assert not again.same_model(other)  # the same card, another network: its maps are not this reading's
    stub = _StubPacs({uids: raw})
    from_pacs = R.reopen(pacs_id, pacs=stub, url=url)
    assert from_pacs.checked == "pixel hash" and from_pacs.reading.decision == "NORMAL"
    assert from_pacs.reading.xray is not None and from_pacs.reading.xray.format == "DICOM"
    assert R.reopen(unhashed_id, pacs=stub, url=url).checked == "instance UID"

    # Refusals: one line each, naming the reading and why.
    def refused(reading_id: int, pacs: object = None) -> str:
        with pytest.raises(R.RecordsError) as caught:
            R.reopen(reading_id, pacs=pacs, url=url)
        message = str(caught.value)
        assert "\n" not in message and message.startswith(f"reading {reading_id}:")
        return message

    assert "no such reading" in refused(999)
    assert "upload (up.png) whose pixels were not kept" in refused(upload_id)
    assert "could not be read when it was logged" in refused(rejected_id)
    assert "needs the PACS it came from" in refused(pacs_id)
    assert "cannot be retrieved (PACS http://pacs: retrieving instance 1.2.3.4.5: HTTP 404" in refused(
        pacs_id, _StubPacs({})
    )
    assert "holds other pixels" in refused(pacs_id, _StubPacs({uids: _dicom_film(synthetic_xray(rng), uids)}))
    write_png(film, synthetic_xray(rng))  # the file replaced under its name
    assert "holds other pixels than the film read" in refused(file_id)
    film.unlink()
    assert "the file is gone" in refused(file_id)
    film.write_bytes(b"not a film any more")
    assert "no longer decodes as a film" in refused(file_id)


# ---------------------------------------------------------------------- predict --log


def test_predict_log_stores_each_reading_and_verdicts_find_them(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _url(tmp_path)
    monkeypatch.setenv(R.ENV_DATABASE_URL, url)
    data = make_folder(tmp_path / "d", n_per_class=2, size=64)
    bad = tmp_path / "fake.png"
    bad.write_bytes(b"%PDF-1.4 a document")
    assert main(["predict", "--model", str(tiny_run / "model.keras"), "--json", "--log", str(data), str(bad)]) == 2
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert "logged 5 reading(s)" in captured.err
    with _sqlite(url) as db:
        rows = db.execute("SELECT source_name, probability, decision, error, user FROM readings ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [str(Path(p["path"]).resolve()) for p in printed]
    assert [r[1] for r in rows] == [p["probability"] for p in printed]
    assert [r[2] for r in rows] == [p["prediction"] for p in printed]
    assert rows[-1][3] is not None and {r[4] for r in rows} == {"tester"}
    # Readers' verdicts by path, relative to the CSV's folder, find the logged readings.
    table = data / "verdicts.csv"
    films = sorted(data.rglob("*.png"))
    table.write_text("path,label\n" + "".join(f"{f.relative_to(data)},{f.parent.name}\n" for f in films))
    assert R.import_verdicts(table, reader="dr h").matched == len(films) == 4
    assert main(["audit-log", "--verify"]) == 0


def test_predict_without_log_writes_no_database(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:
    url = _url(tmp_path)
    monkeypatch.setenv(R.ENV_DATABASE_URL, url)
    data = make_folder(tmp_path / "d", n_per_class=1, size=64)
    assert main(["predict", "--model", str(tiny_run / "model.keras"), "--json", str(data)]) == 0
    assert not (tmp_path / "records.db").exists()


def test_predict_log_refuses_an_unusable_database_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = tmp_path / "theirs.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE patients (name TEXT)")
    monkeypatch.setenv(R.ENV_DATABASE_URL, f"sqlite:///{foreign}")
    film = write_png(tmp_path / "f.png", synthetic_xray(np.random.default_rng(4)))
    assert main(["predict", "--json", "--log", str(film)]) == 2  # the shipped model
    captured = capsys.readouterr()
    # Refused before any film was read: nothing printed (predict prints its readings before it logs them).
    assert captured.out == ""
    assert captured.err.startswith("error: database sqlite:///") and "not pneumo's records" in captured.err
    assert len(captured.err.splitlines()) == 1


# ---------------------------------------------------------------------- the app's helpers (pneumo.app.verdicts)


def _verdict_page() -> None:
    import streamlit as st

    from pneumo.app.verdicts import verdict_buttons

    verdict_buttons(int(st.session_state["reading_id"]), st.session_state["decision"])


def _batch_page() -> None:
    from pathlib import Path

    import streamlit as st

    from pneumo.app.verdicts import log_batch_once
    from pneumo.core.card import ModelCard
    from pneumo.model.loading import LoadedModel
    from pneumo.model.reading import Reading

    card = ModelCard(name="app-model", architecture="none", threshold=0.4)
    loaded = LoadedModel(keras_model=None, card=card, path=Path("model.keras"))
    readings = [Reading("a.png", None, 0.7, "PNEUMONIA"), Reading("b.png", None, 0.1, "NORMAL")]
    st.session_state["ids"] = log_batch_once(readings, loaded, ["digest a", "digest b", "model key"])
    st.button("rerun")


def test_verdict_buttons_save_the_readers_verdict_with_user_and_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamlit.testing.v1 import AppTest

    url = _url(tmp_path)
    [reading_id] = R.add_readings([_entry("a.png", 0.9)], url=url)
    R.close_all()
    monkeypatch.setenv(R.ENV_DATABASE_URL, url)
    monkeypatch.setenv("PNEUMO_USER", "dr app")
    at = AppTest.from_function(_verdict_page, default_timeout=30)
    at.session_state["reading_id"], at.session_state["decision"] = reading_id, "PNEUMONIA"
    at.run()
    assert [b.label for b in at.button] == ["Agree — PNEUMONIA", "Disagree — NORMAL"]
    assert not at.caption  # no verdict yet
    at.button(key=f"verdict-{reading_id}-NORMAL").click().run()
    saved = R.latest_verdict(reading_id, url=url)
    assert (saved["label"], saved["user"], saved["origin"]) == ("NORMAL", "dr app", "app")
    assert "NORMAL (disagrees), by dr app" in at.caption[0].value
    at.button(key=f"verdict-{reading_id}-PNEUMONIA").click().run()
    assert R.latest_verdict(reading_id, url=url)["label"] == "PNEUMONIA"
    assert "(agrees)" in at.caption[0].value
    # An uncertain reading: the reader names the label.
    at.session_state["decision"] = "UNCERTAIN — review"
    at.run()
    assert [b.label for b in at.button] == ["Reader: PNEUMONIA", "Reader: NORMAL"]


def test_a_batch_is_logged_once_however_often_the_page_reruns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    url = _url(tmp_path)
    monkeypatch.setenv(R.ENV_DATABASE_URL, url)
    at = AppTest.from_function(_batch_page, default_timeout=30)
    at.run()
    ids = at.session_state["ids"]
    at.button[0].click().run()
    at.button[0].click().run()
    assert at.session_state["ids"] == ids == [1, 2]
    with _sqlite(url) as db:
        assert db.execute("SELECT source_kind, source_name, model, user FROM readings").fetchall() == [
            ("upload", "a.png", "app-model", "tester"),
            ("upload", "b.png", "app-model", "tester"),
        ]


def test_a_film_read_before_names_its_newest_earlier_reading_and_history_is_the_users_own(tmp_path: Path) -> None:
    """The same pixels read again say when they were read and with what result (the newest reading before this
    one, not this one, not a later one); each user's history lists their own readings, newest first."""
    url = _url(tmp_path)
    first = R.add_readings(
        [_entry("a.png", 0.2, digest="a" * 64), _entry("b.png", 0.9, digest="b" * 64)], url=url, user="ann"
    )
    again = R.add_readings([_entry("a-copy.png", 0.8, digest="a" * 64)], url=url, user="bob")
    later = R.add_readings([_entry("a-third.png", 0.6, digest="a" * 64)], url=url, user="bob")
    found = R.read_before(["a" * 64, "b" * 64, None], [again[0], first[1], again[0]], url=url)
    assert found[0] is not None and found[0]["id"] == first[0] and found[0]["source_name"] == "a.png"
    assert found[1] is None  # b's only reading is itself
    assert found[2] is None  # no hash: no history
    assert R.read_before(["a" * 64], [later[0]], url=url)[0]["id"] == again[0]  # the newest earlier one
    assert [r["source_name"] for r in R.recent_readings("bob", url=url)] == ["a-third.png", "a-copy.png"]
    assert [r["source_name"] for r in R.recent_readings("ann", 1, url=url)] == ["b.png"]


def test_a_failed_reading_of_a_path_neither_takes_a_verdict_nor_makes_it_ambiguous(tmp_path: Path) -> None:
    """A file unreadable at first, then fixed and read again (then moved): its path has a failed reading (no film)
    and a good one. The verdict goes to the good one; the failed one is no second film and takes none."""
    url = _url(tmp_path)
    path = str(tmp_path / "gone" / "x.png")
    ids = R.add_readings(
        [_entry(path, None, error="not an image"), _entry(path, 0.8, digest="f" * 64)],
        url=url,
    )
    table = tmp_path / "v.csv"
    table.write_text(f"path,label\n{path},PNEUMONIA\n")
    report = R.import_verdicts(table, reader="dr m", url=url, decode=False)
    assert (report.matched, report.ambiguous_count, report.unmatched_count, report.stored) == (1, 0, 0, 1)
    assert R.latest_verdict(ids[0], url=url) is None
    assert (R.latest_verdict(ids[1], url=url) or {}).get("label") == "PNEUMONIA"
