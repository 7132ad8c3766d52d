"""The model card's cautions: what every page, PDF and command that uses a model says first."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumo.core.card import (
    CARD_MAX_BYTES,
    MAX_AUC_INTERVAL,
    MIN_VALIDATION_FILMS,
    CardError,
    ModelCard,
    site_name_skeleton,
    update_card,
)


def _card(**validation: object) -> ModelCard:
    card = ModelCard.default("m")
    card.validation = dict(validation)
    return card


def test_few_films_a_wide_interval_or_poor_figures_each_carry_a_caution() -> None:
    """A 2-epoch model validated on 62 films with specificity 0 is named as such, reason by reason."""
    weak = _card(n=62, sensitivity=1.0, specificity=0.0, bootstrap_95={"roc_auc": {"low": 0.61, "high": 0.93}})
    cautions = weak.cautions()
    assert len(cautions) == 3, cautions
    assert f"only 62 films (fewer than {MIN_VALIDATION_FILMS})" in cautions[0]
    assert "0.610–0.930" in cautions[1]
    assert cautions[2].startswith("specificity 0.00")
    assert _card().cautions() == ["no validation recorded: nothing is known of its figures"]


def test_a_model_validated_on_enough_films_with_a_tight_interval_carries_none() -> None:
    tight = {"roc_auc": {"low": 0.99, "high": 0.99 + MAX_AUC_INTERVAL - 0.001}}
    assert _card(n=MIN_VALIDATION_FILMS, sensitivity=0.97, specificity=0.9, bootstrap_95=tight).cautions() == []
    # One film fewer, or the interval a little wider, and the caution is back.
    assert len(_card(n=MIN_VALIDATION_FILMS - 1, sensitivity=0.97, specificity=0.9, bootstrap_95=tight).cautions()) == 1
    wide = {"roc_auc": {"low": 0.9, "high": 0.9 + MAX_AUC_INTERVAL + 0.001}}
    assert len(_card(n=MIN_VALIDATION_FILMS, sensitivity=0.97, specificity=0.9, bootstrap_95=wide).cautions()) == 1


def test_an_update_reads_the_card_within_bounds_and_writes_nothing_it_refuses(tmp_path: Path) -> None:
    """update_card reads as the model's loader does: a runaway card is refused unread, nothing written."""
    card = tmp_path / "card.json"
    card.write_text('{"threshold": 0.5, "description": "' + "x" * (CARD_MAX_BYTES + 1) + '"}')
    before = card.stat().st_mtime_ns
    with pytest.raises(CardError, match="larger than a model card can be"):
        update_card(card, lambda c: setattr(c, "threshold", 0.4))
    assert card.stat().st_mtime_ns == before
    # A missing card: the default one is created, or, with create=False, refused.
    with pytest.raises(CardError, match="no card to record in"):
        update_card(tmp_path / "n" / "card.json", lambda c: None, create=False)
    made = update_card(tmp_path / "m" / "card.json", lambda c: setattr(c, "description", "made"))
    assert made.threshold == 0.5 and ModelCard.read(tmp_path / "m" / "card.json").description == "made"


def test_look_alike_names_share_one_skeleton() -> None:
    assert site_name_skeleton("sh\u0456pped") == site_name_skeleton("SHIPPED") == site_name_skeleton("sh1pped")
    assert site_name_skeleton("ward A") == site_name_skeleton("ward \u0410") == site_name_skeleton("Ward  a")
    assert site_name_skeleton("ward A") != site_name_skeleton("ward B")
