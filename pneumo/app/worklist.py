"""The Predict page's worklist as a reader works through it: the films in reading order (those that need a person
first), each row with a link to its card named for a screen reader, the decision, the score as a bar (empty where
no decision is made), the reason for attention in a column of its own with the full warning on hover and on
expand, and the file name, wrapped rather than cut at any width. Plain data in, escaped HTML out: a visitor's
text (file names, warnings quoting them) is never markup. The CSV download keeps pneumo.model.reading.worklist."""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass, field
from pathlib import Path

from pneumo.model import reading as predict

REJECTED = "rejected"  # the decision column of a file that could not be read
# Decision colours, legible on the light and the dark theme.
HUES = {
    predict.PNEUMONIA: "#d64536",
    predict.NORMAL: "#2e9e5b",
    predict.UNCERTAIN: "#d68910",
    predict.NOT_ASSESSABLE: "#8a9597",
    REJECTED: "#8a9597",
}
NOT_ASSESSABLE_NOTE = (
    "The input check does not take this for a chest film the model can read: the probability is listed, "
    "no decision is made."
)
SHORT = 60  # a reason longer than this is cut at a word for its column; the full text is on hover and expand


def sections(readings: list[predict.Reading]) -> tuple[list[int], list[int]]:
    """The readings' indices in reading order (pneumo.model.reading.order), split into those that need a person
    before any score is used (unreadable, warned about, not assessable) and the rest."""
    ordered = predict.order(readings)
    attention = [
        i
        for i in ordered
        if readings[i].error or readings[i].warnings or readings[i].decision == predict.NOT_ASSESSABLE
    ]
    return attention, [i for i in ordered if i not in set(attention)]


def sequence(readings: list[predict.Reading]) -> list[int]:
    """The order a reader goes through the films: the worklist's rows, the cards, and the viewer's next and
    previous film all follow it."""
    attention, rest = sections(readings)
    return attention + rest


# The cards come in pages of this many, in worklist order: the worklist lists every film, and a batch of hundreds of
# films does not hold hundreds of pictures per session in the browser and the server.
CARDS_PER_PAGE = 25
ATTENTION_TITLE = "Needs attention"
REST_TITLE = "Readings, highest probability first"
# Streamlit's badge colours, by decision (the cards and the viewer).
BADGES = {
    predict.PNEUMONIA: "red",
    predict.NORMAL: "green",
    predict.UNCERTAIN: "orange",
    predict.NOT_ASSESSABLE: "gray",
}


def badge(decision: str) -> str:
    """A decision as a card and the viewer show it: a bold badge in the decision's colour (Streamlit Markdown)."""
    return f":{BADGES.get(decision, 'gray')}-badge[**{decision}**]"


@dataclass(frozen=True)
class CardPage:
    """One page of cards: its number (from 1), how many pages there are, and its items (indices into the batch)
    in worklist order; `first` and `last` count positions in the worklist from 1, `of` its length."""

    number: int
    pages: int
    items: list[int]
    first: int
    last: int
    of: int

    @property
    def caption(self) -> str | None:
        """Which cards this page holds, said under them once there is more than one page."""
        if self.pages < 2:
            return None
        return f"Cards {self.first}–{self.last} of {self.of}; every film is in the worklist and the reports."


def pacs_digest(study_uid: str | None, sop_uid: str | None) -> str:
    """What a PACS film is known by in a batch (its pictures' cache keys, its widgets): its study and instance
    UIDs, as an upload is known by its bytes' digest."""
    return hashlib.sha256(f"{study_uid}/{sop_uid}".encode()).hexdigest()


def page_count(n: int, per_page: int = CARDS_PER_PAGE) -> int:
    """Pages of per_page cards for n films: at least one, a last page partly filled."""
    return max(1, -(-n // per_page))


def page_label(pages: int, per_page: int = CARDS_PER_PAGE) -> str:
    """The page picker's label."""
    return f"Cards, page of {per_page} (1–{pages})"


def card_page(order: list[int], number: int, per_page: int = CARDS_PER_PAGE) -> CardPage:
    """Page `number` of the cards of a batch in reading order (sequence); a number out of range is brought to the
    nearest page."""
    pages = page_count(len(order), per_page)
    number = min(max(int(number), 1), pages)
    start = (number - 1) * per_page
    items = order[start : start + per_page]
    return CardPage(number, pages, items, start + 1, min(start + per_page, len(order)), len(order))


def page_sections(readings: list[predict.Reading], page: CardPage) -> list[tuple[str, list[int]]]:
    """The page's cards under their headings, in worklist order: those that need attention (titled with how many
    the whole batch holds), then the rest; a heading with no card on this page is left out."""
    attention, rest = sections(readings)
    shown = set(page.items)
    out = []
    for title, items in ((f"{ATTENTION_TITLE} ({len(attention)})", attention), (REST_TITLE, rest)):
        on_page = [i for i in items if i in shown]
        if on_page:
            out.append((title, on_page))
    return out


def neighbours(viewable: list[int], item: int) -> tuple[int, int | None, int | None]:
    """Where `item` stands in the viewer's order (the worklist's films that have one), from 1, and the films
    before and after it, None at either end."""
    at = viewable.index(item)
    return at + 1, viewable[at - 1] if at > 0 else None, viewable[at + 1] if at + 1 < len(viewable) else None


def scored(reading: predict.Reading) -> bool:
    """Whether a reading's probability stands for a decision: a film the input check does not take for a chest
    film has its probability listed (CSV, PDF, PACS), not shown as a score."""
    return reading.probability is not None and reading.decision not in (None, predict.NOT_ASSESSABLE)


def viewable(readings: list[predict.Reading]) -> list[int]:
    """The films the full-size viewer steps through: those with a decoded film, in worklist order."""
    return [i for i in sequence(readings) if readings[i].xray is not None]


def still_open(opened: tuple[int, str] | None, shown: list[int], digests: list[str]) -> bool:
    """Whether the viewer's film (item index, digest) is one of this batch's viewable films; a film of an earlier
    batch (another film at that index, or an index past this batch) is not."""
    if opened is None:
        return False
    item, digest = opened
    return item in shown and 0 <= item < len(digests) and digests[item] == digest


NOT_SCORED_HELP = "Listed, not a decision: the input check does not take this film for one the model can read."


def score_help(reading: predict.Reading) -> str | None:
    """The help beside a card's probability: which scale it is on where calibrated, or why it is no score."""
    if not scored(reading):
        return NOT_SCORED_HELP
    if reading.calibrated is not None and reading.probability is not None:
        return f"Calibrated out of fold; the model's score is {reading.probability:.4f}."
    return None


def viewer_score(reading: predict.Reading) -> str:
    """The viewer's probability (Streamlit Markdown): in bold where it stands for a decision, greyed where it is
    listed only."""
    if scored(reading):
        return f"probability of pneumonia **{reading.shown:.3f}**"
    return f":gray[probability {reading.shown:.3f}, listed: no decision is made]"


def _short(text: str) -> str:
    """A warning's head (up to its first ': ', without the figures in brackets at its end), cut at a word to
    SHORT characters."""
    head = text.split(": ", 1)[0].strip()
    if head.endswith(")") and " (" in head:
        head = head[: head.rindex(" (")]
    if len(head) <= SHORT:
        return head
    cut = head[:SHORT].rsplit(" ", 1)[0]
    return f"{cut}…"


@dataclass(frozen=True)
class Row:
    """One worklist row: item is 1-based (the card's anchor is #item-{item})."""

    item: int
    name: str
    decision: str
    probability: float | None
    scored: bool
    reasons: list[str] = field(default_factory=list)  # short, one per warning (or the error)
    details: list[str] = field(default_factory=list)  # the same in full

    @property
    def label(self) -> str:
        """The link's accessible name: where it goes, not a bare number."""
        return f"Go to item {self.item}, {self.name}, {self.decision}"


def rows(readings: list[predict.Reading]) -> list[Row]:
    """The worklist's rows in reading order (sequence)."""
    out = []
    for i in sequence(readings):
        r = readings[i]
        details = [f"could not be read: {r.error}"] if r.error else list(r.warnings)
        if r.decision == predict.NOT_ASSESSABLE and not r.warnings:
            details.append(NOT_ASSESSABLE_NOTE)
        out.append(
            Row(
                item=i + 1,
                name=Path(r.name).name,
                decision=r.decision or REJECTED,
                probability=r.shown,
                scored=scored(r),
                reasons=[_short(d) for d in details],
                details=details,
            )
        )
    return out


def _bar(row: Row) -> str:
    """The probability as a bar and its number; empty and greyed where it stands for no decision."""
    share = row.probability if row.scored and row.probability is not None else 0.0
    fill = f'<span class="pn-fill" style="width: {100 * share:.1f}%"></span>' if row.scored else ""
    if row.probability is None:
        number = '<span class="pn-muted">—</span>'
    elif row.scored:
        number = f'<span class="pn-p">{row.probability:.3f}</span>'
    else:
        number = (
            f'<span class="pn-muted" title="{html.escape(NOT_ASSESSABLE_NOTE)}">{row.probability:.3f} '
            f"(not assessed)</span>"
        )
    return f'<span class="pn-bar" aria-hidden="true">{fill}</span> {number}'


def _reason(row: Row) -> str:
    if not row.details:
        return '<span class="pn-muted">—</span>'
    short = html.escape("; ".join(row.reasons))
    full = "".join(f"<li>{html.escape(d)}</li>" for d in row.details)
    return (
        f'<details title="{html.escape(" | ".join(row.details))}"><summary>{short}</summary>'
        f'<ul class="pn-full">{full}</ul></details>'
    )


def worklist_html(table: list[Row]) -> str:
    """The worklist as one HTML table (WORKLIST_RULES lay it out), every visitor's text escaped."""
    body = []
    for row in table:
        hue = HUES.get(row.decision, "inherit")
        body.append(
            f'<tr data-item="{row.item}">'
            f'<td class="pn-item"><a href="#item-{row.item}" aria-label="{html.escape(row.label)}">'
            f"Item&nbsp;{row.item}</a></td>"
            f'<td class="pn-decision"><span class="pn-badge" style="color: {hue}; border-color: {hue}">'
            f"{html.escape(row.decision)}</span></td>"
            f'<td class="pn-probability">{_bar(row)}</td>'
            f'<td class="pn-reason">{_reason(row)}</td>'
            f'<td class="pn-file">{html.escape(row.name)}</td>'
            "</tr>"
        )
    return (
        '<table class="pn-worklist"><caption class="pn-hidden">Worklist in reading order: each row links to its '
        "card</caption><thead><tr><th scope=col>Card</th><th scope=col>Decision</th>"
        "<th scope=col>Probability of pneumonia</th><th scope=col>Needs attention</th><th scope=col>File</th>"
        f"</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


# The worklist's layout: a table on a wide screen; on a phone each row a small block (link, decision and score on
# one line, the reason and the file name under them), so nothing runs off the side.
WORKLIST_RULES = (
    ".pn-worklist {width: 100%; border-collapse: collapse; font-size: 0.875rem; line-height: 1.4} "
    ".pn-worklist th {text-align: left; font-weight: 600; opacity: 0.75; padding: 0.3rem 0.5rem; "
    "border-bottom: 1px solid rgba(128, 128, 128, 0.45)} "
    ".pn-worklist td {padding: 0.35rem 0.5rem; vertical-align: top; border-bottom: 1px solid rgba(128, 128, 128, 0.2)} "
    ".pn-worklist td.pn-item, .pn-worklist td.pn-decision, .pn-worklist td.pn-probability {white-space: nowrap} "
    ".pn-worklist td.pn-file, .pn-worklist td.pn-reason {overflow-wrap: anywhere} "
    ".pn-worklist td.pn-reason {min-width: 12rem} .pn-worklist td.pn-file {min-width: 9rem} "
    ".pn-badge {display: inline-block; font-weight: 600; font-size: 0.8rem; border: 1px solid; border-radius: 0.5rem; "
    "padding: 0 0.4rem} "
    ".pn-bar {display: inline-block; width: 4.5rem; height: 0.55rem; border-radius: 0.3rem; vertical-align: middle; "
    "background: rgba(128, 128, 128, 0.22); overflow: hidden} "
    ".pn-fill {display: block; height: 100%; background: #ff4b4b} "
    ".pn-p {font-variant-numeric: tabular-nums} "
    ".pn-muted {opacity: 0.6; font-size: 0.8rem} "
    ".pn-worklist details summary {cursor: pointer} "
    ".pn-worklist ul.pn-full {margin: 0.25rem 0 0 1rem; padding: 0; font-size: 0.8rem} "
    ".pn-hidden {position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); "
    "white-space: nowrap} "
    "@media (max-width: 640px) {"
    ".pn-worklist thead {position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0)} "
    ".pn-worklist tr {display: flex; flex-wrap: wrap; align-items: baseline; gap: 0.15rem 0.6rem; "
    "padding: 0.45rem 0; border-bottom: 1px solid rgba(128, 128, 128, 0.25)} "
    ".pn-worklist td {display: block; padding: 0; border: 0} "
    ".pn-worklist td.pn-reason, .pn-worklist td.pn-file {flex-basis: 100%; min-width: 0} "
    ".pn-worklist td.pn-reason:has(> .pn-muted) {display: none}}"
)
