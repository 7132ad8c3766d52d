"""A card says when its map peaks outside the lungs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from pneumo.app import cards
from tests.conftest import synthetic_xray


def test_a_map_peaking_outside_the_lungs_gets_a_note_and_one_inside_does_not() -> None:
    film = synthetic_xray(np.random.default_rng(5), 128)
    on_lung = np.zeros((14, 14), np.float32)
    on_lung[7, 4] = 1.0  # the left lung synthetic_xray draws (x 0.3, y 0.5)
    on_neck = np.zeros((14, 14), np.float32)
    on_neck[0, 7] = 1.0  # top centre: the neck and the film's edge
    loaded = SimpleNamespace(threshold=0.5)
    flagged, cleared = SimpleNamespace(probability=0.9), SimpleNamespace(probability=0.1)
    assert cards.map_peak_note(loaded, "film-a", "model", flagged, film, on_lung) is None
    assert cards.map_peak_note(loaded, "film-b", "model", flagged, film, on_neck) == cards.PEAK_OUTSIDE_NOTE
    # The note belongs to the map of the class decided: another operating point that flips the decision asks again.
    assert cards.map_peak_note(loaded, "film-b", "model", cleared, film, on_lung) is None
