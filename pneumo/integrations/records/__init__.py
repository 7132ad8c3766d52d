"""The readings database: readings, readers' verdicts, the audit trail and the monitor.

Modules, bottom up: schema (the tables), db (the URL, opening and migrating: Alembic from code, alembic/ beside this
file), audit (the hash-chained events and the head file), readings (logging readings), verdicts (readers' verdicts),
monitor (the figures) and reopen (a logged reading's film found again from its source). SQLAlchemy is imported with
this package: the CLI imports it inside the commands that need it.
"""

from __future__ import annotations

from pneumo.integrations.records.audit import (
    EXPORT,
    KINDS,
    LOGIN,
    PACS_STORE,
    READING,
    SITE_POINT_APPLIED,
    THRESHOLD_SAVED,
    TRAINING_STARTED,
    TRAINING_STOPPED,
    VERDICT,
    Verification,
    iter_events,
    log_event,
    try_log_event,
    verify,
)
from pneumo.integrations.records.db import (
    ENV_DATABASE_URL,
    Records,
    RecordsError,
    close_all,
    database_url,
    head_revision,
    open_records,
    redacted,
)
from pneumo.integrations.records.monitor import Claim, MonitorReport, MonitorRow, compute, monitor_model
from pneumo.integrations.records.readings import (
    NewReading,
    ReadingSource,
    add_readings,
    current_user,
    log_pacs_run,
    log_readings,
    model_file_sha256,
    new_reading,
    pixel_sha256,
    read_before,
    reading_ids_by_instance,
    recent_readings,
)
from pneumo.integrations.records.reopen import Reopened, reopen
from pneumo.integrations.records.verdicts import ImportReport, add_verdict, import_verdicts, label_of, latest_verdict

__all__ = [
    "ENV_DATABASE_URL",
    "EXPORT",
    "KINDS",
    "LOGIN",
    "PACS_STORE",
    "READING",
    "SITE_POINT_APPLIED",
    "THRESHOLD_SAVED",
    "TRAINING_STARTED",
    "TRAINING_STOPPED",
    "VERDICT",
    "Claim",
    "ImportReport",
    "MonitorReport",
    "MonitorRow",
    "NewReading",
    "ReadingSource",
    "Records",
    "Reopened",
    "RecordsError",
    "Verification",
    "add_readings",
    "add_verdict",
    "close_all",
    "compute",
    "current_user",
    "database_url",
    "head_revision",
    "import_verdicts",
    "iter_events",
    "label_of",
    "latest_verdict",
    "log_event",
    "try_log_event",
    "log_pacs_run",
    "log_readings",
    "model_file_sha256",
    "monitor_model",
    "new_reading",
    "open_records",
    "pixel_sha256",
    "read_before",
    "reading_ids_by_instance",
    "recent_readings",
    "redacted",
    "reopen",
    "verify",
]
