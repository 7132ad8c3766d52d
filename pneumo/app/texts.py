"""The pages' texts made from data, as Streamlit Markdown: a visitor's, a card's or an exception's text escaped
(plain), and each wording written once for every page that shows it. No Streamlit here: what a page would say is
checked without running one."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # for the annotations only: sessions and drift import Streamlit and NumPy's stack
    from pneumo.app.sessions import Release
    from pneumo.evaluation.card_figures import TrustedSensitivity
    from pneumo.evaluation.drift import DriftResult

_MARKUP = re.compile(r"([\\`*_{}\[\]()#+\-.!|:<>~$&=])")


def plain(text: Any) -> str:
    """A visitor's text (a file name, a DICOM field, a card string) for a Markdown element, every markup
    character escaped: links, images, badges and colours in a name show as the characters they are."""
    return _MARKUP.sub(r"\\\1", " ".join(str(text).split()))


def code_span(text: Any) -> str:
    """text as an inline code span: fenced by one backtick more than its longest run of them (CommonMark), so a
    backtick in a path cannot end the span early; backslashes inside a span are shown as they are."""
    value = " ".join(str(text).split())
    runs = [len(r) for r in re.findall(r"`+", value)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


# ---------------------------------------------------------------- refusals said on more than one page


def stored_unusable(exc: BaseException) -> str:
    """A model's stored predictions that fail validation (Overview, Threshold)."""
    return f"The stored predictions cannot be used: {plain(exc)}"


def not_saved(exc: BaseException) -> str:
    """A card change refused (a read-only card, a taken site name)."""
    return f"Not saved: {plain(exc)}"


# ---------------------------------------------------------------- the model


def caution_line(caution: str) -> str:
    """One of a model card's cautions, where the model is used (Overview, Predict)."""
    return f"**This model carries a caution:** {plain(caution)}."


def input_line(size: Any, framing: str) -> str:
    """What the network reads of a film: its input side, and its canonical framing when it has one."""
    cropped = ", each film cropped to its lung field first" if framing == "lungs" else ""
    return f"{size}×{size} grayscale{cropped}"


def operating_point_line(name: Any, threshold: float, rule: Any) -> str:
    """The Overview's operating point in force: its name ("shipped" for the card's own), threshold and rule."""
    return f"**Operating point in force: {plain(name or 'shipped')}**, threshold **{threshold:.4f}**  \n{plain(rule)}"


def predict_operating_point(loaded: Any) -> str:
    """Predict's operating point beside its controls; for calibrated probabilities, which scale the threshold is
    on and the probability it stands for."""
    card = loaded.card
    words = (
        f"Operating point **{plain(loaded.operating_point)}**, threshold **{loaded.threshold:.4f}**  \n"
        f"{plain(card.threshold_rule)}"
    )
    if card.calibrated:
        words += (
            f"  \nProbabilities are calibrated out of fold (at the training films' "
            f"{card.extra['probability_calibration']['prevalence']:.0%} pneumonia); the threshold is the model's "
            f"score {loaded.threshold:.4f}, probability {card.probability(loaded.threshold):.3f}."
        )
    return words


def stored_figures_heading(kind: str, in_distribution: bool) -> str:
    """The heading of the Overview's figures recomputed from the stored predictions."""
    return f"##### {kind.capitalize()} figures ({'in-distribution' if in_distribution else 'shifted hold-out'})"


def trusted_sensitivity_line(sensitivity: float, trusted: TrustedSensitivity, target: float | None) -> str:
    """The table's sensitivity (on every pneumonia) beside the one on the pneumonias the label audit trusts, and
    which of the two the threshold rule's recall target was asked of."""
    asked = f" (the rule's sensitivity ≥ {target:.2f} is asked of these)" if target is not None else ""
    on_trusted = "—" if trusted.sensitivity is None else f"{trusted.sensitivity:.4f}"
    return (
        f"Sensitivity **{sensitivity:.4f}** in the table is on **all {trusted.positives:,} pneumonia films**, "
        f"suspected label errors included; on the **{trusted.trusted:,} the label audit trusts** it is "
        f"**{on_trusted}**{asked}."
    )


def label_audit_line(audit: Mapping[str, Any]) -> str:
    """The card's label audit (pneumo.evaluation.audit.summary) in one line."""
    from pneumo.evaluation.card_figures import by_label_in_words

    return (
        f"Label audit: {audit['suspects']} of {audit['n']:,} training films ({audit['suspect_share']:.1%}) are "
        f"suspected label errors ({by_label_in_words(audit.get('suspects_by_label') or {})}); the threshold's "
        "recall target is asked of the others. See the Dataset Explorer."
    )


# ---------------------------------------------------------------- drift


@dataclass(frozen=True)
class Notice:
    """Something a page says, and how loudly: an error box, a warning box or a caption."""

    kind: Literal["error", "warning", "caption"]
    text: str


UNLIKE = "is unlike the films the operating point was set on"


def drift_test(method: Any, n: Any, p_value: float) -> str:
    """The test a drift check ran, as its result's brackets say it."""
    return f"{method}, n = {n}, p = {p_value:.2g}"


def drift_summary(shifted: bool, method: Any, n: Any, p_value: float) -> str:
    """A drift check's result in one line, as the Overview and the batch PDF say it (not Markdown)."""
    return f"{'shifted' if shifted else 'no shift detected'} ({drift_test(method, n, p_value)})"


def _no_shift(test: str) -> Notice:
    return Notice("caption", f"Drift check: no shift detected ({plain(test)}).")


def _unavailable(reason: Any) -> Notice:
    return Notice("caption", f"Drift check: {plain(reason)}.")


def folder_drift_notice(found: Mapping[str, Any]) -> Notice:
    """What the Threshold page says of a data folder's drift report (pneumo.evaluation.drift.report)."""
    p_value = found.get("p_value")
    if found.get("shifted"):
        test = drift_test(found.get("method"), found.get("n"), p_value or 0.0)
        return Notice(
            "error",
            f"**This folder {UNLIKE}** ({plain(test)}): its figures here will not match the card's; calibrate to "
            "this site below.",
        )
    if p_value is not None:
        return _no_shift(drift_test(found.get("method"), found.get("n"), p_value))
    return _unavailable(found.get("reason") or found.get("note") or "not available")


def batch_drift_notice(result: DriftResult | None, why: str | None) -> Notice:
    """What Predict says of a batch's drift check, or, without one, why there is none."""
    if result is None:
        return _unavailable(why or "not available")
    test = drift_test(result.method, result.n, result.p_value)
    if result.shifted:
        from pneumo.evaluation.drift import advice

        return Notice(
            "error", f"**This batch {UNLIKE}** ({plain(test)}). {plain(advice(True, result.p_value, result.n))}"
        )
    return _no_shift(test)


def last_drift_line(summary: str) -> str:
    """The Overview's note of the last batch's drift check (drift_summary's words)."""
    return f"Drift of the last batch read on Predict: {plain(summary)}"


# ---------------------------------------------------------------- the Threshold page


def leak_warning(leak: Mapping[str, Any]) -> str:
    """A labelled folder holding films the model trained or was validated on (pneumo.evaluation.metrics.leakage)."""
    return (
        f"**{leak['train'] + leak['validation']} of {leak['n']} images ({leak['fraction']:.0%}) in this folder "
        f"are images this model was trained on ({leak['train']}) or validated on ({leak['validation']}).** Figures "
        "here are optimistic, and a threshold tuned on them will not hold on new patients."
    )


def site_leak_warning(leak: Mapping[str, Any]) -> str:
    """A site calibration on films the model trained or was validated on."""
    return (
        f"{leak['train'] + leak['validation']} of these films are the model's own training or validation films: "
        "the site figures are optimistic."
    )


def stored_set(kind: str, file_name: str, split: Any) -> str:
    """The labelled set of a model's stored predictions, as the figures and the saved rule name it."""
    return f"{kind} predictions stored with the model ({file_name}): " + str(
        split or "films the model's own networks never saw"
    )


def folder_set(folder_name: str, n: int) -> str:
    """A data folder predicted now, as the figures and the saved rule name it."""
    return f"the data folder {folder_name} ({n} films), predicted now"


def threshold_line(threshold: float, set_by: str) -> str:
    """The threshold the figures are computed at, and which rule set it."""
    return f"**Threshold {threshold:.4f}, set by:** {plain(set_by)}"


def card_threshold_line(threshold: float, rule: Any) -> str:
    return f"Card threshold now: {threshold:.4f} — {plain(rule)}"


def unreadable_film(row: Any, exc: BaseException) -> str:
    """A gallery film that cannot be shown: which (its row in the stored file, where it has one) and why."""
    where = f"row {row.row}" if hasattr(row, "row") else "a film of this folder"
    return f"{where}: {plain(getattr(exc, 'reason', exc))}"


# ---------------------------------------------------------------- Predict's uploads


def megabytes(n: int) -> str:
    """A byte budget in MB: whole MB from 10 MB up, two decimals below."""
    return f"{n / 2**20:,.0f} MB" if n >= 10 * 2**20 else f"{n / 2**20:.2f} MB"


def names_list(names: Sequence[Any], shown: int = 5) -> str:
    """Up to `shown` names, escaped, and how many more."""
    listed = ", ".join(plain(n) for n in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def release_notice(released: Sequence[Release], session_budget: int, server_budget: int) -> str:
    """What Predict says of this session's uploads released for a budget (pneumo.app.sessions), oldest first."""
    why = (
        f"this session may hold {megabytes(session_budget)} of uploads"
        if any(r.budget == "session" for r in released)
        else f"the server holds at most {megabytes(server_budget)} of every visitor's uploads"
    )
    return (
        f"**{len(released)} earlier upload(s) released**, the oldest first: {why}. No longer held: "
        f"{names_list([r.upload.name for r in released])}. Upload them again, in a smaller batch, to read them."
    )


# ---------------------------------------------------------------- Predict's PACS source


def screen_label(n: int) -> str:
    """The button that screens the ticked studies."""
    return f"Screen {n} selected stud{'y' if n == 1 else 'ies'}"


def skipped_line(entries: Sequence[str], shown: int = 6) -> str:
    """The images of a screening that were not read ("PATH: why"), the first few named, escaped."""
    return f"{len(entries)} image(s) not read: " + "; ".join(plain(e) for e in entries[:shown])


# ---------------------------------------------------------------- the Train page

# A run's state as the live view marks it.
STATE_ICONS = {
    "running": ":green[:material/play_circle:]",
    "queued": ":orange[:material/schedule:]",
    "finished": ":green[:material/check_circle:]",
    "stopped": ":gray[:material/stop_circle:]",
    "failed": ":red[:material/error:]",
}
UNKNOWN_STATE_ICON = ":material/help:"


def run_status(state: str, device: Any) -> str:
    """The live view's status: the state's icon and name, the device under it."""
    return f"**Status:** {STATE_ICONS.get(state, UNKNOWN_STATE_ICON)} {code_span(state)}  \n{plain(device or '')}"


def reopened_line(row: Mapping[str, Any], found_at: str, checked: str) -> str:
    """What a reading opened again was: when, by which model at which point, what it decided, and where its film
    was found (and how it was recognised)."""
    score = row.get("probability")
    decision = row.get("decision") or "no decision"
    return (
        f"Reading **#{int(row['id'])}** · {str(row.get('time', ''))[:19].replace('T', ' ')} UTC · "
        f"{plain(row.get('model', ''))} at {plain(row.get('operating_point', ''))} (threshold "
        f"{float(row.get('threshold') or 0):.4f}): **{plain(decision)}**"
        + (f", score {float(score):.3f}" if score is not None else "")
        + f" · found again at {code_span(found_at)} (recognised by its {plain(checked)})"
    )
