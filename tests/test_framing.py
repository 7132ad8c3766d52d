"""The decision-level checks: the framing sweep, its figures at the threshold, its cautions, and where they show."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumo.core.card import ModelCard
from pneumo.evaluation import framing as F


def _films(n: int = 24, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half normals, half pneumonias; two films per child."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0.2, 0.8, (n, size, size)).astype(np.float32)
    labels = np.r_[np.zeros(n // 2, int), np.ones(n // 2, int)]
    groups = np.array([f"child-{i // 2}" for i in range(n)])
    return images, labels, groups


def test_zoomed_out_films_are_filled_with_their_own_edge_not_black() -> None:
    img = np.full((64, 64), 0.6, np.float32)
    out = F.Framing("zoom 0.7×", zoom=0.7).apply(img)
    assert out.shape == img.shape and out.min() > 0.59  # a black frame would be a second change at once
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    zoomed_in = F.Framing("zoom 1.6×", zoom=1.6).apply(ramp)
    assert zoomed_in[:, 0].mean() > 0.15 and zoomed_in[:, -1].mean() < 0.85  # the centre fills the film
    assert np.array_equal(F.Framing("as sent").apply(ramp), ramp)


def test_sweep_spans_zoom_in_and_out_shifts_and_aspect() -> None:
    zooms = [f.zoom for f in F.SWEEP if f.family == "zoom"]
    assert min(zooms) <= 0.7 and max(zooms) >= 1.6 and len(zooms) >= 8
    assert sum(z < 1 for z in zooms) >= 3 and sum(z > 1 for z in zooms) >= 3
    assert {f.family for f in F.SWEEP} == {"zoom", "shift", "aspect"}


def test_figures_at_the_threshold_count_each_class_and_bootstrap_children() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    probs = np.array([0.1, 0.2, 0.6, 0.3, 0.9, 0.4, 0.8, 0.7])
    groups = np.array(["a", "a", "b", "b", "c", "c", "d", "d"])
    fig = F.decision_figures(labels, probs, groups, threshold=0.5, rounds=100)
    assert fig["sensitivity"].value == 0.75 and fig["specificity"].value == 0.75
    assert fig["flagged_fraction"].value == 0.5
    for key in ("sensitivity", "specificity"):
        assert fig[key].low <= fig[key].value <= fig[key].high
    # Children, not films, are resampled: a bootstrap that drew films would reach 1.0 sensitivity far more rarely
    # than one that drops child c (one of its two films missed) a quarter of the time.
    assert fig["sensitivity"].high == 1.0


def test_out_of_fold_scorer_gives_each_film_its_own_member() -> None:
    def members(batch: np.ndarray) -> np.ndarray:
        return np.tile(np.array([[0.1, 0.5, 0.9]]), (len(batch), 1))

    score = F.oof_member(members, [2, 0, 1, 2])
    assert score(np.zeros((4, 8, 8))).tolist() == [0.9, 0.1, 0.5, 0.9]
    with pytest.raises(ValueError, match="3 members"):
        F.oof_member(members, [3])(np.zeros((1, 8, 8)))


def _framing_sensitive(batch: np.ndarray) -> np.ndarray:
    """A model that reads the frame: the more of the film its bright centre fills, the more it flags (zooming in
    fills more of it)."""
    return np.clip((batch.mean(axis=(1, 2)) - _AS_SENT) * 5 + 0.45, 0, 1)


def _bright_centre(n: int, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    disc = np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / (2 * 0.25**2))
    return np.repeat((0.2 + 0.5 * disc)[None], n, axis=0).astype(np.float32)


_AS_SENT = float(_bright_centre(1).mean())


def test_a_model_that_reads_the_frame_carries_a_caution_and_an_invariant_one_does_not() -> None:
    images = _bright_centre(24)
    labels = np.r_[np.zeros(12, int), np.ones(12, int)]
    groups = np.array([f"child-{i // 2}" for i in range(24)])
    conditions = F.sweep_conditions()

    framed = F.probabilities(lambda batch, rows: _framing_sensitive(batch), images, conditions)
    threshold = float(framed["zoom 1×"][0]) + 0.01  # as sent, every film sits just below the threshold
    block = F.summary(F.decision_report(labels, framed, groups, threshold, rounds=50), threshold, "synthetic")
    by_zoom = {r["zoom"]: r for r in block["conditions"] if r["family"] == "zoom"}
    assert by_zoom[1.0]["specificity"] == 1.0 and by_zoom[1.3]["specificity"] == 0.0
    assert by_zoom[1.3]["flagged_fraction"] == 1.0
    assert any("specificity" in c and "1.3×" in c for c in block["cautions"])
    assert block["worst_in_range"]["specificity"] == 0.0

    fixed = np.r_[np.full(12, 0.2), np.full(12, 0.8)]  # decides from the child, whatever the framing
    invariant = F.probabilities(lambda batch, rows: fixed[rows], images, conditions)
    steady = F.summary(F.decision_report(labels, invariant, groups, 0.5, rounds=50), 0.5, "synthetic")
    assert steady["cautions"] == [] and steady["worst_in_range"]["specificity_range"] == 0.0


@pytest.mark.parametrize(
    ("drop", "zoom", "cautioned"),
    [(0.06, 1.3, True), (0.04, 1.3, False), (0.2, 1.45, False), (0.06, 0.85, True), (0.3, 0.8, False)],
)
def test_caution_only_for_a_drop_beyond_the_tolerance_inside_the_watched_zooms(
    drop: float, zoom: float, cautioned: bool
) -> None:
    rows = [
        {"family": "zoom", "zoom": 1.0, "sensitivity": 0.97, "specificity": 0.95},
        {"family": "zoom", "zoom": zoom, "sensitivity": 0.97, "specificity": 0.95 - drop},
    ]
    assert bool(F.framing_cautions(rows, rows[0])) is cautioned


def test_card_shows_framing_cautions_and_refuses_a_malformed_block(tmp_path: Path) -> None:
    card = ModelCard.default("m")
    card.validation = {
        "n": 5000,
        "sensitivity": 0.97,
        "specificity": 0.95,
        "bootstrap_95": {"roc_auc": {"low": 0.99, "high": 0.995}},
    }
    card.shift_checks["framing"] = {
        "conditions": [],
        "stress": [],
        "cautions": ["framing: specificity 0.71 at zoom 1.3×"],
    }
    assert card.cautions() == ["framing: specificity 0.71 at zoom 1.3×"]
    path = tmp_path / "card.json"
    card.write(path)
    assert ModelCard.read(path).cautions() == card.cautions()
    raw = json.loads(path.read_text())
    raw["shift_checks"]["framing"]["cautions"] = [{"not": "text"}]
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="framing.cautions"):
        ModelCard.read(path)


def test_training_records_the_sweep_and_sweep_command_recomputes_it(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from pneumo.cli import main

    checks = json.loads((tiny_run / "checks.json").read_text())
    card = ModelCard.read(tiny_run / "card.json")
    framing = checks["framing"]
    assert card.shift_checks["framing"]["conditions"] == framing["conditions"]
    names = [r["condition"] for r in framing["conditions"]]
    assert names == [f.name for f in F.SWEEP]
    assert len(framing["stress"]) == 16 and all("specificity_95" in r for r in framing["stress"])

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["sweep", "--model", str(run / "model.keras"), "--limit", "60", "--record", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    recorded = ModelCard.read(run / "card.json").shift_checks["framing"]
    assert recorded["threshold"] == card.threshold and [r["condition"] for r in recorded["conditions"]] == names
    # The film as sent, at the card's threshold, from the run's own stored predictions (a second source).
    import pandas as pd

    stored = pd.read_csv(run / "val_predictions.csv")
    normals = stored.loc[stored["label"] == 0, "probability"]
    as_sent = next(r for r in out["conditions"] if r["condition"] == "zoom 1×")
    assert as_sent["n"] == len(stored)
    assert as_sent["specificity"] == pytest.approx(float((normals < card.threshold).mean()), abs=1e-9)
    assert main(["sweep", "--model", str(run / "model.keras"), "--limit", "10"]) == 2
    assert "at least 50" in capsys.readouterr().err


def test_sweep_at_recall_uses_the_threshold_keeping_that_sensitivity(
    tiny_run: Path, capsys: pytest.CaptureFixture
) -> None:
    import pandas as pd

    from pneumo.cli import main

    stored = pd.read_csv(tiny_run / "val_predictions.csv")
    positives = np.sort(stored.loc[stored["label"] == 1, "probability"].to_numpy())[::-1]
    want = positives[int(np.ceil(0.75 * len(positives))) - 1]  # the lowest positive score 75 % of them keep
    assert main(["sweep", "--model", str(tiny_run), "--limit", "60", "--at-recall", "0.75", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["threshold"] == pytest.approx(want)
    as_sent = next(r for r in out["conditions"] if r["condition"] == "zoom 1×")
    assert as_sent["sensitivity"] >= 0.75
    before = (tiny_run / "card.json").read_bytes()
    assert main(["sweep", "--model", str(tiny_run), "--at-recall", "0.75", "--record"]) == 2
    assert "cannot be recorded" in capsys.readouterr().err and (tiny_run / "card.json").read_bytes() == before
    assert main(["sweep", "--model", str(tiny_run), "--fold", "1", "--record"]) == 2
    assert "cannot be recorded" in capsys.readouterr().err and (tiny_run / "card.json").read_bytes() == before
    assert main(["sweep", "--model", str(tiny_run), "--fold", "1"]) == 2  # a single run has no folds
    assert "no fold column" in capsys.readouterr().err
