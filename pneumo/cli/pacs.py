"""The pacs commands: screen studies over DICOMweb once, or watch for new ones."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from pneumo.cli.common import _progress
from pneumo.core.text import terminal_safe
from pneumo.integrations.pacs import (
    Pacs,
    PacsConfig,
    PacsError,
    ScreenRun,
    describe,
    load_secrets_file,
    screen_studies,
    search_studies,
    watch,
)
from pneumo.model.loading import load_model

# --- argument types: a value no run could use is refused by the parser (exit 2), before any request -----------------


def positive_seconds(text: str) -> float:
    """A finite number of seconds above zero (--timeout, --interval): 0, a negative number, nan or inf would
    otherwise reach the server and be blamed on it, or fail only after the first poll."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {terminal_safe(text, 40)!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds above 0, got {terminal_safe(text, 40)!r}")
    return value


def positive_count(text: str) -> int:
    """A whole number of at least 1 (--limit): a limit of 0 would screen nothing and report success."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {terminal_safe(text, 40)!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _pacs_session(args: argparse.Namespace) -> tuple[Any, Any]:
    """The server (URL from --url or the deployment's configuration, credentials from the environment or
    .streamlit/secrets.toml) and the model in force."""
    config = PacsConfig.load(load_secrets_file(), url=args.url)
    if config is None:
        raise ValueError("no PACS: give --url DICOMWEB_URL or set PNEUMO_PACS_URL")
    if args.timeout is not None:
        config.timeout = args.timeout
    return Pacs.from_config(config), load_model(args.model)


def _error(text: str) -> None:
    print(f"error: {terminal_safe(text)}", file=sys.stderr, flush=True)


def _print_pacs_run(run: Any, as_json: bool, lines: bool = False) -> None:
    """The run's results on stdout (JSON, or a line per image), then one line per failure on stderr: the run's
    own error (which ended it) and each failed study's or image's, every outside text escaped for a terminal."""
    if as_json:
        entries = [r.to_json() for r in run.results]
        if lines:  # watch: one line per image as each poll ends
            for entry in entries:
                print(json.dumps(entry), flush=True)
        else:
            print(json.dumps(entries, indent=2), flush=True)
    else:
        for r in run.results:
            print(describe(r), flush=True)
    if run.drift_note:
        print(f"batch drift: {terminal_safe(run.drift_note)}", file=sys.stderr)
    if run.log_note:
        print(f"log: {terminal_safe(run.log_note)}", file=sys.stderr)
    if run.error and not lines:  # watch says it in its poll line
        left = f" ({len(run.studies_left)} studies not reached; run again to resume)" if run.studies_left else ""
        _error(f"{run.error}{left}")
    shown = {run.error}
    for r in run.results:
        if r.error and r.error not in shown:
            shown.add(r.error)
            _error(r.error)


def cmd_pacs_screen(args: argparse.Namespace) -> int:
    server, loaded = _pacs_session(args)
    uids = list(args.study or [])
    try:
        if not uids or args.since or args.until or args.accession:
            uids = [
                s.study_uid
                for s in search_studies(
                    server,
                    since=args.since,
                    until=args.until,
                    accession=args.accession,
                    study_uids=uids,
                    limit=args.limit,
                )
            ]
    except PacsError as exc:  # still one JSON array (empty), and the one line on stderr
        run = ScreenRun(error=str(exc))
    else:
        # A progress bar only on a terminal: piped stderr keeps to the error lines. Each study that fails is
        # recorded and the run goes on; what was screened is printed whatever happens to the others.
        run = screen_studies(
            server,
            loaded,
            uids,
            push=args.push,
            force=args.force,
            progress=_progress("pacs screen") if sys.stderr.isatty() else None,
            log=args.log,
        )
    _print_pacs_run(run, args.json)
    return 2 if run.failed else 0


def cmd_pacs_watch(args: argparse.Namespace) -> int:
    server, loaded = _pacs_session(args)
    failed = watch(
        server,
        loaded,
        interval=args.interval,
        max_polls=args.max_polls,
        since=args.since,
        push=args.push,
        on_poll=lambda run: _print_pacs_run(run, args.json, lines=True),
        # One line per poll on stderr, so a quiet loop is seen to be alive (and backing off when the server fails).
        progress=lambda line: print(terminal_safe(line), file=sys.stderr, flush=True),
    )
    return 2 if failed else 0
