"""Commands on the readings database: `verdicts import`, `audit-log`, `monitor`, and predict's `--log`.

Light at import (the CLI starts in under a second): SQLAlchemy and the records library are imported inside the
commands. The database is PNEUMO_DATABASE_URL, `[pneumo] database_url` in .streamlit/secrets.toml, or runs/pneumo.db
(see pneumo.integrations.records.db); --database overrides them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from pneumo.cli.common import add_operating_point_flag

DATABASE_HELP = "the records database's SQLAlchemy URL (default: PNEUMO_DATABASE_URL, secrets, runs/pneumo.db)"


def parse_day(text: str) -> date:
    """A --since value: YYYY-MM-DD or YYYYMMDD (argparse turns the ValueError into a usage error)."""
    for layout in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.strptime(text.strip(), layout).date()
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}")


def add_parsers(sub: Any) -> None:
    """The records commands, added to the CLI's subparsers (pneumo.cli.build_parser)."""
    p = sub.add_parser("verdicts", help="readers' verdicts on logged readings")
    verdicts_sub = p.add_subparsers(dest="verdicts_command", required=True)
    q = verdicts_sub.add_parser(
        "import", help="record a CSV of verdicts (path,label or sha256,label) against logged readings"
    )
    q.add_argument("file", help="CSV with a header: path,label or sha256,label (label PNEUMONIA/NORMAL or 1/0)")
    q.add_argument("--reader", help="the reader whose verdicts these are (default: PNEUMO_USER, else your login)")
    q.add_argument("--json", action="store_true")
    q.add_argument("--database", help=DATABASE_HELP)
    q.set_defaults(func=cmd_verdicts_import)

    p = sub.add_parser("audit-log", help="the append-only audit trail as JSON lines; --verify checks its hash chain")
    p.add_argument("--since", type=parse_day, help="events from this day on (YYYY-MM-DD, UTC)")
    p.add_argument("--json", action="store_true", help="JSON lines (one event per line)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check every event's hash and link, every reading and verdict against its event, and the end of the "
        "trail against its head file; exit 2 naming the first bad one. Prints the head (the newest event's id "
        "and hash): record it elsewhere and give it to --expect-head later",
    )
    p.add_argument(
        "--expect-head",
        dest="expect_head",
        metavar="SHA256",
        help="with --verify: a head recorded earlier; fail when no event of the trail carries it (events removed "
        "from the end are found this way even by someone who also rewrote the head file)",
    )
    p.add_argument("--database", help=DATABASE_HELP)
    p.set_defaults(func=cmd_audit_log)

    p = sub.add_parser(
        "monitor",
        help="the model in use: readings, share flagged, agreement by day; sensitivity and specificity against "
        "readers' verdicts with bounds; alerts; the site point the verdicts propose",
    )
    p.add_argument("--model", help="default: the shipped model (its file's SHA-256 selects the readings)")
    add_operating_point_flag(p)
    p.add_argument("--since", type=parse_day, help="readings from this day on (YYYY-MM-DD, UTC)")
    p.add_argument("--by", choices=("day", "week"), default="day", help="period of the table (default: day)")
    p.add_argument(
        "--target-recall",
        dest="target_recall",
        type=float,
        help="the proposed site point's target (default: the card's own target recall, else 0.95)",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--database", help=DATABASE_HELP)
    p.set_defaults(func=cmd_monitor)


# ---------------------------------------------------------------------- predict --log


def reading_entry(loaded: Any, reading: Any, path: str) -> Any:
    """One of predict's readings as a row to log (its pixel hash taken now, so the film need not be kept)."""
    from pneumo.integrations.records import ReadingSource, new_reading

    return new_reading(reading, loaded, ReadingSource.file(path))


def open_log() -> None:
    """Open (and migrate) the records database before predict reads anything: an unusable one is refused first."""
    from pneumo.integrations.records import open_records

    open_records()


def log_predictions(entries: Sequence[Any]) -> None:
    """Store predict's readings (the database from the environment or secrets), one line on stderr."""
    from pneumo.integrations.records import add_readings, open_records

    records = open_records()
    ids = add_readings(entries, records=records)
    span = f" (ids {ids[0]}–{ids[-1]})" if ids else ""
    print(f"logged {len(ids)} reading(s) to {records.url}{span}", file=sys.stderr)


# ---------------------------------------------------------------------- commands


def cmd_verdicts_import(args: argparse.Namespace) -> int:
    from pneumo.core.text import terminal_safe
    from pneumo.integrations.records import current_user, import_verdicts, open_records

    records = open_records(args.database)
    report = import_verdicts(args.file, reader=args.reader or current_user(), records=records)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(
            f"{report.rows} row(s): {report.matched} matched, {report.unmatched_count} unmatched, "
            f"{report.ambiguous_count} ambiguous (not applied), {report.invalid_count} invalid; {report.stored} "
            f"verdict(s) stored by {terminal_safe(report.reader)}, {report.unchanged} already recorded; "
            f"{report.readings} reading(s) covered"
        )
        listed = sorted(report.unmatched + report.ambiguous + report.invalid, key=lambda e: e["line"])
        for entry in listed:
            value = entry.get("path", entry.get("sha256", ""))
            print(f"  line {entry['line']}: {terminal_safe(value)}: {terminal_safe(entry['why'])}", file=sys.stderr)
        left = report.unmatched_count + report.ambiguous_count + report.invalid_count
        if len(listed) < left:
            print(f"  … and {left - len(listed)} more (--json)", file=sys.stderr)
    # As predict does for a rejected input: what could be stored is stored, and the status says not everything was.
    return 2 if report.unmatched_count or report.ambiguous_count or report.invalid_count else 0


def cmd_audit_log(args: argparse.Namespace) -> int:
    from datetime import time, timezone

    from pneumo.core.text import terminal_safe
    from pneumo.integrations.records import iter_events, open_records, verify

    expect = getattr(args, "expect_head", None)
    if expect is not None:
        if not args.verify:
            raise ValueError("--expect-head goes with --verify")
        if len(expect.strip()) != 64 or any(c not in "0123456789abcdef" for c in expect.strip().lower()):
            raise ValueError(f"--expect-head: a SHA-256 is 64 hexadecimal digits, not {expect[:80]!r}")
    records = open_records(args.database)
    if args.verify:
        result = verify(records, expect_head=expect)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
        if not result.ok:
            print(f"error: audit trail of {records.url}: {terminal_safe(result.problems[0])}", file=sys.stderr)
            for problem in result.problems[1:]:
                print(f"  also: {terminal_safe(problem)}", file=sys.stderr)
            return 2
        if not args.json:
            print(f"audit trail intact: {result.events} event(s), every reading and verdict matches its event")
            if result.head_event is not None:
                print(
                    f"head: event {result.head_event} sha256 {result.head_sha256} (record it; check it later with "
                    "--expect-head)"
                )
            if result.head_file is None:
                print(
                    "note: no head file for this database (set PNEUMO_AUDIT_HEAD): removing the newest events is found "
                    "only with --expect-head",
                    file=sys.stderr,
                )
            elif result.head_file_event is None and result.events:
                print(
                    f"note: no head file yet at {result.head_file}: it is written with the next event", file=sys.stderr
                )
        return 0
    since = datetime.combine(args.since, time(0), tzinfo=timezone.utc) if args.since else None
    for event in iter_events(records, since=since):
        if args.json:
            print(json.dumps(event, ensure_ascii=False))
        else:
            print(
                f"{event['id']:>6}  {event['time']}  {terminal_safe(event['user'])}  {event['kind']}  "
                f"{terminal_safe(event['object'])}  -> {terminal_safe(event['outcome'])}"
            )
    return 0


def _figure(value: float | None, low: float | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" (one-sided 95 % lower bound {low:.3f})" if low is not None else "")


def cmd_monitor(args: argparse.Namespace) -> int:
    from pneumo.integrations.records import monitor_model, open_records

    if args.target_recall is not None and not 0.0 < args.target_recall <= 1.0:
        raise ValueError(f"--target-recall must be in (0, 1], got {args.target_recall}")
    records = open_records(args.database)
    report = monitor_model(
        args.model,
        operating_point=args.operating_point,
        since=args.since,
        by=args.by,
        target_recall=args.target_recall,
        records=records,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(
        f"{report.model} at '{report.operating_point}' (threshold {report.threshold:.4f}): {report.readings} "
        f"reading(s), {report.verdicts} with a verdict, {report.films} film(s) counted"
    )
    if report.model_sha256:
        print(f"model file sha256 {report.model_sha256} (readings are selected by it)")
    print(f"{report.by:<10}  readings  flagged  not assessable  verdicts  agreement")
    for period in report.periods:

        def share(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.1%}"

        print(
            f"{period.start:<10}  {period.readings:>8}  {share(period.flagged):>7}  {share(period.not_assessable):>14}"
            f"  {period.verdicts:>8}  {share(period.agreement):>9}"
        )
    c = report.confusion
    print(f"sensitivity {_figure(report.sensitivity, report.sensitivity_lower_95)}  [{c['tp']} of {c['tp'] + c['fn']}]")
    print(f"specificity {_figure(report.specificity, report.specificity_lower_95)}  [{c['tn']} of {c['tn'] + c['fp']}]")
    print(
        f"card's claim ({report.claim.source}): sensitivity {_figure(report.claim.sensitivity)}, "
        f"specificity {_figure(report.claim.specificity)}"
    )
    for alert in report.alerts:
        print(f"ALERT {alert.message}")
    if report.proposed:
        proposed = report.proposed
        print(
            f"proposed site point from the verdicts: threshold {proposed['threshold']:.4f} for target recall "
            f"{proposed['target_recall']:g} (sensitivity lower bound {_figure(proposed['sensitivity_lower_95'])})"
        )
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def calibrate_from_verdicts(args: argparse.Namespace) -> int:
    """`calibrate --from-verdicts`: the site rule on the readers' verdicts in the records database, recorded in the
    card as calibrate records a point set on labelled films (and the saving written to the audit trail)."""
    from pneumo.evaluation.site import check_can_record, record
    from pneumo.integrations.records import THRESHOLD_SAVED, current_user, log_event, open_records
    from pneumo.integrations.records.monitor import verdict_calibration
    from pneumo.model.loading import model_file

    if args.data:
        raise ValueError("give --data or --from-verdicts, not both")
    path = model_file(args.model)
    check_can_record(path, args.name, bool(args.replace))  # before any work: a read-only card, a taken name
    records = open_records()
    result = verdict_calibration(path, args.name, args.target_recall, records=records)
    card = record(path, result, replace=bool(args.replace))
    log_event(
        THRESHOLD_SAVED,
        str(card),
        user=current_user(),
        details={"site_point": result.name, "threshold": result.threshold, "from": "verdicts", "n": result.n},
        records=records,
    )
    if args.json:
        print(json.dumps(result.summary(), indent=2))
    else:
        print(
            f"site '{result.name}': threshold {result.threshold:.4f} on {result.n} films with a reader's verdict "
            f"({result.n_positive} pneumonia, {result.n_negative} normal)"
        )
        print(f"  sensitivity {_figure(result.sensitivity, result.sensitivity_lower_95)}")
        print(f"  specificity {_figure(result.specificity, result.specificity_lower_95)}")
    if result.note:
        print(f"note: {result.note}", file=sys.stderr)
    print(f"recorded site operating point '{result.name}' in {card}", file=sys.stderr)
    return 0
