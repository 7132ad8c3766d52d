"""The Overview's figures beyond the card's words (pneumo.evaluation.card_figures), counted by hand on tiny sets."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pneumo.evaluation import card_figures


def _preds() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": list("abcdef"),
            "label": [1, 1, 1, 1, 0, 0],
            "probability": [0.9, 0.2, 0.6, 0.3, 0.7, 0.1],
        }
    )


def test_the_audit_s_column_is_read_as_flags_or_not_at_all(tmp_path: Path) -> None:
    with_column = tmp_path / "oof.csv"
    with_column.write_text(
        "path,label,probability,label_suspect\na,1,0.9,True\nb,1,0.2,false\nc,0,0.1, TRUE \nd,1,0.5,\n"
    )
    assert card_figures.label_suspects(with_column) == [True, False, True, False]
    without = tmp_path / "val.csv"
    without.write_text("path,label,probability\na,1,0.9\n")
    assert card_figures.label_suspects(without) is None
    assert card_figures.label_suspects(tmp_path / "missing.csv") is None


def test_the_audit_s_flags_join_the_predictions_only_row_for_row() -> None:
    preds = _preds()
    joined = card_figures.with_suspects(preds, [False, True, False, True, False, False])
    assert joined["label_suspect"].tolist() == [False, True, False, True, False, False]
    assert "label_suspect" not in card_figures.with_suspects(preds, [True, False])  # another file's rows
    assert "label_suspect" not in card_figures.with_suspects(preds, None)


def test_the_sensitivity_on_the_pneumonias_the_audit_trusts() -> None:
    preds = card_figures.with_suspects(_preds(), [False, True, False, True, False, False])
    # Trusted pneumonias: a (0.9) and c (0.6); at 0.5 both are found, at 0.7 one of two.
    found = card_figures.trusted_sensitivity(preds, 0.5)
    assert (found.positives, found.trusted, found.sensitivity) == (4, 2, 1.0)
    assert card_figures.trusted_sensitivity(preds, 0.7).sensitivity == 0.5
    every_one_suspect = card_figures.with_suspects(_preds(), [True] * 4 + [False] * 2)
    assert card_figures.trusted_sensitivity(every_one_suspect, 0.5) == card_figures.TrustedSensitivity(4, 0, None)
    assert card_figures.trusted_sensitivity(_preds(), 0.5) is None  # no audit column
    normals = card_figures.with_suspects(_preds()[_preds()["label"] == 0], [False, False])
    assert card_figures.trusted_sensitivity(normals, 0.5) is None  # no pneumonia


def test_the_suspects_by_label_in_words() -> None:
    assert card_figures.by_label_in_words({"1": 1032, "0": 8}) == "8 labelled NORMAL and 1,032 labelled PNEUMONIA"
    assert card_figures.by_label_in_words({}) == "none"
    assert card_figures.by_label_in_words({"7": 2}) == "2 labelled 7"  # a label this version does not know
    assert card_figures.by_label_in_words({"-1": 2}) == "2 labelled -1"  # not the last name counted from the end
    assert card_figures.by_label_in_words({"x": 3}) == "3 labelled x"


def test_the_card_s_tables_keep_the_columns_they_have_in_order() -> None:
    frame = pd.DataFrame(columns=["roc_auc", "name", "extra", "n"])
    assert card_figures.shown_columns(frame, card_figures.EVALUATION_COLUMNS) == ["name", "n", "roc_auc"]
    assert card_figures.watched_zooms({}) == (0.85, 1.3)
    assert card_figures.watched_zooms({"worst_in_range": {"zooms": [0.9, 1.2]}}) == (0.9, 1.2)
    assert card_figures.watched_zooms({"worst_in_range": None}) == (0.85, 1.3)
