"""Tuning an operating point (pneumo.evaluation.tuning): the threshold's rule and the target box, the save
confirmations and the galleries of misread films, on sets small enough to count by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo.evaluation import tuning
from pneumo.evaluation.tuning import ThresholdChoice

# Three pneumonias (0.3, 0.7, 0.9) and two normals (0.1, 0.6).
Y = np.array([0, 0, 1, 1, 1])
P = np.array([0.1, 0.6, 0.3, 0.7, 0.9])


def test_the_card_s_threshold_holds_until_a_rule_moves_it() -> None:
    card = ThresholdChoice.from_card(0.438099)
    assert (card.threshold, card.rule, card.target) == (0.438099, None, None)  # never snapped to the slider's steps
    assert card.set_by("sensitivity >= 0.97") == "the card's own rule (sensitivity >= 0.97)"
    # Saved untouched, the card's own words stay: they were not derived on this set.
    assert card.saved_rule("sensitivity >= 0.97", "the set", 5) == "sensitivity >= 0.97"


def test_a_target_sets_the_threshold_and_the_box_shows_it_only_while_it_is_the_rule() -> None:
    # Recall 0.6 of three pneumonias needs two: the second-highest pneumonia score, 0.7.
    target = ThresholdChoice.from_card(0.5).by_target(0.6, Y, P)
    assert (target.threshold, target.rule, target.target) == (0.7, "target recall 0.600", 0.6)
    # An emptied box leaves the threshold and its rule as they were.
    emptied = target.by_target(None, Y, P)
    assert (emptied.threshold, emptied.rule, emptied.target) == (0.7, "target recall 0.600", None)
    # Youden J: tpr - fpr is 2/3 at 0.7 (2 of 3 pneumonias, no normal), less at every other score.
    youden = target.by_rule("Youden J", Y, P)
    assert (youden.threshold, youden.rule, youden.target) == (0.7, "Youden J", None)
    # Max F1: at 0.3 precision 3/4 and recall 1 give F1 6/7, above 0.8 at 0.7.
    best_f1 = youden.by_rule("max F1", Y, P)
    assert (best_f1.threshold, best_f1.rule, best_f1.target) == (0.3, "max F1", None)
    hand = target.by_hand(0.42)
    assert (hand.threshold, hand.rule, hand.target) == (0.42, "set by hand on the Threshold page", None)
    assert hand.set_by("card words") == "set by hand on the Threshold page"
    assert hand.saved_rule("card words", "the data folder x (5 films)", 5) == (
        "set by hand on the Threshold page (on the data folder x (5 films), n=5)"
    )


def test_save_needs_every_confirmation_asked_for_and_the_role_s_permission_first() -> None:
    assert tuning.save_refusal(None) is None
    assert tuning.save_refusal(None, True, True) is None
    assert tuning.save_refusal(None, True, False) == "Tick the confirmation first."
    assert tuning.save_refusal("Changes are switched off here.", True, True) == "Changes are switched off here."
    assert tuning.save_refusal("Changes are switched off here.", False) == "Changes are switched off here."


def test_an_overlap_counts_only_when_some_of_the_model_s_films_are_in_the_set() -> None:
    assert not tuning.overlaps(None) and not tuning.overlaps({}) and not tuning.overlaps({"fraction": 0})
    leak = {"n": 10, "train": 2, "validation": 1, "fraction": 0.3}
    assert tuning.overlaps(leak)
    assert tuning.overlap_record(leak) == {"overlap_confirmed": leak}
    assert tuning.overlap_record({"fraction": 0.0}) == {} and tuning.overlap_record(None) == {}


def test_the_shipped_model_is_the_one_in_the_models_folder(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    assert tuning.is_shipped(models / "model.keras", models)
    assert tuning.is_shipped(tmp_path / "models" / ".." / "models" / "model.keras", models)
    assert not tuning.is_shipped(tmp_path / "runs" / "run-a" / "model.keras", models)


def test_a_site_name_is_taken_as_the_card_would_store_it() -> None:
    points = [{"name": "ward 3"}, {"name": "clinic-B"}]
    assert tuning.site_name_taken("ward 3", points)
    assert tuning.site_name_taken("  ward   3 ", points)  # spaces collapsed as the card stores names
    assert not tuning.site_name_taken("ward 4", points)
    assert not tuning.site_name_taken("ward <3>", points)  # a name the card refuses: compared as given


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": ["a.png", "b.png", "c.png", "d.png", "e.png", "f.png", "g.png", "h.png"],
            "label": [1, 1, 1, 0, 0, 0, 1, 0],
            "probability": [0.2, 0.45, 0.9, 0.55, 0.8, 0.1, np.nan, 0.5],
        }
    )


def test_the_galleries_hold_the_misread_films_closest_to_the_threshold_first() -> None:
    missed, flagged = tuning.error_galleries(_frame(), 0.5)
    assert (missed.title, missed.count) == ("False negatives (missed pneumonia)", 2)
    assert missed.rows["path"].tolist() == ["b.png", "a.png"]  # 0.45 before 0.2; the unscored g.png left out
    assert (flagged.title, flagged.count) == ("False positives (normal flagged)", 3)
    assert flagged.rows["path"].tolist() == ["h.png", "d.png", "e.png"]  # 0.5 (at the threshold) first
    assert [g.count for g in tuning.error_galleries(_frame(), 0.0)] == [0, 4]
    assert [g.count for g in tuning.error_galleries(_frame(), 1.0)] == [3, 0]


def test_a_gallery_shows_only_films_on_this_machine_and_at_most_its_size() -> None:
    _, flagged = tuning.error_galleries(_frame(), 0.5)
    here = {"h.png", "e.png"}
    assert [r.path for r in flagged.on_disk(exists=lambda p: p.name in here)] == ["h.png", "e.png"]
    assert [r.path for r in flagged.on_disk(limit=1, exists=lambda p: True)] == ["h.png"]
    assert flagged.on_disk(exists=lambda p: False) == []
    # An image inside an .npz archive is on this machine when its archive is.
    frame = pd.DataFrame({"path": ["set.npz::test::4"], "label": [0], "probability": [0.9]})
    _, inside = tuning.error_galleries(frame, 0.5)
    assert [r.path for r in inside.on_disk(exists=lambda p: p == Path("set.npz"))] == ["set.npz::test::4"]


@pytest.mark.parametrize("name", ["max F1", "Youden J"])
def test_a_rule_always_empties_the_target_box(name: str) -> None:
    assert ThresholdChoice(0.5, "target recall 0.980", 0.98).by_rule(name, Y, P).target is None
