"""Building a model's drift reference from its held-out films: the feature mean and precision, the reference
distributions per predicted class, and the false-alarm rate measured over patient splits; recorded beside the
model and in its card.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.core.card import ModelCard, update_card
from pneumo.core.files import check_writable, now_iso
from pneumo.evaluation.drift import (
    CALIBRATION_N,
    FRACTIONS,
    MIN_BATCH,
    MIN_REFERENCE_FILMS,
    MIN_STRATUM,
    SCORE_TOLERANCE,
    SPLITS,
    DriftUnavailable,
    Reference,
    _read,
    model_sha,
    reference_path,
    scores,
    view,
)
from pneumo.model import input_check as quality
from pneumo.model.loading import card_path, load_model

# A callback(done, total), as drift.Progress, but done may be fractional: the stress conditions of step 3 count
# as parts of it.
Progress = Callable[[float, int], None]

# ---------------------------------------------------------------------- building the reference


def _group_split(groups: np.ndarray, seed: int, fractions: tuple[float, float, float] = FRACTIONS) -> np.ndarray:
    """0/1/2 (fit, reference, calibration) per film, every patient on one side."""
    unique = np.unique(groups)
    np.random.default_rng(seed).shuffle(unique)
    cuts = np.cumsum(fractions)[:2] * len(unique)
    rank = {g: i for i, g in enumerate(unique)}
    position = np.array([rank[g] for g in groups])
    return (position >= cuts[0]).astype(int) + (position >= cuts[1]).astype(int)


def _alarm_rate(
    reference: Reference, distances: np.ndarray, probabilities: np.ndarray, n: int, draws: int, rng: np.random.Generator
) -> dict[str, Any]:
    n = min(n, len(distances))
    if n < MIN_BATCH:
        return {"n": n, "draws": 0, "rate": None, "note": f"fewer than {MIN_BATCH} films"}
    hits = 0
    try:
        for _ in range(draws):
            pick = rng.choice(len(distances), size=n, replace=False)
            hits += reference.compare(distances[pick], probabilities[pick]).shifted
    except DriftUnavailable as exc:  # e.g. one patient split whose reference has too few films of a class
        return {"n": n, "draws": 0, "rate": None, "note": str(exc)}
    return {"n": int(n), "draws": int(draws), "rate": hits / draws}


def _pooled(per_split: list[dict[str, Any]]) -> dict[str, Any]:
    """Alarm rates of several patient splits as one figure: pooled over all draws, the spread over splits,
    and the shipped (first) split's own rate."""
    done = [r for r in per_split if r["rate"] is not None]
    if not done:
        return per_split[0]
    draws = sum(r["draws"] for r in done)
    rates = [r["rate"] for r in done]
    return {
        "n": done[0]["n"],
        "draws": int(draws),
        "rate": float(sum(r["rate"] * r["draws"] for r in done) / draws),
        "splits": len(done),
        "split_range": [float(min(rates)), float(max(rates))],
        "split_p10_p90": [float(np.percentile(rates, 10)), float(np.percentile(rates, 90))],
        "shipped_split_rate": float(per_split[0]["rate"]) if per_split[0]["rate"] is not None else None,
        "rate_is": (
            f"pooled over {len(done)} patient splits of the held-out films: what a reference built this "
            "way can be expected to do; shipped_split_rate is the saved reference's own, measured on "
            "its calibration films only"
        ),
    }


def fit_reference(
    loaded: Any,
    paths: Sequence[str],
    probabilities: Sequence[float],
    *,
    groups: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
    description: str = "held-out films",
    seed: int = 0,
    conditions: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
    populations: dict[str, Sequence[str]] | None = None,
    draws: int = 1000,
    power_draws: int = 200,
    progress: Progress | None = None,
) -> Reference:
    """Fit the drift reference from held-out films (never films the model, or the ensemble member whose
    features it reads, was fitted on) and their stored probabilities, and measure it.

    The films are split by patient (``groups``; each file its own patient otherwise) into three parts:
    the mean and precision are fitted on 40 %, the reference distances and scores are the next 30 %,
    and the last 30 % calibrate: the share of in-distribution batches of 50 drawn from them that are
    called shifted (false alarms; also all-normal and all-pneumonia batches when ``labels`` are given),
    and the share called shifted once every film is changed by each of ``conditions`` (the stress suite
    by default; power). ``populations`` (name -> paths) are measured the same way, in batches of 50.
    False alarms are measured on SPLITS such patient splits (the first is the one saved) and pooled.

    The stored probabilities decide which scores the test compares: the model's served probability when
    they agree with it, the first member's when they agree with that (a cross-fitted ensemble's
    out-of-fold scores), otherwise none (the test then reads the features only).
    """
    from sklearn.covariance import LedoitWolf

    from pneumo.data.transforms import STRESS

    paths = [str(p) for p in paths]
    given = np.asarray(probabilities, dtype=np.float64)
    if len(given) != len(paths):
        raise ValueError(f"{len(paths)} films but {len(given)} probabilities")
    if len(paths) < MIN_REFERENCE_FILMS:
        raise ValueError(f"a drift reference needs at least {MIN_REFERENCE_FILMS} held-out films, got {len(paths)}")
    decoded, errors = _read(paths)
    ok = [i for i, img in enumerate(decoded) if img is not None]
    if len(ok) < MIN_REFERENCE_FILMS:
        first = next(e for e in errors if e)
        raise ValueError(f"only {len(ok)} of {len(paths)} reference films are readable (first error: {first})")
    images = [img for img in decoded if img is not None]  # the films of ok, in order
    given = given[ok]
    groups_arr = (
        np.asarray([str(g) for g in groups], dtype=object)[ok]
        if groups is not None
        else np.asarray([paths[i] for i in ok], dtype=object)
    )
    labels_arr = np.asarray(labels, dtype=int)[ok] if labels is not None else None
    if progress:
        progress(1, 4)
    feats = quality.features(loaded, images)
    served = np.asarray(loaded.predict(images), dtype=np.float64)
    source = "none"
    if np.percentile(np.abs(served - given), 95) <= SCORE_TOLERANCE:
        source = "model"
    else:
        try:
            first_member = np.asarray(loaded.member_probabilities(images))[:, 0]
        except Exception:  # noqa: BLE001 - a model without members, or no TensorFlow: no member scores
            first_member = None
        if first_member is not None and np.percentile(np.abs(first_member - given), 95) <= SCORE_TOLERANCE:
            source = "member 1"
    if progress:
        progress(2, 4)

    _, patient_codes = np.unique(groups_arr, return_inverse=True)
    sha = model_sha(loaded.path)  # the model file, hashed once for every split

    def split(k: int) -> tuple[Reference, np.ndarray]:
        part = _group_split(groups_arr, seed + k)
        fit, ref, cal = (np.flatnonzero(part == j) for j in range(3))
        lw = LedoitWolf().fit(feats[fit])
        built = Reference(
            lw.location_,
            lw.precision_,
            np.zeros(0),
            given[ref],
            float(loaded.threshold),
            source,
            sha,
            description,
            len(fit),
            len(cal),
            now_iso(),
            patients=patient_codes[ref].astype(np.int64),
        )
        built.distances = built.distance(feats[ref])
        return built, cal

    reference, cal = split(0)
    ref_pos = int((reference.probabilities >= reference.split_threshold).sum())
    if min(ref_pos, reference.n - ref_pos) < MIN_STRATUM:
        raise ValueError(
            f"the reference part has {reference.n - ref_pos} films scored normal and {ref_pos} scored "
            f"pneumonia; each needs {MIN_STRATUM}: give more held-out films of both classes"
        )
    if len(cal) < MIN_BATCH:
        raise ValueError(f"only {len(cal)} films left to calibrate the drift check; give more held-out films")

    rng = np.random.default_rng(seed + 1)
    cases: dict[str, int | None] = {"in-distribution": None}
    if labels_arr is not None:
        cases.update({"all normal": 0, "all pneumonia": 1})
    # False alarms over SPLITS patient splits (the first is the shipped one), draws shared out between them.
    per_split: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    for k in range(SPLITS):
        built, held = (reference, cal) if k == 0 else split(k)
        held_d = built.distance(feats[held])
        for name, value in cases.items():
            if value is None:
                mask = np.ones(len(held), dtype=bool)
            else:
                assert labels_arr is not None  # the labelled cases are listed only when labels are given
                mask = labels_arr[held] == value
            per_split[name].append(
                _alarm_rate(built, held_d[mask], given[held][mask], CALIBRATION_N, max(1, draws // SPLITS), rng)
            )
    calibration: dict[str, Any] = {"false_alarms": {name: _pooled(rates) for name, rates in per_split.items()}}
    power: dict[str, Any] = {}
    conditions = STRESS if conditions is None else conditions
    cal_images = [images[i] for i in cal]
    for k, (name, change) in enumerate(conditions.items()):
        changed = [np.clip(change(x), 0.0, 1.0).astype(np.float32) for x in cal_images]
        s = scores(loaded, changed, source)
        d = reference.distance(quality.features(loaded, changed))
        power[name] = _alarm_rate(
            reference, d, s if s is not None else np.asarray(loaded.predict(changed)), CALIBRATION_N, power_draws, rng
        )
        if progress:
            progress(2 + (k + 1) / max(len(conditions), 1), 4)
    calibration["power"] = {"stressed held-out films": power}
    if power:
        rates = [v["rate"] for v in power.values() if v["rate"] is not None]
        calibration["power"]["median over conditions"] = float(np.median(rates)) if rates else None
    # Named populations: shifted stand-ins (power) or films the model trained on (which must not raise it).
    named: dict[str, Any] = {}
    for name, population in (populations or {}).items():
        f, s, kept, _ = view(loaded, list(population), source if source != "none" else "model")
        if kept:
            assert s is not None  # scored with the model or its first member: view returns scores for kept films
            named[name] = {
                **_alarm_rate(reference, reference.distance(f), s, CALIBRATION_N, power_draws, rng),
                "films": len(kept),
            }
    if named:
        calibration["populations"] = named
    calibration["draws_note"] = (
        f"false alarms: batches drawn without replacement from the calibration films of "
        f"{SPLITS} patient splits of the held-out films (never the films that built that "
        f"split's reference), pooled; power: the shipped split's {len(cal)} calibration films"
    )
    reference.calibration = calibration
    if progress:
        progress(4, 4)
    return reference


def predictions_for_reference(model_path: str | Path, predictions: str | Path | None = None) -> tuple[Any, str]:
    """The held-out films (path, label, probability[, patient_id]) a reference is built from, and what they are.

    Default: ``oof_predictions.csv`` beside the model when there is one, keeping fold 0's films only (a
    cross-fitted ensemble's features are its first member's, which never saw fold 0), else the card's
    validation predictions (``val_predictions.csv``). Relative paths resolve from the working folder, as
    training wrote them.
    """
    import pandas as pd

    folder = Path(model_path).parent
    if predictions is None:
        oof = folder / "oof_predictions.csv"
        predictions = oof if oof.exists() else folder / "val_predictions.csv"
    frame = pd.read_csv(predictions)
    missing = {"path", "probability"} - set(frame.columns)
    if missing:
        raise ValueError(f"{predictions}: needs columns path and probability (missing {', '.join(sorted(missing))})")
    what = f"held-out films ({Path(predictions).name})"
    if "fold" in frame.columns:
        frame = frame[frame["fold"] == 0]
        what = f"out-of-fold films of fold 1 ({Path(predictions).name}; the first member never saw them)"
    return frame.reset_index(drop=True), what


def build(
    model_path: str | Path | None = None,
    predictions: str | Path | None = None,
    *,
    populations: dict[str, Sequence[str]] | None = None,
    record: bool = True,
    progress: Progress | None = None,
    **kwargs: Any,
) -> Reference:
    """Fit the reference for a saved model, save it beside the model and (by default) record it in the card."""
    loaded = load_model(model_path)
    if record:
        _writable_card(loaded.path)  # before the work: a read-only card is refused at once
    frame, what = predictions_for_reference(loaded.path, predictions)
    reference = fit_reference(
        loaded,
        frame["path"].tolist(),
        frame["probability"].to_numpy(),
        groups=frame["patient_id"].astype(str).tolist() if "patient_id" in frame else None,
        labels=frame["label"].tolist() if "label" in frame else None,
        description=what,
        populations=populations,
        progress=progress,
        **kwargs,
    )
    reference.save(reference_path(loaded.path))
    if record:
        record_in_card(loaded.path, reference)
    return reference


def _writable_card(model_path: Path) -> Path:
    path = card_path(model_path)
    check_writable(path)  # ReadOnlyError (a PermissionError) for a read-only card or model folder
    return path


def record_in_card(model_path: str | Path, reference: Reference) -> Path:
    """Write the reference's section (``drift``) into the model's card; a read-only card is refused. Read,
    changed and written under the card's lock (update_card): no concurrent update of the card is lost."""
    model_path = Path(model_path) / "model.keras" if Path(model_path).is_dir() else Path(model_path)
    path = _writable_card(model_path)
    section = reference.card_section()

    def put(card: ModelCard) -> None:
        card.extra["drift"] = section

    update_card(path, put)
    return path
