"""Reviewing a label audit (pneumo.evaluation.audit) on screen: which suspects are shown in which order, where
their scores came from, and what each film's verdict box starts at when several reviewers share a review file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from pneumo.evaluation.audit import VERDICTS

ORDERS = ("most suspicious first", "least suspicious first")
SHOWN = 24  # suspects on one screen
UNREVIEWED = VERDICTS[0]  # what a film without a saved verdict keeps ("keep")


def suspects_in_order(audited: pd.DataFrame, order: str = ORDERS[0], limit: int = SHOWN) -> pd.DataFrame:
    """The audit's suspects in the order asked for, at most `limit`. The score is cleanlab's label quality
    (self-confidence): the lower it is, the more the model doubts the given label, so the most suspicious come
    first in ascending order; ties keep the audit's order."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    suspects = audited[audited["suspect"]]
    return suspects.sort_values("score", ascending=order == ORDERS[0], kind="stable").head(limit)


def score_sources(audited: pd.DataFrame) -> tuple[int, int]:
    """How many films' scores are out of fold and how many come from the model itself."""
    counts = audited["source"].value_counts().to_dict() if "source" in audited else {}
    return int(counts.get("out of fold", 0)), int(counts.get("model", 0))


def verdict_shown(previous: str | None, current: str | None, saved: Mapping[str, Any], film: str) -> str | None:
    """What a film's verdict box is set to on this run, or None to leave it as the reviewer set it.

    The box follows the review file until this reviewer changes it: a box showing what the file said when last
    drawn (`previous`), or not drawn yet, takes the file's verdict now (another reviewer may have saved one since);
    a box the reviewer changed keeps the reviewer's choice. `current` is the box's value (None: no box yet)."""
    if previous is None or current is None or current == previous:
        return str(saved.get(film, UNREVIEWED))
    return None
