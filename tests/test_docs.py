"""The model tables in README.md and models/EXPERIMENTS.md are the ones card.json gives."""

from __future__ import annotations

import pytest

from pneumo.core.card import ModelCard
from pneumo.integrations import docs


@pytest.mark.parametrize("name", list(docs.BLOCKS))
def test_generated_block_equals_its_source(name: str) -> None:
    assert docs.current(name) is not None, f"{docs.BLOCKS[name][0]} has no '{name}' block"
    assert docs.current(name) == docs.expected(name), "run: python -m pneumo docs"


def test_model_table_quotes_the_card() -> None:
    card = ModelCard.read(docs.DEFAULT_MODEL_DIR / "card.json")
    table = docs.model_table(card)
    assert f"{card.threshold:.4f}" in table
    assert f"{card.validation['roc_auc']:.4f}" in table
