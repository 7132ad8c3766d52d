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


def test_migrations_run_on_open_and_an_older_database_is_upgraded_keeping_its_rows(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    for migration in VERSIONS_DIR.glob("0*.py"):
        shutil.copy(migration, versions)
    url = _url(tmp_path)
    first = R.open_records(url, versions=[versions])
    assert first.revision == R.head_revision() == "0001"
    [reading_id] = R.add_readings([_entry("film.png", 0.7, digest="a" * 64)], records=first)
    R.close_all()
    # A second revision, as a later pneumo would ship it: a new column and a new table.
    (versions / "0002_note.py").write_text(
        '"""A note on readings."""\n'
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        'revision = "0002"\ndown_revision = "0001"\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade() -> None:\n"
        '    op.add_column("readings", sa.Column("note", sa.Text))\n'
        '    op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True))\n'
    )
    second = R.open_records(url, versions=[versions])
    assert second.revision == "0002"
    with _sqlite(url) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("0002",)]
        columns = [row[1] for row in db.execute("PRAGMA table_info(readings)")]
        assert "note" in columns
        assert db.execute("SELECT id, probability, pixel_sha256 FROM readings").fetchall() == [
            (reading_id, 0.7, "a" * 64)
        ]
    # The kept reading still matches its audit event.
    assert R.verify(second).ok


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
        "pixel_sha256", "model", "card_hash", "operating_point", "threshold", "probability", "decision",
        "warnings", "error", "drift",
    }  # fmt: skip
    assert row["source_kind"] == "file" and row["source_name"] == str(film.resolve())
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
