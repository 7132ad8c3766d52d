"""Reviewing a label audit on screen (pneumo.evaluation.review): the suspects' order, where their scores came from,
and what a verdict box starts at when reviewers share a review file."""

from __future__ import annotations

import pandas as pd
import pytest

from pneumo.evaluation import review


def _audited() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": ["a", "b", "c", "d", "e", "f"],
            "score": [0.30, 0.02, 0.45, 0.02, 0.90, 0.11],
            "suspect": [True, True, True, True, False, True],
            "source": ["out of fold", "model", "out of fold", "out of fold", "model", "out of fold"],
        }
    )


def test_the_most_suspicious_come_first_the_lowest_self_confidence_first() -> None:
    assert review.suspects_in_order(_audited())["path"].tolist() == ["b", "d", "f", "a", "c"]  # e is no suspect
    # Least suspicious first; the tie (b and d, 0.02) keeps the audit's order.
    assert review.suspects_in_order(_audited(), "least suspicious first")["path"].tolist() == ["c", "a", "f", "b", "d"]
    assert review.suspects_in_order(_audited(), limit=2)["path"].tolist() == ["b", "d"]
    with pytest.raises(ValueError, match="order must be one of"):
        review.suspects_in_order(_audited(), "random")


def test_where_the_scores_came_from_is_counted() -> None:
    assert review.score_sources(_audited()) == (4, 2)
    assert review.score_sources(_audited()[_audited()["source"] == "model"]) == (0, 2)


def test_a_verdict_box_follows_the_file_until_the_reviewer_changes_it() -> None:
    saved = {"a": "relabel"}
    # Not drawn yet: the file's verdict, "keep" for a film without one.
    assert review.verdict_shown(None, None, saved, "a") == "relabel"
    assert review.verdict_shown(None, None, saved, "b") == "keep"
    # Still showing what the file said last time: another reviewer's newer verdict shows.
    assert review.verdict_shown("keep", "keep", saved, "a") == "relabel"
    # Changed by this reviewer: kept as they set it.
    assert review.verdict_shown("keep", "exclude", saved, "a") is None
