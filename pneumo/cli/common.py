"""Pieces every command shares: progress bars on stderr, one decision line, the audit trail's events."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tqdm import tqdm


def _bar(total: int, desc: str, unit: str = "img") -> Any:
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)


def _progress(desc: str, unit: str = "img") -> Any:
    """A callback(done, total) drawing a tqdm bar on stderr, counting `unit`s (films unless said)."""
    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = _bar(total, desc, unit)
        bar = state["bar"]
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def _decision_line(row: dict[str, Any]) -> str:
    def fig(key: str) -> str:
        iv = row.get(f"{key}_95") or {}
        value = row.get(key)
        if value is None:
            return f"{key} n/a"
        span = f" [{iv['low']:.3f}–{iv['high']:.3f}]" if iv.get("low") is not None else ""
        return f"{key} {value:.3f}{span}"

    return f"{row['condition'][:28]:28s}  " + "  ".join(
        fig(k) for k in ("sensitivity", "specificity", "flagged_fraction", "roc_auc")
    )


def audit_event(kind: str, obj: str, outcome: str = "ok", details: dict[str, Any] | None = None) -> None:
    """Append one event (pneumo.integrations.records.audit) for a change this command made. A database that
    cannot be written costs the event, said on stderr, never the change the command has already made."""
    from pneumo.core.text import terminal_safe
    from pneumo.integrations.records import current_user, try_log_event

    problem = try_log_event(kind, obj, outcome, user=current_user(), details=details)
    if problem:
        print(f"warning: not written to the audit trail ({terminal_safe(problem)})", file=sys.stderr)


def add_operating_point_flag(parser: argparse.ArgumentParser) -> None:
    """--operating-point NAME, as every command that reads films at a card's point takes it."""
    parser.add_argument(
        "--operating-point",
        dest="operating_point",
        metavar="NAME",
        help="a site operating point recorded in the card (default: the card's own, 'shipped')",
    )
