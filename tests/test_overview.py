"""A collection's summary as the Dataset Explorer says it (pneumo.data.overview), on summaries small enough to count
by hand; and the grids' films decoded once (pneumo.app.ui.film_thumbnail)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo.data import overview
from pneumo.data.collection import Summary
from tests.conftest import synthetic_xray, write_png


def _summary(layout: str = "class folders", splits: tuple[str, ...] = ("train",), **extra: object) -> Summary:
    counts = pd.DataFrame({"NORMAL": [3] * len(splits), "PNEUMONIA": [9] * len(splits)}, index=list(splits))
    values: dict = dict(
        root="/data/x",
        layout=layout,
        n_images=12 * len(splits),
        counts=counts,
        imbalance_ratio=3.0,
        class_weights={0: 2.0, 1: 2 / 3},
        patients_per_class={"NORMAL": 3, "PNEUMONIA": 1234},
        images_per_patient=pd.Series(dtype=int),
        subtypes={},
        duplicate_groups=[],
        image_stats=pd.DataFrame(columns=["path", "class_name", "width", "height", "mean", "std", "hash"]),
    )
    values.update(extra)
    return Summary(**values)


def test_a_folder_without_splits_of_its_own_is_said_to_have_none() -> None:
    assert not overview.has_splits(_summary("class folders", ("train",)))
    assert not overview.has_splits(_summary("CSV manifest", ("train",)))
    assert overview.has_splits(_summary("CSV manifest", ("train", "test")))  # a manifest with a split column
    assert overview.has_splits(_summary("chest_xray splits", ("train",)))


def test_the_imbalance_and_the_weights_in_words() -> None:
    summary = _summary()
    assert overview.readable_count(summary) == 12
    assert overview.imbalance_words(summary) == "3.00 : 1"
    assert overview.normal_share(summary) == 3 / 12
    assert overview.weights_words(summary) == "NORMAL × 2.00, PNEUMONIA × 0.67"
    assert overview.patients_words(summary) == "NORMAL: 3, PNEUMONIA: 1,234"
    unread = _summary(n_readable=0, imbalance_ratio=math.inf)
    assert overview.readable_count(unread) == 0 and overview.imbalance_words(unread) == "—"
    empty = _summary(n_images=0, counts=pd.DataFrame(columns=["PNEUMONIA"]))
    assert overview.normal_share(empty) == 0.0


def test_image_sizes_are_charted_only_where_they_vary() -> None:
    same = pd.DataFrame({"width": [512, 512], "height": [400, 400]})
    assert overview.varying_sizes(same) == []
    assert overview.one_size_words(same) == "Every image is 512×400 px."
    taller = pd.DataFrame({"width": [512, 512], "height": [400, 480]})
    assert overview.varying_sizes(taller) == ["height"] and overview.one_size_words(taller) is None
    empty = pd.DataFrame(columns=["width", "height"])
    assert overview.varying_sizes(empty) == [] and overview.one_size_words(empty) is None


def test_more_duplicate_groups_than_shown_are_counted() -> None:
    assert overview.more_groups_words(12) is None
    assert overview.more_groups_words(15) == "… and 3 more groups."


def test_a_draw_of_the_sample_grid_is_the_same_films_each_time_and_another_draw_others() -> None:
    stats = pd.DataFrame(
        {
            "path": [f"n{i}.png" for i in range(20)] + ["p0.png", "p1.png"],
            "class_name": ["NORMAL"] * 20 + ["PNEUMONIA"] * 2,
        }
    )
    first = overview.sample_draw(stats, 0)
    assert list(first) == ["NORMAL", "PNEUMONIA"]
    assert len(first["NORMAL"]) == 8 and len(set(first["NORMAL"])) == 8
    assert set(first["NORMAL"]) <= {f"n{i}.png" for i in range(20)}
    assert sorted(first["PNEUMONIA"]) == ["p0.png", "p1.png"]  # fewer than 8: all of them
    assert overview.sample_draw(stats, 0) == first
    assert overview.sample_draw(stats, 1)["NORMAL"] != first["NORMAL"]
    assert list(overview.sample_draw(stats[stats.class_name == "NORMAL"], 0)) == ["NORMAL"]


def test_a_film_is_named_by_its_file_and_kept_small_for_the_screen(tmp_path: Path) -> None:
    assert overview.file_name("/data/x/NORMAL/a.jpeg") == "a.jpeg"
    assert overview.file_name("/data/pneumoniamnist.npz::test::4") == "pneumoniamnist.npz"
    film = write_png(tmp_path / "big.png", synthetic_xray(np.random.default_rng(0), size=900))
    small = overview.thumbnail(str(film), side=300)
    assert small.dtype == np.uint8 and max(small.shape) == 300
    assert overview.file_stamp(str(film))[1] == film.stat().st_size
    with pytest.raises(OSError):
        overview.file_stamp(str(tmp_path / "gone.png"))
