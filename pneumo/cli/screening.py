"""The screen command: every film of folders, files or manifests screened on Ray Data into Parquet parts."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pneumo.cli.common import _progress, add_operating_point_flag
from pneumo.cli.pacs import positive_count

# pneumo.integrations.archive (and through it Ray and PyArrow) is imported in the command: `python -m pneumo --help`
# and every other command start without them.


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `screen` on the command line's sub-parsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "screen",
        help="screen an archive (folders, files, CSV manifests) on Ray into Parquet; a rerun resumes",
        description="Read every film with the model, as predict does, on a pool of Ray actors; one Parquet row "
        "per file under --out. A second run with the same --out skips the files already screened there by "
        "the same model card and operating point, and screens again those that were unreadable then or whose "
        "size or modification time has changed since; a reader of --out takes each file's newest row.",
    )
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="a folder (every image file under it, sorted), an image file, or a CSV manifest with a 'path' column",
    )
    p.add_argument("--out", required=True, help="folder of Parquet parts (created; an earlier run's is resumed)")
    p.add_argument(
        "--address",
        help="an existing Ray cluster to run on (default: RAY_ADDRESS, else a local Ray on this machine's cores); "
        "its nodes must reach the films and the model at the same paths, and a cluster with token authentication "
        "(Ray's default) wants RAY_AUTH_MODE=token and its token here, as Ray documents",
    )
    p.add_argument(
        "--batch-size",
        dest="batch_size",
        type=positive_count,
        default=32,
        help="films per actor call and per Parquet part (default 32): what an interruption can lose per actor",
    )
    p.add_argument(
        "--actors",
        type=positive_count,
        help="model copies reading at once, one CPU each (default: every CPU of the Ray cluster)",
    )
    p.add_argument("--model", help="default: the shipped model")
    add_operating_point_flag(p)
    p.add_argument(
        "--drift",
        action="store_true",
        help="also test this run's films as one batch against the model's drift reference (one more pass per film)",
    )
    p.add_argument(
        "--log",
        action="store_true",
        help="also store one reading per screened film in the readings database (PNEUMO_DATABASE_URL), "
        "as predict --log does",
    )
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON")
    p.set_defaults(func=cmd_screen)
    return p


def cmd_screen(args: argparse.Namespace) -> int:
    from pneumo.integrations.archive import screen, summary_lines

    summary = screen(
        args.sources,
        args.out,
        model=args.model,
        operating_point=args.operating_point,
        address=args.address,
        batch_size=args.batch_size,
        actors=args.actors,
        drift=args.drift,
        log=args.log,
        # A bar only on a terminal: a log file or a pipe gets the summary alone.
        progress=_progress("screen") if sys.stderr.isatty() else None,
    )
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        for caution in summary.cautions:
            print(f"caution: this model {caution}", file=sys.stderr)
        for line in summary_lines(summary):
            print(line)
    if args.log:
        print(f"logged {summary.logged} reading(s) to {summary.log_url}", file=sys.stderr)
    # predict's rule: an input that could not be read makes the exit status 2 (its row says why).
    return 2 if summary.errors else 0
