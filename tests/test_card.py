"""The model card's cautions: what every page, PDF and command that uses a model says first."""

from __future__ import annotations

from pneumo.core.card import MAX_AUC_INTERVAL, MIN_VALIDATION_FILMS, ModelCard


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
