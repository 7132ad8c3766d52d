"""The readings database on PostgreSQL: the SQLite tests' checks (tests/test_records.py, tests/test_monitor.py) on a
server of the run's own (the `postgres` fixture: Debian's postgresql, psycopg 3), each test on a database of its own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from pneumo.cli import main
from pneumo.integrations import records as R
from pneumo.integrations.records.db import VERSIONS_DIR
from tests.conftest import ROOT
from tests.test_monitor import _card, _simulated_site
from tests.test_records import _entry, _legacy_reading, _trail
from tests.test_records import _fresh_engines as _fresh_engines  # autouse: no engine kept between tests

pytestmark = pytest.mark.timeout(120)


def _pg(url: str) -> Any:
    """A psycopg connection to the database behind a records URL (autocommit: one statement, one transaction)."""
    import psycopg

    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True)


def _rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with _pg(url) as connection:
        return connection.execute(sql, params or None).fetchall()


# ---------------------------------------------------------------------- the database and its migrations


def test_migrations_run_on_open_and_an_older_database_is_upgraded_keeping_its_rows(postgres, tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    shutil.copy(VERSIONS_DIR / "0001_initial.py", versions)  # the database as the first pneumo made it
    url = postgres()
    first = R.open_records(url, versions=[versions])
    assert first.dialect == "postgresql" and first.revision == "0001"
    reading_id = _legacy_reading(first, "film.png", 0.7, "a" * 64)
    triggers = _rows(url, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY tgname")
    assert [t for (t,) in triggers] == [
        f"{table}_{kind}" for table in ("events", "readings", "verdicts") for kind in ("append_only", "no_truncate")
    ]
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
    assert second.revision == "0099"
    assert _rows(url, "SELECT version_num FROM alembic_version") == [("0099",)]
    columns = _rows(url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'readings'")
    assert ("note",) in columns and ("model_sha256",) in columns
    assert _rows(url, "SELECT to_regclass('notes') IS NOT NULL") == [(True,)]
    assert _rows(url, "SELECT id, probability, pixel_sha256, model_sha256 FROM readings") == [
        (reading_id, 0.7, "a" * 64, None)
    ]
    assert len(_rows(url, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")) == 6  # the guards kept
    # The kept reading still matches its audit event, and the new revision's database takes readings.
    R.add_readings([_entry("later.png", 0.2, model_sha256="b" * 64)], records=second)
    assert _rows(url, "SELECT model_sha256 FROM readings ORDER BY id") == [(None,), ("b" * 64,)]
    assert R.verify(second).ok


def test_a_database_this_pneumo_does_not_know_is_refused_and_left_as_it_is(postgres) -> None:
    url = postgres()
    R.add_readings([_entry("film.png", 0.7)], url=url)
    R.close_all()
    with _pg(url) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'f00d'")  # a newer pneumo's revision
    with pytest.raises(R.RecordsError, match="f00d.*does not know"):
        R.open_records(url)
    assert _rows(url, "SELECT count(*) FROM readings") == [(1,)]
    foreign = postgres()
    with _pg(foreign) as connection:
        connection.execute("CREATE TABLE patients (name TEXT)")
    with pytest.raises(R.RecordsError, match="not pneumo's records.*patients"):
        R.open_records(foreign)
    assert _rows(foreign, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'") == [("patients",)]


FIRST_OPEN = """
import sys
from pneumo.integrations import records as R
print("ready", flush=True)
sys.stdin.readline()
print(R.open_records(sys.argv[1]).revision, flush=True)
"""


def test_first_opens_at_once_create_the_schema_once(postgres) -> None:
    """Processes starting together on an empty database (app workers, a CLI run) migrate it one at a time: the
    others wait and find it up to date, instead of failing on the tables created meanwhile."""
    url = postgres()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", FIRST_OPEN, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(3)
    ]
    try:
        for process in processes:  # every one imported and waiting, then all let go at once
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outcomes = [process.communicate(timeout=60) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    head = R.head_revision()
    assert [(p.returncode, out, err[-2000:]) for p, (out, err) in zip(processes, outcomes)] == [
        (0, f"{head}\n", "")
    ] * 3
    assert _rows(url, "SELECT version_num FROM alembic_version") == [(head,)]


def test_rows_are_append_only_in_the_database_itself(postgres) -> None:
    import psycopg

    url = postgres()
    [reading_id] = R.add_readings([_entry("film.png", 0.7)], url=url)
    R.add_verdict(reading_id, "NORMAL", user="dr a", url=url)
    with _pg(url) as connection:
        for statement in (
            "UPDATE readings SET probability = 0.1",
            "DELETE FROM readings",
            "UPDATE verdicts SET label = 'PNEUMONIA'",
            "DELETE FROM verdicts",
            "UPDATE events SET outcome = 'x'",
            "DELETE FROM events",
            "TRUNCATE events",
            "TRUNCATE verdicts",
            "TRUNCATE readings CASCADE",
        ):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                connection.execute(statement)
    assert _rows(
        url, "SELECT (SELECT count(*) FROM readings), (SELECT count(*) FROM verdicts), count(*) FROM events"
    ) == [(1, 1, 2)]


# ---------------------------------------------------------------------- the audit trail


def test_verify_names_an_event_edited_with_psycopg(postgres, capsys: pytest.CaptureFixture[str]) -> None:
    url = postgres()
    ids = _trail(url)
    assert main(["audit-log", "--json", "--database", url]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["id"] for e in events[2:]] == ids and events[3]["details"] == {"threshold": 0.31}
    assert all(e["time"].endswith("+00:00") for e in events)  # UTC, whatever the server's time zone
    since = datetime.fromisoformat(events[4]["time"]).astimezone(timezone(timedelta(hours=-5)))
    assert [e["id"] for e in R.iter_events(R.open_records(url), since=since)] == ids[2:]
    assert main(["audit-log", "--verify", "--database", url]) == 0
    assert "intact: 9 event(s)" in capsys.readouterr().out
    R.close_all()
    threshold_event = ids[1]
    with _pg(url) as connection:  # what the database's owner can do: drop the guard, then edit
        connection.execute("DROP TRIGGER events_append_only ON events")
        connection.execute("UPDATE events SET details = '{\"threshold\": 0.9}' WHERE id = %s", (threshold_event,))
    assert main(["audit-log", "--verify", "--database", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: audit trail of {url}: event {threshold_event} (threshold_saved")
    assert "does not match its hash" in err
    result = R.verify(R.open_records(url))
    assert result.first_bad_event == threshold_event and not result.ok
    # A reading edited (its probability lowered): its own event no longer matches it.
    other = postgres()
    [reading_id] = R.add_readings([_entry("a.png", 0.9)], url=other)
    R.close_all()
    with _pg(other) as connection:
        connection.execute("DROP TRIGGER readings_append_only ON readings")
        connection.execute("UPDATE readings SET probability = 0.1")
    problems = R.verify(R.open_records(other)).problems
    assert problems == [f"reading {reading_id}: differs from what event 1 recorded (edited)"]


def test_writers_at_once_never_fork_the_chain(postgres) -> None:
    url = postgres()
    R.open_records(url)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(8):
                if i % 4 == 3:  # a reading and its event in one transaction, between the other writers' events
                    R.add_readings([_entry(f"writer{n}-{i}.png", 0.5)], user=f"u{n}", url=url)
                else:
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
    # Linear: each event follows the one before it by id, and no two events follow the same one.
    chain = _rows(url, "SELECT prev_sha256, sha256 FROM events ORDER BY id")
    assert chain[0][0] == "0" * 64 and all(after[0] == before[1] for before, after in zip(chain, chain[1:]))


# ---------------------------------------------------------------------- the monitor


def test_monitor_on_postgresql_gives_the_sqlite_figures(
    postgres, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres()
    # The server's zone is ten hours behind UTC: the readings' (08:00 UTC) would fall on the day before there.
    assert _rows(url, "SHOW TimeZone") == [("Pacific/Honolulu",)]
    (tmp_path / "pg").mkdir()
    (tmp_path / "sqlite").mkdir()
    _simulated_site(url, tmp_path / "pg")
    sqlite_url = f"sqlite:///{tmp_path / 'sqlite' / 'site.db'}"
    _simulated_site(sqlite_url, tmp_path / "sqlite")
    model = _card(tmp_path / "model")
    assert main(["monitor", "--model", str(model), "--json", "--database", url]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["readings"] == 60 and report["verdicts"] == 45 and len(report["periods"]) == 3
    assert [(a["figure"], a["direction"]) for a in report["alerts"]] == [("specificity", "card claims more")]
    on_sqlite = R.monitor_model(model, url=sqlite_url).to_dict()
    assert R.monitor_model(model, url=url).to_dict() == on_sqlite
    weekly = R.monitor_model(model, by="week", url=url)
    assert [(p.start, p.readings) for p in weekly.periods] == [("2025-03-03", 60)]
    assert R.verify(R.open_records(url)).ok
