"""Where the records database is, opening it, and bringing its schema up to date (Alembic, run from code).

The URL: the caller's, else PNEUMO_DATABASE_URL, else `database_url` in the `[pneumo]` section of
.streamlit/secrets.toml, else an SQLite file `pneumo.db` in the runs folder (PNEUMO_RUNS_DIR, default runs/).
Any SQLAlchemy URL works: `postgresql+psycopg://user:password@host/pneumo` moves the records to PostgreSQL by
configuration alone (with that driver installed: psycopg 3, `pip install 'pneumo[postgres]'`).

Every open runs the migrations first: a database made by an older pneumo is upgraded in place, its rows kept;
one made by a newer pneumo (a revision this one does not know), or a database holding tables that are not
pneumo's records, is refused and left as it is, never dropped or recreated.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session

from pneumo.core.paths import PROJECT_ROOT, RUNS_DIR

ENV_DATABASE_URL = "PNEUMO_DATABASE_URL"
ENV_RUNS_DIR = "PNEUMO_RUNS_DIR"  # the app's and the PACS seal key's runs folder (pneumo.app.settings)
DB_FILE = "pneumo.db"
ALEMBIC_DIR = Path(__file__).resolve().parent / "alembic"
VERSIONS_DIR = ALEMBIC_DIR / "versions"
OUR_TABLES = frozenset({"readings", "verdicts", "events", "alembic_version"})
SQLITE_BUSY_SECONDS = 30.0  # how long a writer waits for another's lock before the write fails
# The advisory lock PostgreSQL migrations take ("pneumo" + 1; the audit chain's is audit.PG_CHAIN_LOCK): processes
# opening one database at once migrate it one at a time, the later ones finding it up to date.
PG_MIGRATION_LOCK = 0x706E65756D70


class RecordsError(ValueError):
    """The records database cannot be used (unreachable, refused, not ours, newer than this pneumo), or a
    request to it is wrong: one line naming the database (never its password). A ValueError: the CLI prints it
    as one line and exits 2."""


def _secrets_file_url() -> str | None:
    """`[pneumo] database_url` of .streamlit/secrets.toml (the working directory's, else the project's), read
    here rather than through the app's or the PACS settings: this library must not import either (the app is a
    layer above, and pneumo.integrations.pacs imports this module's callers)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the environment or an explicit URL only
        return None
    for candidate in (Path(".streamlit") / "secrets.toml", PROJECT_ROOT / ".streamlit" / "secrets.toml"):
        if candidate.is_file():
            try:
                with open(candidate, "rb") as handle:
                    section = tomllib.load(handle).get("pneumo") or {}
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise RecordsError(f"{candidate}: cannot be read as TOML ({exc})") from None
            value = section.get("database_url") if isinstance(section, dict) else None
            return str(value) if value else None
    return None


def default_url(environ: Mapping[str, str] | None = None) -> str:
    """The SQLite file in the runs folder."""
    environ = os.environ if environ is None else environ
    runs = Path(environ.get(ENV_RUNS_DIR) or RUNS_DIR).expanduser()
    return f"sqlite:///{runs.resolve() / DB_FILE}"


def database_url(
    url: str | None = None, secrets: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """The records database's URL: url, else PNEUMO_DATABASE_URL, else secrets' `[pneumo] database_url` (the
    secrets file when no mapping is given), else the default SQLite file."""
    environ = os.environ if environ is None else environ
    if url:
        return str(url)
    if environ.get(ENV_DATABASE_URL):
        return str(environ[ENV_DATABASE_URL])
    if secrets is not None:
        section = secrets.get("pneumo") or {}
        found = section.get("database_url") if hasattr(section, "get") else None
    else:
        found = _secrets_file_url()
    return str(found) if found else default_url(environ)


def redacted(url: str) -> str:
    """The URL for messages: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<an unreadable database URL>"


def _sqlite_settings(engine: Engine) -> None:
    """SQLite as a shared store: foreign keys enforced, and transactions begun by SQLAlchemy (pysqlite's own
    implicit BEGIN is off), IMMEDIATE for writers: a writer takes the write lock before it reads the last audit
    event, so two processes appending at once queue instead of forking the chain (or failing on upgrade)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get("pneumo_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str) -> Engine:
    """An engine for the URL; an SQLite file's folder is created when missing."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise RecordsError(f"database URL {redacted(url)}: not a database URL ({exc})") from None
    try:
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:" and not database.startswith("file:"):
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_SECONDS})
            _sqlite_settings(engine)
            return engine
        return create_engine(parsed, pool_pre_ping=True)
    except (SQLAlchemyError, ImportError, OSError) as exc:  # ImportError: no driver for that backend installed
        raise RecordsError(f"database {redacted(url)}: cannot be opened ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(getattr(exc, "orig", None) or exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _alembic_config(connection: Any, versions: Sequence[Path] | None) -> Any:
    from alembic.config import Config

    config = Config()  # no alembic.ini: everything is set here
    config.set_main_option("script_location", str(ALEMBIC_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    locations = os.pathsep.join(str(Path(v).resolve()) for v in (versions or [VERSIONS_DIR]))
    config.set_main_option("version_locations", locations.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def head_revision(versions: Sequence[Path] | None = None) -> str:
    """The newest migration this pneumo has."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config(None, versions)).get_current_head()
    if head is None:
        raise RecordsError("the records migrations are missing (no revision found)")
    return head


def upgrade(engine: Engine, versions: Sequence[Path] | None = None) -> str:
    """Bring the database to the newest migration, in one transaction; its revision. versions: the migration
    folders (default: this package's), for a test that adds a revision of its own.

    The transaction holds the database's write lock (SQLite: BEGIN IMMEDIATE) or an advisory lock (PostgreSQL)
    from its start, before the revision is read: two processes opening an empty or older database at once do not
    both run the migrations (the second would fail on the tables the first created)."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    where = redacted(str(engine.url))
    try:
        with engine.connect().execution_options(pneumo_write=True) as connection, connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})
            tables = set(inspect(connection).get_table_names())
            current = MigrationContext.configure(connection).get_current_revision()
            if current is None and tables and not tables <= OUR_TABLES:
                strangers = ", ".join(sorted(tables - OUR_TABLES)[:5])
                raise RecordsError(
                    f"database {where}: holds tables that are not pneumo's records ({strangers}) and no "
                    "migration record; refused, nothing changed: give pneumo a database of its own"
                )
            config = _alembic_config(connection, versions)
            script = ScriptDirectory.from_config(config)
            if current is not None and not _known(script, current):
                raise RecordsError(
                    f"database {where}: at revision {current}, which this pneumo does not know (made by a newer "
                    "version?); refused, nothing changed: upgrade pneumo"
                )
            command.upgrade(config, "head")
            revision = MigrationContext.configure(connection).get_current_revision()
    except CommandError as exc:
        raise RecordsError(f"database {where}: the migrations failed ({_one_line(exc)})") from None
    except SQLAlchemyError as exc:
        raise RecordsError(f"database {where}: cannot be upgraded ({_one_line(exc)})") from None
    return str(revision)


def _known(script: Any, revision: str) -> bool:
    """Whether the migrations hold this revision (alembic raises, rather than answers, for an unknown one)."""
    from alembic.script.revision import RevisionError
    from alembic.util.exc import CommandError

    try:
        return script.get_revision(revision) is not None
    except (RevisionError, CommandError):
        return False


class Records:
    """An open, up-to-date records database: sessions for reading and for writing."""

    def __init__(self, engine: Engine, revision: str):
        self.engine = engine
        self.revision = revision
        self.url = redacted(str(engine.url))
        self._writer = engine.execution_options(pneumo_write=True)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only session; database failures become a RecordsError naming the database."""
        try:
            with Session(self.engine) as session:
                yield session
        except SQLAlchemyError as exc:
            raise RecordsError(f"database {self.url}: {_one_line(exc)}") from None

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """One write transaction (committed at the end, rolled back on any error), holding the SQLite write lock
        from its start."""
        try:
            with Session(self._writer, expire_on_commit=False) as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise RecordsError(f"database {self.url}: nothing written ({_one_line(exc)})") from None


_OPEN: dict[tuple[str, tuple[str, ...]], Records] = {}
_OPEN_LOCK = threading.Lock()


def open_records(url: str | None = None, *, versions: Sequence[Path] | None = None) -> Records:
    """The records database at url (database_url's choice when None), upgraded to the newest migration on its
    first open in this process (a later open of the same URL reuses the engine)."""
    chosen = database_url(url)
    key = (chosen, tuple(str(Path(v).resolve()) for v in versions or ()))
    with _OPEN_LOCK:
        found = _OPEN.get(key)
        if found is None:
            engine = make_engine(chosen)
            try:
                revision = upgrade(engine, versions)
            except BaseException:
                engine.dispose()
                raise
            found = _OPEN[key] = Records(engine, revision)
        return found


def close_all() -> None:
    """Dispose of every engine this process opened (tests, and a server shutting down)."""
    with _OPEN_LOCK:
        for records in _OPEN.values():
            records.engine.dispose()
        _OPEN.clear()
