"""Screening: each study's films read, decided and (with push) stored back film by film, so an interrupted run
resumes where it stopped; a watch loop for new studies.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

import numpy as np

from pneumo.data.pixels import resize
from pneumo.integrations.pacs.client import Pacs
from pneumo.integrations.pacs.config import PacsError
from pneumo.integrations.pacs.priors import ScreeningKey, operating_point, prior_screenings
from pneumo.integrations.pacs.results import ALREADY, FAILED, SCREENED, SKIPPED, InstanceResult, ScreenRun
from pneumo.integrations.pacs.studies import _check_date, search_studies, select_instances
from pneumo.integrations.pacs.tid1500 import hottest_region
from pneumo.integrations.pacs.writers import (
    _header,
    build_overlay_sc,
    build_report_pdf,
    build_screening_sr,
    overlay_picture,
)
from pneumo.model.loading import LoadedModel
from pneumo.model.reading import NOT_ASSESSABLE, card_hash, read

# pydicom, highdicom, dicomweb-client, requests, OpenCV and pneumo.model.explain (OpenCV) are imported where used: the
# CLI
# and the dashboard import this module at start; pneumo.evaluation.drift is optional (see _drift).

# dicomweb-client logs failed requests at ERROR; without a handler Python's last resort would print them
# on stderr beside our own one line. A handler here keeps them for an app that configures logging.
logging.getLogger("dicomweb_client").addHandler(logging.NullHandler())


# --- results --------------------------------------------------------------------------------------------------


# --- screening ------------------------------------------------------------------------------------------------


def _result_from_reading(result: InstanceResult, reading: Any, loaded: LoadedModel) -> None:
    result.reading = reading
    result.threshold = float(loaded.threshold)
    result.operating_point = operating_point(loaded)
    result.model = str(loaded.card.name)
    result.card_hash = card_hash(loaded)
    if reading.error:
        result.status, result.error = FAILED, f"{reading.name}: {reading.error}"
        return
    result.status = SCREENED
    result.probability = None if reading.probability is None else float(reading.probability)
    result.prediction = reading.decision
    result.warnings = list(reading.warnings)


@dataclass
class _StudyOutput:
    """The result series of one study in one run: images are stored one by one into the same three series."""

    sr_series: str
    sc_series: str
    pdf_series: str
    count: int = 0


def _new_output() -> _StudyOutput:
    import highdicom as hd

    return _StudyOutput(str(hd.UID()), str(hd.UID()), str(hd.UID()))


def _report_pdf(loaded: LoadedModel, result: InstanceResult, heatmap: Any, output: _StudyOutput) -> Any | None:
    """The reading's PDF report (pneumo.integrations.report, as the app makes it) as an Encapsulated PDF; None, with a
    warning on the reading, when the report cannot be made: the SR and the overlay carry the reading without it."""
    from pneumo.integrations.report import study_pdf

    try:
        document = study_pdf([result.reading], loaded, {0: heatmap} if heatmap is not None else None)
        return build_report_pdf(result.source, document, output.pdf_series, output.count, loaded)
    except Exception as exc:  # the report is an addition: its failure must not cost the film its stored reading
        result.warnings.append(f"no PDF report stored ({_one_line(exc)})")
        return None


def push_result(pacs: Pacs, loaded: LoadedModel, result: InstanceResult, output: _StudyOutput | None = None) -> None:
    """Store one screened image's results in one STOW-RS request: the SC of the Grad-CAM overlay (when assessable),
    the Encapsulated PDF of the reading and the TID 1500 report (SR) that references both, with the map's hottest
    region on the source film. On success the result holds their UIDs ("sr", "sc", "pdf"). PacsError otherwise (the
    reading itself stays in the result)."""
    if result.status != SCREENED or result.reading is None or result.source is None:
        return
    where = f"{pacs.display_url}/studies/{result.study_uid}"
    try:
        sr, overlay, pdf = _results_to_store(pacs, loaded, result, output)
    except Exception as exc:  # nothing could be sent: the audit trail says so too (the reading is logged all the same)
        _store_event(where, "failed", {"instance": result.sop_uid, "error": f"not written ({_one_line(exc)})"[:500]})
        raise
    try:
        pacs.store(result.study_uid, [d for d in (overlay, pdf, sr) if d is not None])
    except PacsError as exc:
        _store_event(where, "failed", {"instance": result.sop_uid, "error": str(exc)[:500]})
        raise
    result.stored = {
        "sr": str(sr.SOPInstanceUID),
        **({"sc": str(overlay.SOPInstanceUID)} if overlay is not None else {}),
        **({"pdf": str(pdf.SOPInstanceUID)} if pdf is not None else {}),
    }
    _store_event(where, "ok", {"instance": result.sop_uid, **result.stored})


def _results_to_store(
    pacs: Pacs, loaded: LoadedModel, result: InstanceResult, output: _StudyOutput | None
) -> tuple[Any, Any, Any]:
    """The SR, the overlay SC (or None) and the PDF (or None) of one screened image, ready to store."""
    assert result.reading is not None and result.source is not None  # push_result's precondition
    output = output or _new_output()
    output.count += 1
    overlay = region = heatmap = None
    reading = result.reading
    if result.prediction != NOT_ASSESSABLE and reading.xray is not None:
        # No explanation for a film the input check cannot assess: a heat map would lend it a reading.
        probability, threshold = result.probability, result.threshold
        assert probability is not None and threshold is not None  # both are set for every screened film
        heatmap = result.heatmap
        if heatmap is None:
            from pneumo.model.explain import gradcam

            heatmap = result.heatmap = gradcam(loaded, reading.xray.pixels)
        calibrated = (
            f", probability {loaded.card.probability(probability):.3f}" if loaded.card.calibrated else ""
        )  # the score is what the threshold applies to; the card's map says what it means
        lines = [
            f"{loaded.card.name}: score {probability:.3f}{calibrated} -> {result.prediction} "
            f"(threshold {threshold:.4f} on the score, {result.operating_point})",
            # Grad-CAM explains the decided class (as the app and the PDF report do); say which.
            f"heat: what drove the {'PNEUMONIA' if probability >= threshold else 'NORMAL'} score, not where disease is",
        ]
        overlay = build_overlay_sc(
            result.source, overlay_picture(reading.xray.pixels, heatmap, lines), output.sc_series, output.count, loaded
        )
        # The map is at the decoded film's size (at most 2048 px on its long side, or the app's display copy):
        # hottest_region scales it onto the source's own rows and columns.
        rows, columns = int(result.source.get("Rows") or 0), int(result.source.get("Columns") or 0)
        region = hottest_region(heatmap, rows, columns) if rows and columns else None
    pdf = _report_pdf(loaded, result, heatmap, output) if reading.xray is not None else None
    from pneumo.integrations.pacs.seal import seal_key

    sr = build_screening_sr(
        result.source,
        result,
        loaded,
        output.sr_series,
        output.count,
        overlay,
        seal_key=seal_key(pacs.secret),
        region=region,
        pdf=pdf,
    )
    return sr, overlay, pdf


def _store_event(where: str, outcome: str, details: dict[str, Any]) -> None:
    """A PACS store in the audit trail (pneumo.integrations.records): a database that cannot be written costs the
    event, logged, never the results already stored."""
    from pneumo.integrations.records import current_user, try_log_event

    problem = try_log_event("pacs_store", where, outcome, user=current_user(), details=details)
    if problem:
        logging.getLogger(__name__).warning("PACS store not written to the audit trail: %s", problem)


def screen_study(
    pacs: Pacs,
    loaded: LoadedModel,
    study_uid: str,
    push: bool = False,
    force: bool = False,
    keep_pixels: bool = False,
    drift_images: list[tuple[np.ndarray, float]] | None = None,
) -> list[InstanceResult]:
    """Every image of one study: frontal films screened (or reported from an earlier SR of this model and
    operating point unless force), the rest skipped with the reason; with push each reading is stored
    as it is made. Fatal PacsErrors propagate; others fail that image only.

    keep_pixels keeps the decoded film and the source header in the results (the app's cards and a
    later send_results); the CLI drops them to keep a long run's memory flat. drift_images collects each
    film read (at the model's input size) with its probability, for the batch drift check."""
    key = ScreeningKey.of(loaded)
    metadata = pacs.study_metadata(study_uid)
    frontal, skipped = select_instances(metadata)
    from pneumo.integrations.pacs.seal import seal_key

    sealing = seal_key(pacs.secret)
    done, untrusted = ({}, {}) if force else prior_screenings(metadata, key, sealing, card_hash(loaded))
    base = f"{pacs.display_url}/studies/{study_uid}"

    def path(series: str, sop: str) -> str:
        return f"{base}/series/{series}/instances/{sop}"

    results: list[InstanceResult] = []
    order = {c.sop_uid: i for i, c in enumerate(frontal)}
    for s in skipped:
        results.append(
            InstanceResult(
                s.study_uid or study_uid,
                s.series_uid,
                s.sop_uid,
                path(s.series_uid, s.sop_uid),
                SKIPPED,
                skipped=s.reason,
            )
        )
    if not frontal and not skipped:
        results.append(InstanceResult(study_uid, None, None, base, SKIPPED, skipped="no CR or DX image in the study"))
    output: _StudyOutput | None = None
    for candidate in frontal:
        result = InstanceResult(
            study_uid, candidate.series_uid, candidate.sop_uid, path(candidate.series_uid, candidate.sop_uid), FAILED
        )
        prior = done.get(candidate.sop_uid)
        if prior is not None:
            result.status = ALREADY
            result.probability, result.prediction, result.warnings = prior.probability, prior.decision, prior.warnings
            result.threshold, result.operating_point, result.model = (
                prior.key.threshold,
                prior.key.operating_point,
                prior.key.model,
            )
            result.card_hash = prior.card_hash
            result.stored = {
                "sr": prior.sr_uid,
                **({"sc": prior.overlay_uid} if prior.overlay_uid else {}),
                **({"pdf": prior.pdf_uid} if prior.pdf_uid else {}),
            }
            result.skipped = (
                f"already screened by {prior.key.model} at operating point {prior.key.operating_point} "
                f"(SR {prior.sr_uid})"
            )
            results.append(result)
            continue
        started = time.perf_counter()
        try:
            raw = pacs.retrieve_instance(study_uid, candidate.series_uid, candidate.sop_uid)
            reading = read(loaded, raw, name=result.path)
            _result_from_reading(result, reading, loaded)
            if candidate.note and result.status == SCREENED:
                result.warnings.append(candidate.note)
            # An SR that claimed this film without proving it is named beside the new reading.
            result.warnings += untrusted.get(candidate.sop_uid, [])
            if result.status == SCREENED:
                result.source = _header(raw)
            if push and result.status == SCREENED:
                output = output or _new_output()
                push_result(pacs, loaded, result, output)
        except PacsError as exc:
            result.status, result.error, result.retryable = FAILED, str(exc), True
            result.seconds = time.perf_counter() - started
            results.append(result)
            if exc.fatal:
                raise _Interrupted(results, exc) from None
            continue
        except Exception as exc:  # writing the SR or overlay from an unusual header: this image fails, not the run
            result.status = FAILED
            result.error = f"{result.path}: the results could not be written ({_one_line(exc)})"
        result.seconds = time.perf_counter() - started
        if (
            drift_images is not None
            and result.reading is not None
            and result.reading.xray is not None
            and result.probability is not None
            and len(drift_images) < MAX_DRIFT_IMAGES
        ):
            drift_images.append((resize(result.reading.xray.pixels, loaded.input_size), result.probability))
        if not keep_pixels:
            result.source, result.heatmap = None, None
            if result.reading is not None:
                result.reading.xray = None
        results.append(result)
    rank = {SKIPPED: 1}
    results.sort(key=lambda r: (rank.get(r.status, 0), order.get(r.sop_uid or "", len(order))))
    return results


class _Interrupted(Exception):
    """A fatal PacsError inside a study, carrying the study's results so far."""

    def __init__(self, results: list[InstanceResult], error: PacsError):
        super().__init__(str(error))
        self.results, self.error = results, error


MAX_DRIFT_IMAGES = 1000  # at the model's input size: ~200 MB at most, however long the run


def _drift(loaded: LoadedModel, images: Sequence[np.ndarray], probabilities: Sequence[float]) -> Any:
    """pneumo.evaluation.drift's batch check of the films read in this run (a DriftResult), or None when there is
    no check (no reference beside the model, too few films) or pneumo.evaluation.drift is absent."""
    try:
        from pneumo.evaluation.drift import DriftUnavailable, check_batch
    except ImportError:
        return None
    if not images:
        return None
    try:
        return check_batch(loaded, list(images), probabilities=list(probabilities))
    except DriftUnavailable:  # e.g. no predicted class has enough films to test
        return None


def screen_studies(
    pacs: Pacs,
    loaded: LoadedModel,
    study_uids: Sequence[str],
    push: bool = False,
    force: bool = False,
    keep_pixels: bool = False,
    progress: Callable[[int, int, list[InstanceResult]], None] | None = None,
    log: bool = False,
) -> ScreenRun:
    """Screen studies in order. A failing study is recorded and the run goes on; an unreachable server
    ends the run with one line in run.error and the studies not reached in run.studies_left. The batch
    drift check runs over the films read, at the model's input size. log: store the readings in the
    readings database (pneumo.integrations.records) once the run is done."""
    run = ScreenRun()
    drift_images: list[tuple[np.ndarray, float]] = []
    uids = list(dict.fromkeys(study_uids))
    for index, uid in enumerate(uids):
        path = f"{pacs.display_url}/studies/{uid}"
        try:
            results = screen_study(
                pacs, loaded, uid, push=push, force=force, keep_pixels=keep_pixels, drift_images=drift_images
            )
        except _Interrupted as stop:
            run.results.extend(stop.results)
            run.error, run.studies_left = str(stop.error), uids[index + 1 :]
            break
        except PacsError as exc:
            run.results.append(InstanceResult(uid, None, None, path, FAILED, error=str(exc), retryable=True))
            if exc.fatal:
                run.error, run.studies_left = str(exc), uids[index + 1 :]
                break
            continue
        except Exception as exc:  # what a study's content does to the code reading it: that study fails, not the run
            run.results.append(
                InstanceResult(
                    uid,
                    None,
                    None,
                    path,
                    FAILED,
                    error=f"PACS {pacs.display_url}: study {uid} could not be screened ({_one_line(exc)})",
                )
            )
            continue
        run.results.extend(results)
        run.studies_done += 1
        if progress is not None:
            progress(index + 1, len(uids), results)
    try:
        run.drift = _drift(loaded, [i for i, _ in drift_images], [p for _, p in drift_images])
        if run.drift is not None and getattr(run.drift, "shifted", False):
            run.drift_note = str(getattr(run.drift, "advice", "") or "this batch is unlike the reference films")
    except Exception as exc:  # the drift check must not cost the run its results
        run.drift_note = f"batch drift check failed ({_one_line(exc)})"
    if log:
        from pneumo.integrations.records import RecordsError, log_pacs_run

        try:  # the database must not cost the run its results
            log_pacs_run(run, loaded)
        except (RecordsError, OSError) as exc:
            run.log_note = f"readings not logged ({_one_line(exc)})"
    return run


def _one_line(exc: BaseException) -> str:
    """An exception as its type and the start of its message on one line (the message may quote a server)."""
    try:
        text = " ".join(str(exc).split())
    except Exception:  # a message that cannot even be made (RecursionError from a nested value)
        text = ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def send_results(pacs: Pacs, loaded: LoadedModel, results: Sequence[InstanceResult]) -> list[str]:
    """Store readings made without push (the app's "Send results to PACS"): the results screened with
    keep_pixels and not yet stored. Returns one line per failure (empty when all were stored); a fatal
    failure stops at once, and what was stored keeps its UIDs in result.stored."""
    errors: list[str] = []
    outputs: dict[str, _StudyOutput] = {}
    for result in results:
        if result.status != SCREENED or result.stored:
            continue
        if result.source is None or result.reading is None:
            errors.append(f"{result.path}: screened without its pixels kept (keep_pixels=True); screen again to send")
            continue
        try:
            push_result(pacs, loaded, result, outputs.setdefault(result.study_uid, _new_output()))
        except PacsError as exc:
            errors.append(str(exc))
            if exc.fatal:
                break
        except Exception as exc:  # an SR or overlay that cannot be written from this film's header
            errors.append(f"{result.path}: the results could not be written ({_one_line(exc)})")
    return errors


MAX_BACKOFF = 900.0  # seconds: the longest a watch waits between polls while the server keeps failing


def backoff_delay(interval: float, failures: int, cap: float = MAX_BACKOFF) -> float:
    """The wait before the next poll after `failures` failed polls in a row: the interval doubled for each, at most
    cap (or the interval itself, when that is longer). A busy server is polled less and less, not hammered."""
    return min(interval * 2.0 ** min(failures, 64), max(cap, interval))


def watch(
    pacs: Pacs,
    loaded: LoadedModel,
    interval: float = 60.0,
    max_polls: int | None = None,
    since: str | None = None,
    push: bool = False,
    on_poll: Callable[[ScreenRun], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[str], None] | None = None,
) -> bool:
    """Poll for studies (from `since`, default today) and screen each new one: the triage loop. A study
    screened completely in this process is not read again; with push, the PACS's SRs carry that across
    restarts. A failed poll is reported through on_poll and the loop goes on, waiting longer after each poll
    that failed on the server's side (backoff_delay). progress gets one line per poll (what it found and did,
    and when the next comes). True when anything failed."""
    if not (math.isfinite(interval) and interval > 0):
        raise ValueError(f"the interval between polls must be a positive number of seconds, got {interval!r}")
    since = _check_date(since, "since") or date.today().strftime("%Y%m%d")
    finished: set[str] = set()
    polls, failed, failures = 0, False, 0
    while max_polls is None or polls < max_polls:
        polls += 1
        found = new = 0
        try:
            listed = [s.study_uid for s in search_studies(pacs, since=since, limit=None)]
            studies = [uid for uid in listed if uid not in finished]
            found, new = len(listed), len(studies)
            run = screen_studies(pacs, loaded, studies, push=push)
        except PacsError as exc:
            run = ScreenRun(error=str(exc))
        # A study is done once nothing in it failed on the server's side; a film that cannot be read
        # fails the same way every poll, so it is reported once, not at every interval.
        for uid in {r.study_uid for r in run.results}:
            if not any(r.retryable for r in run.results if r.study_uid == uid) and uid not in run.studies_left:
                finished.add(uid)
        failed = failed or run.failed
        # The server failed us (a search or a study it could not serve): wait longer before asking again.
        server_failed = run.error is not None or any(r.retryable for r in run.results)
        failures = failures + 1 if server_failed else 0
        if on_poll is not None:
            on_poll(run)
        more = max_polls is None or polls < max_polls
        wait = backoff_delay(interval, failures)
        if progress is not None:
            progress(_poll_line(polls, found, new, run, wait if more else None, failures))
        if more:
            sleep(wait)
    return failed


def _poll_line(poll: int, found: int, new: int, run: ScreenRun, wait: float | None, failures: int) -> str:
    counts: dict[str, int] = {}
    for r in run.results:
        counts[r.status] = counts.get(r.status, 0) + 1
    done = ", ".join(f"{n} {status}" for status, n in counts.items()) or "nothing read"
    line = f"poll {poll}: {found} stud{'y' if found == 1 else 'ies'} found, {new} to screen; {done}"
    if run.error:
        line += f"; error: {run.error}"
    elif failures:
        failing = sorted({r.study_uid for r in run.results if r.retryable})
        line += f"; {len(failing)} stud{'y' if len(failing) == 1 else 'ies'} failed on the server's side"
    if wait is not None:
        line += f"; next poll in {wait:g} s" + (f" (backing off after {failures} failed polls)" if failures else "")
    return line


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
