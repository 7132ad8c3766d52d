"""Monitoring a model in use from its logged readings and the readers' verdicts.

By day (or ISO week): readings, the share flagged, the share not assessable, agreement with readers. Overall, at
the operating point in force: sensitivity and specificity against the verdicts with one-sided 95 % Clopper-Pearson
bounds (pneumo.evaluation.site.lower_bound, the site calibration's own), alerts where the card's claim lies outside
what the verdicts allow, and the site operating point the verdicts would set (pneumo.evaluation.site.figures: the
site rule, unchanged).

Definitions, each chosen so that a figure means one thing:
- flagged: a reading whose probability reaches the threshold it was read at (PNEUMONIA, and the upper half of
  UNCERTAIN — review), among readings with a decision;
- not assessable: decision NOT ASSESSABLE; rejected: the input could not be read; both shares of all readings;
- agreement: among readings with a decision and a verdict, flagged at their own threshold == the reader said
  PNEUMONIA;
- sensitivity and specificity are of films, not readings: a film read twice counts once (its newest verdict,
  its newest assessable reading), re-decided at the threshold in force, so readings made at an older threshold
  count at today's point. Not-assessable and rejected readings have no decision and are left out (counted).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, or_, select

from pneumo.core.card import SHIPPED_POINT, ModelCard
from pneumo.evaluation.site import lower_bound
from pneumo.integrations.records.db import Records, RecordsError, open_records
from pneumo.integrations.records.schema import ReadingRow
from pneumo.integrations.records.verdicts import PNEUMONIA, latest_by_reading
from pneumo.model.reading import NOT_ASSESSABLE

CONFIDENCE = 0.95  # one-sided, as the site calibration's bounds
DEFAULT_TARGET_RECALL = 0.95
PERIODS = ("day", "week")
PROPOSED_NAME = "from verdicts"


@dataclass(frozen=True)
class Claim:
    """What the card says of the operating point in force, and where that comes from."""

    sensitivity: float | None
    specificity: float | None
    source: str
    # The share of real films the card's input check marks not assessable (its false-alarm rate on held-out films),
    # when the card records one: a site whose films the check refuses far more often sends films unlike the training
    # films, whatever sensitivity and specificity say of the films it does read.
    not_assessable: float | None = None


@dataclass(frozen=True)
class MonitorRow:
    """What the monitor needs of one reading, with the newest verdict on it."""

    id: int
    time: datetime
    film: str  # pixel hash, else PACS instance UID, else the reading's own id
    threshold: float
    probability: float | None
    decision: str | None
    verdict: str | None
    error: bool = False
    # Logged before readings recorded their model file's hash (migration 0002): selected by the card's name alone.
    by_name_only: bool = False


@dataclass
class Period:
    start: str  # the day, or the Monday of the ISO week (YYYY-MM-DD)
    readings: int
    flagged: float | None
    not_assessable: float | None
    rejected: float | None
    verdicts: int
    agreement: float | None


@dataclass
class Alert:
    """A figure where the card's claim lies outside the one-sided 95 % bound the verdicts give."""

    figure: str  # "sensitivity", "specificity" or "not assessable"
    # "card claims more" (the model does worse than claimed), "card claims less" (better), or, for not assessable,
    # "more than the input check expects" (the films are unlike those the model was made for)
    direction: str
    claimed: float
    bound: float
    observed: float
    successes: int
    trials: int
    message: str


@dataclass
class MonitorReport:
    model: str
    operating_point: str
    threshold: float
    by: str
    since: str | None
    readings: int
    verdicts: int  # readings with a verdict
    films: int  # films with a verdict and an assessable reading: what sensitivity and specificity count
    left_out: int  # films with a verdict but no decision (not assessable or rejected)
    confusion: dict[str, int]
    sensitivity: float | None
    sensitivity_lower_95: float | None
    sensitivity_upper_95: float | None
    specificity: float | None
    specificity_lower_95: float | None
    specificity_upper_95: float | None
    claim: Claim
    alerts: list[Alert] = field(default_factory=list)
    proposed: dict[str, Any] | None = None
    periods: list[Period] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    model_sha256: str | None = None  # the model file whose readings these are
    by_name_only: int = 0  # readings counted by the card's name alone (logged before model hashes were kept)
    other_files: int = 0  # readings under the same name by another model file: left out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def upper_bound(successes: int, trials: int, confidence: float = CONFIDENCE) -> float | None:
    """One-sided Clopper-Pearson upper bound: one minus the lower bound of the failures."""
    low = lower_bound(trials - successes, trials, confidence)
    return None if low is None else 1.0 - low


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def period_start(when: datetime, by: str) -> date:
    """The day (UTC) of a time, or the Monday of its ISO week."""
    day = when.date()
    return day - timedelta(days=day.weekday()) if by == "week" else day


def _periods(rows: Sequence[MonitorRow], by: str) -> list[Period]:
    groups: dict[date, list[MonitorRow]] = {}
    for row in rows:
        groups.setdefault(period_start(row.time, by), []).append(row)
    out = []
    for start in sorted(groups):
        group = groups[start]
        decided = [r for r in group if r.probability is not None and r.decision not in (None, NOT_ASSESSABLE)]
        judged = [r for r in decided if r.verdict is not None]
        agree = sum((r.probability >= r.threshold) == (r.verdict == PNEUMONIA) for r in judged)  # type: ignore[operator]
        out.append(
            Period(
                start=start.isoformat(),
                readings=len(group),
                flagged=_share(sum(r.probability >= r.threshold for r in decided), len(decided)),  # type: ignore[operator]
                not_assessable=_share(sum(r.decision == NOT_ASSESSABLE for r in group), len(group)),
                rejected=_share(sum(r.error for r in group), len(group)),
                verdicts=sum(r.verdict is not None for r in group),
                agreement=_share(agree, len(judged)),
            )
        )
    return out


def films_with_verdicts(rows: Sequence[MonitorRow]) -> tuple[list[tuple[str, int, float]], int]:
    """[(film, label 0/1, probability)] per film with a verdict and an assessable reading (the newest verdict, the
    newest such reading: rows come oldest first), and how many films with a verdict had no decision."""
    verdict: dict[str, str] = {}
    score: dict[str, float] = {}
    for row in rows:
        if row.verdict is not None:
            verdict[row.film] = row.verdict
        if row.probability is not None and row.decision not in (None, NOT_ASSESSABLE):
            score[row.film] = row.probability
    films = [(f, 1 if verdict[f] == PNEUMONIA else 0, score[f]) for f in verdict if f in score]
    return films, sum(f not in score for f in verdict)


def _alert(figure: str, claimed: float | None, k: int, n: int) -> Alert | None:
    """An alert when the claim lies above the one-sided 95 % upper bound (the model does worse than claimed) or
    below the lower bound (better: the card undersells it, and other figures may be off too)."""
    if claimed is None or n == 0:
        return None
    low, high = lower_bound(k, n, CONFIDENCE), upper_bound(k, n, CONFIDENCE)
    assert low is not None and high is not None  # n > 0
    what = "pneumonia films flagged" if figure == "sensitivity" else "normal films not flagged"
    if claimed > high:
        return Alert(
            figure,
            "card claims more",
            claimed,
            high,
            k / n,
            k,
            n,
            f"{figure}: the card claims {claimed:.3f}, the readers' verdicts allow at most {high:.3f} "
            f"({k} of {n} {what}; one-sided 95 % Clopper-Pearson upper bound)",
        )
    if claimed < low:
        return Alert(
            figure,
            "card claims less",
            claimed,
            low,
            k / n,
            k,
            n,
            f"{figure}: the card claims {claimed:.3f}, the readers' verdicts show at least {low:.3f} "
            f"({k} of {n} {what}; one-sided 95 % Clopper-Pearson lower bound)",
        )
    return None


def _not_assessable_alert(rows: Sequence[MonitorRow], expected: float | None) -> Alert | None:
    """An alert when the share of scored readings the input check marked not assessable has a one-sided 95 % lower
    bound above the share the card's input check gives real held-out films. Needs no verdict: the readings alone
    show it. Sensitivity and specificity leave these films out, so they cannot show it."""
    scored = [r for r in rows if r.probability is not None]
    k, n = sum(r.decision == NOT_ASSESSABLE for r in scored), len(scored)
    if expected is None or n == 0:
        return None
    low = lower_bound(k, n, CONFIDENCE)
    if low is None or low <= expected:
        return None
    return Alert(
        "not assessable",
        "more than the input check expects",
        expected,
        low,
        k / n,
        k,
        n,
        f"not assessable: {k} of {n} scored readings ({k / n:.1%}; one-sided 95 % lower bound {low:.1%}) against "
        f"at most {expected:.1%} of real held-out films in the card's input check: these films are unlike the training "
        "films, and sensitivity and specificity leave them out",
    )


def compute(
    rows: Sequence[MonitorRow],
    *,
    threshold: float,
    claim: Claim,
    model: str = "",
    operating_point: str = SHIPPED_POINT,
    by: str = "day",
    since: date | None = None,
    target_recall: float = DEFAULT_TARGET_RECALL,
) -> MonitorReport:
    """The monitor's figures from readings (oldest first) joined with their newest verdicts."""
    from pneumo.evaluation.site import figures

    if by not in PERIODS:
        raise RecordsError(f"by must be one of {', '.join(PERIODS)}, not {by!r}")
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise RecordsError(f"a threshold lies in [0, 1], not {threshold}")
    rows = sorted(rows, key=lambda r: (r.time, r.id))
    films, left_out = films_with_verdicts(rows)
    pairs = [(y, p) for _, y, p in films]
    tp = sum(1 for y, p in pairs if y == 1 and p >= threshold)
    fn = sum(1 for y, p in pairs if y == 1 and p < threshold)
    tn = sum(1 for y, p in pairs if y == 0 and p < threshold)
    fp = sum(1 for y, p in pairs if y == 0 and p >= threshold)
    positives, negatives = tp + fn, tn + fp
    report = MonitorReport(
        model=model,
        operating_point=operating_point,
        threshold=float(threshold),
        by=by,
        since=since.isoformat() if since else None,
        readings=len(rows),
        verdicts=sum(r.verdict is not None for r in rows),
        films=len(pairs),
        left_out=left_out,
        confusion={"tp": tp, "fn": fn, "tn": tn, "fp": fp},
        sensitivity=_share(tp, positives),
        sensitivity_lower_95=lower_bound(tp, positives, CONFIDENCE),
        sensitivity_upper_95=upper_bound(tp, positives, CONFIDENCE),
        specificity=_share(tn, negatives),
        specificity_lower_95=lower_bound(tn, negatives, CONFIDENCE),
        specificity_upper_95=upper_bound(tn, negatives, CONFIDENCE),
        claim=claim,
        periods=_periods(rows, by),
    )
    for figure, claimed, k, n in (
        ("sensitivity", claim.sensitivity, tp, positives),
        ("specificity", claim.specificity, tn, negatives),
    ):
        alert = _alert(figure, claimed, k, n)
        if alert is not None:
            report.alerts.append(alert)
    refused = _not_assessable_alert(rows, claim.not_assessable)
    if refused is not None:
        report.alerts.append(refused)
    if positives == 0:
        report.notes.append("No verdict of PNEUMONIA on an assessable film: sensitivity is unknown.")
    if negatives == 0:
        report.notes.append("No verdict of NORMAL on an assessable film: specificity is unknown.")
    if claim.sensitivity is None and claim.specificity is None:
        report.notes.append(f"The card states no figures for this operating point ({claim.source}): no alerts.")
    if pairs and report.verdicts < report.readings:
        report.notes.append(
            f"Verdicts cover {report.verdicts} of {report.readings} readings. If readers judge mostly the films the "
            "model flagged (verification bias), sensitivity is overstated and specificity understated."
        )
    if positives:
        labels, probabilities = [y for y, _ in pairs], [p for _, p in pairs]
        site = figures(PROPOSED_NAME, labels, probabilities, target_recall, data="readers' verdicts")
        report.proposed = {**site.summary(), "rule": site.rule, "target_recall": site.target_recall}
    return report


def _since(since: date) -> datetime:
    from datetime import time, timezone

    return datetime.combine(since, time(0), tzinfo=timezone.utc)


def _of_model(model: str | None, model_sha256: str | None) -> Any:
    """The readings of one model: those its file read (by the file's hash), and those logged before readings kept
    that hash under its card's name; by the name alone when the model has no file to hash."""
    if model_sha256:
        same_file = ReadingRow.model_sha256 == model_sha256
        if not model:
            return same_file
        return or_(same_file, and_(ReadingRow.model_sha256.is_(None), ReadingRow.model == model))
    return ReadingRow.model == model if model else None


def load_rows(
    records: Records, model: str | None = None, since: date | None = None, model_sha256: str | None = None
) -> list[MonitorRow]:
    """The logged readings (of one model, from a day on) with the newest verdict on each, oldest first. model: the
    card's name; model_sha256: the model file's hash, which selects the readings that file made (and, with model,
    the readings logged before that hash was recorded, by name)."""
    query = select(ReadingRow).order_by(ReadingRow.time, ReadingRow.id)
    chosen = _of_model(model, model_sha256)
    if chosen is not None:
        query = query.where(chosen)
    if since is not None:
        query = query.where(ReadingRow.time >= _since(since))
    with records.reading() as session:
        readings = list(session.scalars(query))
        latest = latest_by_reading(session, [r.id for r in readings])
        return [
            MonitorRow(
                id=r.id,
                time=r.time,
                film=r.pixel_sha256 or (f"instance {r.instance_uid}" if r.instance_uid else f"reading {r.id}"),
                threshold=r.threshold,
                probability=r.probability,
                decision=r.decision,
                verdict=latest[r.id].label if r.id in latest else None,
                error=r.error is not None,
                by_name_only=bool(model_sha256) and r.model_sha256 is None,
            )
            for r in readings
        ]


def other_files(records: Records, model: str, model_sha256: str | None, since: date | None = None) -> int:
    """How many readings carry this card's name but were made by another model file (left out of its figures)."""
    if not model_sha256:
        return 0
    query = (
        select(func.count())
        .select_from(ReadingRow)
        .where(
            ReadingRow.model == model,
            ReadingRow.model_sha256.is_not(None),
            ReadingRow.model_sha256 != model_sha256,
        )
    )
    if since is not None:
        query = query.where(ReadingRow.time >= _since(since))
    with records.reading() as session:
        return int(session.execute(query).scalar_one())


def selection_notes(model: str, model_sha256: str | None, by_name_only: int, others: int) -> list[str]:
    """What the monitor says of the readings it chose for a model file."""
    notes = []
    if not model_sha256:
        notes.append(
            f"The model has no file to hash: readings are selected by the card's name ({model}) alone, and another "
            "model under that name would be counted with it."
        )
    if by_name_only:
        notes.append(
            f"{by_name_only} reading(s) were logged before readings recorded their model file's hash: they are "
            f"counted by the card's name ({model}) alone, and may include readings by another model of that name."
        )
    if others:
        notes.append(
            f"{others} reading(s) under the name {model} were made by another model file (a different hash): left out."
        )
    return notes


def card_point(card: ModelCard, model_path: str | Path | None, operating_point: str | None) -> tuple[str, float, Claim]:
    """The operating point in force (name, threshold) and what the card claims of it.

    A site point claims the figures it was set with. The card's own point claims its held-out figures recomputed at
    the card's threshold from the predictions stored beside the model (as the Overview shows them: a threshold saved
    since training is claimed at its own figures), else the validation section's when it was made at that threshold."""
    name = operating_point or SHIPPED_POINT
    if name != SHIPPED_POINT:
        points = {p.get("name"): p for p in card.site_operating_points}
        if name not in points:
            known = ", ".join([SHIPPED_POINT, *[str(n) for n in points]])
            raise RecordsError(f"no operating point '{name}' in the card (known: {known})")
        point = points[name]
        return (
            name,
            float(point["threshold"]),
            Claim(
                _number(point.get("sensitivity")),
                _number(point.get("specificity")),
                f"site point '{name}' on {point.get('n', '?')} films",
            ),
        )
    threshold = float(card.threshold)
    stored = _stored_claim(model_path, threshold)
    if stored is not None:
        return name, threshold, stored
    validation = card.validation or {}
    at = _number(validation.get("threshold"))
    if at is not None and abs(at - threshold) < 1e-9:
        return (
            name,
            threshold,
            Claim(
                _number(validation.get("sensitivity")),
                _number(validation.get("specificity")),
                f"card validation ({validation.get('kind', 'held-out')}, n = {validation.get('n', '?')})",
            ),
        )
    return name, threshold, Claim(None, None, "no figures at the threshold in force")


def input_check_rate(card: ModelCard) -> float | None:
    """The share of real held-out films the card's input check may mark not assessable, when the card records it:
    the one-sided 95 % upper bound of what it measured where the card says on how many films (0 of 522 allows up to
    0.6 %: a measured 0 must not make a single refused film an alarm), else the measured share itself."""
    check = (card.extra or {}).get("input_check") or {}  # kept among the card's extra sections
    rate = _number(check.get("false_alarm_rate_on_held_out")) if isinstance(check, dict) else None
    if rate is None or not 0.0 <= rate <= 1.0:
        return None
    films = _number(check.get("calibration_images"))
    if films is None or films < 1:
        return rate
    n = int(films)
    bound = upper_bound(round(rate * n), n, CONFIDENCE)
    return rate if bound is None else bound


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _stored_claim(model_path: str | Path | None, threshold: float) -> Claim | None:
    from pneumo.core.predictions import read_predictions
    from pneumo.model.loading import STORED_KINDS, stored_predictions_file

    if model_path is None:
        return None
    stored = stored_predictions_file(model_path)
    if stored is None:
        return None
    try:
        frame = read_predictions(stored)
    except ValueError:
        return None
    frame = frame[frame["probability"].notna()]
    y, p = frame["label"].to_numpy(), frame["probability"].to_numpy()
    positives, negatives = int((y == 1).sum()), int((y == 0).sum())
    return Claim(
        float((p[y == 1] >= threshold).mean()) if positives else None,
        float((p[y == 0] < threshold).mean()) if negatives else None,
        f"card's {STORED_KINDS[stored.name]} predictions ({len(y)} films) at threshold {threshold:.4f}",
    )


def monitor_model(
    model_path: str | Path | None = None,
    *,
    operating_point: str | None = None,
    since: date | None = None,
    by: str = "day",
    target_recall: float | None = None,
    url: str | None = None,
    records: Records | None = None,
) -> MonitorReport:
    """The monitor for a model at an operating point of its card: the readings its model file made (selected by the
    file's SHA-256), with those logged before readings recorded that hash counted by the card's name (said in a
    note)."""
    from pneumo.integrations.records.readings import model_file_sha256
    from pneumo.model.loading import model_file, read_card

    path = model_file(model_path)
    card = read_card(path)
    name, threshold, claim = card_point(card, path, operating_point)
    claim = dataclasses.replace(claim, not_assessable=input_check_rate(card))
    if target_recall is None:
        recorded = (card.validation or {}).get("operating_point") or {}
        target_recall = _number(recorded.get("target_recall")) or DEFAULT_TARGET_RECALL
    digest = model_file_sha256(path)
    records = records or open_records(url)
    rows = load_rows(records, model=card.name, since=since, model_sha256=digest)
    report = compute(
        rows,
        threshold=threshold,
        claim=claim,
        model=card.name,
        operating_point=name,
        by=by,
        since=since,
        target_recall=target_recall,
    )
    report.model_sha256 = digest
    report.by_name_only = sum(r.by_name_only for r in rows)
    report.other_files = other_files(records, card.name, digest, since)
    report.notes += selection_notes(card.name, digest, report.by_name_only, report.other_files)
    return report


def verdict_calibration(
    model_path: str | Path | None,
    name: str,
    target_recall: float,
    *,
    since: date | None = None,
    url: str | None = None,
    records: Records | None = None,
) -> Any:
    """A site operating point (pneumo.evaluation.site.SiteCalibration, the site rule and its bounds) set on the
    readers' verdicts on this model's logged readings (its file's, as monitor_model selects them): each film once, as
    the monitor counts it. Nothing is written (pneumo.evaluation.site.record does that)."""
    import hashlib

    from pneumo.evaluation.site import figures
    from pneumo.integrations.records.readings import model_file_sha256
    from pneumo.model.loading import model_file, read_card

    path = model_file(model_path)
    card = read_card(path)
    model_digest = model_file_sha256(path)
    records = records or open_records(url)
    rows = load_rows(records, model=card.name, since=since, model_sha256=model_digest)
    films, left_out = films_with_verdicts(rows)
    if not films:
        raise RecordsError(
            f"no reading of {card.name} (model file {path}) with a reader's verdict in {records.url}: log readings "
            "(predict --log) and import verdicts (verdicts import) first"
        )
    digest = hashlib.sha256("\n".join(sorted(f for f, _, _ in films)).encode()).hexdigest()[:16]
    result = figures(
        name,
        [y for _, y, _ in films],
        [p for _, _, p in films],
        target_recall,
        data=f"readers' verdicts in {records.url} (model {card.name}"
        + (f", file sha256 {model_digest[:16]}" if model_digest else "")
        + (f", from {since.isoformat()}" if since else "")
        + ")",
        file_list_sha256_16=digest,
    )
    extras = []
    if left_out:
        extras.append(
            f"{left_out} film(s) with a verdict had no decision (not assessable or unreadable) and are left out."
        )
    extras += selection_notes(
        card.name, model_digest, sum(r.by_name_only for r in rows), other_files(records, card.name, model_digest, since)
    )
    if extras:
        result.note = " ".join([result.note, *extras] if result.note else extras)
    return result
