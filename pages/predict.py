"""Predict: drop X-rays, read the worklist, the probability, the decision and the Grad-CAM maps."""

import functools
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from pneumo.app import texts, viewer, worklist
from pneumo.app.cards import (
    CARD_MAPS_OFF_KEY,
    CARD_MUTED_KEY,
    CARD_NOTES_KEY,
    CARD_PICTURE_ALT,
    CARD_PICTURES_KEY,
    Upload,
    batch_pdf_on_click,
    cached_reading,
    card_film,
    card_heatmaps,
    card_pictures,
    card_rules,
    map_peak_note,
    native_film,
    overlay_png_on_click,
    reading_pdf_on_click,
)
from pneumo.app.pacs_panel import pacs_source, ui_pacs_config
from pneumo.app.sessions import current_session, enforce_upload_budgets
from pneumo.app.settings import SAMPLES_DIR
from pneumo.app.ui import (
    DISCLAIMER,
    LAST_DRIFT_KEY,
    USE_SAMPLES_KEY,
    active_model,
    model_state_key,
    plain,
    progress_bar,
    require_entry_point,
    settings,
)
from pneumo.app.verdicts import (
    load_verdicts,
    log_batch_once,
    pacs_reading_ids,
    read_before_notes,
    recent_history,
    reopen_reading,
    reopenable,
    verdict_buttons,
)
from pneumo.core.memory import trim
from pneumo.data.pixels import resize
from pneumo.evaluation import drift
from pneumo.integrations.records import ReadingSource, RecordsError, pixel_sha256
from pneumo.integrations.report import safe_csv
from pneumo.model import reading as predict

require_entry_point()
LIST_SIDE = 384  # the 8-bit film kept for every reading of a batch; cards on screen fetch theirs at display size

st.title("Predict")
st.caption(DISCLAIMER)
loaded = active_model()
if loaded is None:
    st.error("No model is available. Train one on the Train page, or restore models/model.keras.")
    st.stop()
model_key = model_state_key(loaded)


@st.cache_data(show_spinner="Checking the batch for drift…", max_entries=16, ttl=3600)
def cached_drift(
    digests: tuple[str, ...], model_key: str, _images: list[np.ndarray], _probabilities: list[float]
) -> Any:
    return drift.check_batch(loaded, _images, _probabilities)


controls = st.columns([2, 2, 3])
band = controls[0].number_input(
    "Uncertain band (± score)",
    0.0,
    0.3,
    0.05,
    0.01,
    help="Cases this close to the threshold are labelled 'UNCERTAIN — review'.",
)
opacity = controls[1].slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05)
controls[2].markdown(texts.predict_operating_point(loaded))

pacs_config = ui_pacs_config()
source_kind = (
    st.radio("Source", ["Upload files", "From PACS"], horizontal=True, key="predict-source")
    if pacs_config is not None
    else "Upload files"
)
files: list[tuple[str, Any]] = []
pacs_run = None
if source_kind == "From PACS":
    pacs_run = pacs_source(pacs_config, loaded, model_key)
    if pacs_run is None:
        st.stop()
else:
    # Before the uploader reads its files: the server holds uploads within a byte budget per session and in
    # all, the oldest released first as new ones arrive; what this session lost is said here.
    budgets = settings()
    released = enforce_upload_budgets(budgets.session_upload_bytes, budgets.server_upload_bytes)
    uploads = st.file_uploader(
        "Drop chest X-rays (PNG, JPEG, BMP, TIFF or DICOM)",
        accept_multiple_files=True,
        help="The format is read from the content, not the file name.",
    )
    if released:
        st.warning(
            texts.release_notice(released, budgets.session_upload_bytes, budgets.server_upload_bytes),
            icon=":material/delete_sweep:",
        )
    # Streamlit made the widget's files before this run started: one released just now is still among them.
    gone = {r.upload.file_id for r in released}
    files = [(u.name, u) for u in uploads or [] if u.file_id not in gone]
if not files and pacs_run is None:
    st.session_state.setdefault(USE_SAMPLES_KEY, False)
    use = st.toggle("Use the bundled sample images", key=USE_SAMPLES_KEY)
    if use:
        samples = sorted(SAMPLES_DIR.glob("*/*.jpeg"))
        picked = st.multiselect(
            "Samples",
            [str(p.relative_to(SAMPLES_DIR)) for p in samples],
            default=[str(p.relative_to(SAMPLES_DIR)) for p in samples[:1] + samples[-1:]],
        )
        files = [(name, SAMPLES_DIR / name) for name in picked]


def show_reopened(reading_id: int, source: str) -> None:
    """A logged reading drawn again from its source: its stored decision, the film, and its map when the loaded
    model is the one that read it."""
    try:
        found = reopen_reading(reading_id, ui_pacs_config() if source == "pacs" else None)
    except (RecordsError, ValueError) as exc:
        st.error(plain(exc), icon=":material/block:")
        return
    st.markdown(texts.reopened_line(found.row, found.found_at, found.checked))
    again = predict.pack(predict.compact(found.reading))
    heat = None
    if not worklist.scored(found.reading):  # as on the cards: no map over a film the model cannot read
        st.caption("Map off: the input check did not take this for a film the model can read.")
    elif found.same_model(loaded):
        heat = card_heatmaps(loaded, found.pixel_sha256 or f"reading-{reading_id}", model_key, again)["gradcam"]
    else:
        st.caption("The model in use did not make this reading: its map is not drawn.")
    centre, width = viewer.PRESETS[next(iter(viewer.PRESETS))]
    film = native_film(found.reading)  # reopen refuses a reading without a film
    figure = viewer.film_figure(film, centre, width, heat, opacity)
    st.plotly_chart(figure, config=viewer.CONFIG, key=f"reopen-figure-{reading_id}")


def history_panel(batch_key: Any) -> None:
    """The signed-in (or local) user's own history: what was read, when, by which model (no films are stored),
    with the readings of files and PACS films that can be opened again. Shown with or without a batch; with one,
    read once per batch."""
    with st.expander("Your recent readings", icon=":material/history:"):
        history = recent_history(batch_key=batch_key)
        if history:
            st.dataframe(history, hide_index=True, width="stretch")
        else:
            st.caption("No readings of yours are stored yet.")
        choices = {h["reading"]: h for h in reopenable(history)}
        if choices:
            # Films read from a file or a PACS can be drawn again, with their maps, once the source still holds the
            # same pixels (no film is stored); an upload's cannot.
            chosen = st.selectbox(
                "Open a reading again",
                list(choices),
                index=None,
                format_func=lambda n: f"#{n} · {choices[n]['time (UTC)']} · {choices[n]['film']}",
                key=f"reopen-pick:{model_key}",
                placeholder="a reading of a file or a PACS film",
            )
            if chosen is not None:
                show_reopened(int(chosen), choices[chosen]["source"])


if not files and pacs_run is None:
    st.info("Drop one or more X-rays above, or switch on the sample images.")
    history_panel(None)
    st.stop()

digests, readings = [], []
pixel_hashes: list[str | None] = []  # each upload's film hash, as the readings database keys films
if pacs_run is not None:
    pacs_readings = pacs_run.readings()  # the run's own readings; a card shows a compacted copy of its one
    readings = [predict.pack(predict.compact(r, LIST_SIDE)) for r in pacs_readings]
    digests = [worklist.pacs_digest(r.study_uid, r.sop_uid) for r in pacs_run.results if r.reading is not None]
bar, update = progress_bar("Reading…") if len(files) > 1 else (None, None)
session = current_session()  # one decode at a time per visitor (pneumo.app.cards.session_slot)
for i, (name, source) in enumerate(files):
    # One file's bytes at a time: an upload is read when its turn comes and dropped after.
    data = source.read_bytes() if isinstance(source, Path) else source.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    digests.append(digest)
    # The batch keeps each film at LIST_SIDE px as 8-bit samples (for repeats, drift, the maps and the
    # reports: 147 KB a film); a card on screen fetches its film again at display size (card_source).
    full = cached_reading(loaded, digest, name, data, model_key, band, session)
    readings.append(predict.pack(predict.compact(full, LIST_SIDE)))
    pixel_hashes.append(pixel_sha256(full.xray.pixels) if full.xray is not None else None)
    del data, full
    if update:
        update(i + 1, len(files))
if bar:
    bar.empty()
trim()  # the decoders' large buffers go back to the system, not into the heap's free lists
readings = predict.mark_repeats(readings)
assessed = [r for r in readings if r.xray is not None]


def batch_drift() -> Any:
    """The batch's drift check over every film read (cached by the films' digests); None for one film."""
    if len(readings) < 2:
        return None
    return cached_drift(
        tuple(d for d, r in zip(digests, readings) if r.xray is not None),
        model_key,
        [resize(predict.unpack(r).xray.pixels, loaded.input_size) for r in assessed],
        [r.probability for r in assessed],
    )


# Every reading is stored once per batch (readings database), with its batch's drift result; PACS readings were
# stored by the screening itself. The ids let a reader's verdict on a card land on its reading. What the database
# says of the batch (the verdicts, films read before, the history) is read once per batch, not on every rerun.
batch_key = [*digests, model_key, str(band), str(loaded.threshold)]
if pacs_run is None:
    reading_ids = log_batch_once(
        readings,
        loaded,
        batch_key,
        sources=[ReadingSource.upload(name) for name, _ in files],
        pixel_hashes=pixel_hashes,
        drift=batch_drift,
    )
else:
    reading_ids = pacs_reading_ids(pacs_run, loaded)
# A film read before (the same pixels, by any model) says when and with what result.
earlier_notes = read_before_notes(pixel_hashes if pacs_run is None else [None] * len(readings), reading_ids, batch_key)
load_verdicts(reading_ids)
st.session_state[LAST_DRIFT_KEY] = None  # until this batch's check is made (a run cut short leaves none)
# The batch's drift check shows here, but is made after the cards: a reader wants those first.
drift_box = st.container()
for caution in loaded.card.cautions():
    st.warning(texts.caution_line(caution), icon=":material/report:")


def heatmap(i: int) -> np.ndarray:
    """Reading i's Grad-CAM map, the one its card, its downloads and the batch report show."""
    return card_heatmaps(loaded, digests[i], model_key, readings[i])["gradcam"]


table = predict.worklist(readings, loaded)  # the CSV's rows
sequence = worklist.sequence(readings)  # the reading order of the worklist, the cards and the viewer
viewable = worklist.viewable(readings)
VIEWER = "predict-viewer"  # session state: (item index, digest) of the film open in the full-size viewer
st.subheader("Worklist")
rows = worklist.rows(readings)
st.html(f"<style>{worklist.WORKLIST_RULES}</style>")  # before the table: it is never drawn without them
# Each row links to its card (named for a screen reader), the reason for attention beside the decision, the full
# warning on hover and on expand; a long batch scrolls within its own box.
with st.container(height=440 if len(rows) > 12 else "content", key="worklist"):
    st.html(worklist.worklist_html(rows))
if viewable and st.button(
    "Read the films in order, full size",
    icon=":material/slideshow:",
    help="The full-size viewer (zoom, pan, window/level, the Grad-CAM layer), with the previous and next film of "
    "the worklist on the keys P and N.",
):
    st.session_state[VIEWER] = (viewable[0], digests[viewable[0]])
downloads = st.columns(2)
downloads[0].download_button(
    "Download worklist CSV",
    safe_csv(table),
    "pneumo_worklist.csv",
    "text/csv",
    help="Path, probability, decision, warnings, threshold, model name, card hash and time.",
)


def film_source(i: int) -> Upload | predict.Reading:
    """Where reading i's film at its own resolution comes from (the full-size viewer): the PACS run's reading,
    or the upload."""
    if pacs_run is not None:
        return pacs_readings[i]
    name, source = files[i]
    return Upload(loaded, digests[i], name, source, model_key, band, session)


def card_source(i: int) -> Upload | predict.Reading:
    """Where reading i's film at display size comes from: the PACS run's reading, or the upload (the shared
    cache, or its bytes read again)."""
    if pacs_run is not None:
        return predict.compact(pacs_readings[i])
    name, source = files[i]
    return Upload(loaded, digests[i], name, source, model_key, band, session)


def show_card(i: int) -> None:
    source = card_source(i) if readings[i].xray is not None else None
    reading = readings[i]
    if source is not None:
        reading = card_film(source, readings[i])
        source = source if isinstance(source, Upload) else predict.pack(source)  # what the downloads keep
    with st.container(border=True):
        # A heading holds the item number only; the file name (a visitor's text) is shown as plain text.
        st.subheader(f"Item {i + 1}", anchor=f"item-{i + 1}")
        st.text(Path(reading.name).name)
        if reading.error:
            st.error(f"This file could not be read: {plain(reading.error)}", icon=":material/block:")
            return
        scored = worklist.scored(reading)
        with st.container(horizontal=True, gap="medium"):  # side by side; wrapped on a phone
            # No decision, no score in large type: a not-assessable film's probability is greyed and small.
            with st.container(key=f"{CARD_MUTED_KEY if not scored else 'cardscore'}-{i}", width="content"):
                st.metric(
                    "Probability of pneumonia",
                    f"{reading.shown:.3f}",
                    width="content",
                    help=worklist.score_help(reading),
                )
            st.markdown(f"Decision  \n{worklist.badge(reading.decision)}", width="content")
            if reading.decision == predict.NOT_ASSESSABLE or reading.repeat_of is not None or reading.warnings:
                with st.container(key=f"{CARD_NOTES_KEY}-{i}"):  # the rest of the row (card_rules)
                    if reading.decision == predict.NOT_ASSESSABLE:
                        st.caption(worklist.NOT_ASSESSABLE_NOTE)
                    if reading.repeat_of is not None:
                        st.markdown(f"Repeats [item {reading.repeat_of + 1}](#item-{reading.repeat_of + 1}).")
                    for warning in reading.warnings:
                        st.warning(plain(warning), icon=":material/warning:")
        verdict_buttons(reading_ids[i], reading.decision)  # the reader's verdict, below the reading's row
        if earlier_notes[i]:
            st.caption(f":material/history: {plain(earlier_notes[i])}")
        pixels = reading.xray.pixels
        heat = heatmap(i)
        # Where the model looked says nothing about pneumonia on a film it cannot read: such a card's maps are off
        # until asked for (card_rules hides them; they stay in the picture element, so the toggle fetches nothing).
        maps_on = scored or st.toggle(
            "Show the maps anyway",
            key=f"maps-{i}-{digests[i]}",
            help="The Grad-CAM maps of a film the input check does not take for a chest film.",
        )
        with st.container(key=f"{'cardmapson' if maps_on else CARD_MAPS_OFF_KEY}-{i}"):
            with st.container(key=f"{CARD_PICTURES_KEY}-{i}"):  # one element, laid out by card_rules
                st.image(
                    card_pictures(loaded, digests[i], model_key, readings[i], pixels),
                    alt=CARD_PICTURE_ALT,
                    width="stretch",
                )
        if not maps_on:
            st.caption(":material/visibility_off: Maps off: this is not a film the model can read.")
        peak_note = maps_on and map_peak_note(loaded, digests[i], model_key, readings[i], pixels, heat)
        if peak_note:
            st.caption(f":material/center_focus_weak: {peak_note}")
        with st.container(horizontal=True):
            if st.button("Open full size", key=f"view-{i}-{digests[i]}", icon=":material/fullscreen:"):
                st.session_state[VIEWER] = (i, digests[i])
            st.download_button(
                f"Grad-CAM overlay ({pixels.shape[1]}×{pixels.shape[0]} PNG)",
                overlay_png_on_click(source, readings[i], heat, opacity),
                f"{Path(reading.name).stem}_gradcam.png",
                "image/png",
                key=f"png-{i}-{digests[i]}",
            )
            st.download_button(
                "Report for this image (PDF)",
                reading_pdf_on_click(source, readings[i], loaded, heat, i + 1),
                f"{Path(reading.name).stem}_report.pdf",
                "application/pdf",
                key=f"pdf-{i}-{digests[i]}-{model_key}",
            )
        if reading.xray.dicom:
            with st.expander("DICOM header (no patient identifiers)"):
                st.table({"field": list(reading.xray.dicom), "value": list(reading.xray.dicom.values())})


# Every card's pictures laid out, the maps over their films at the slider's opacity: a change of opacity
# re-sends this rule only, not the pictures.
st.html(f"<style>{card_rules(opacity)}</style>")
# Cards in pages (worklist.CARDS_PER_PAGE), in worklist order.
pages_total = worklist.page_count(len(sequence))
page_no = 1
if pages_total > 1:
    page_no = int(
        st.number_input(worklist.page_label(pages_total), 1, pages_total, 1, key=f"card-page:{hash(tuple(digests))}")
    )
card_page = worklist.card_page(sequence, page_no)
if any(readings[i].xray is not None for i in card_page.items):  # said once for every card's maps
    st.caption(
        "In the maps, warm colours mark the regions that drove the model towards its decision for that "
        "image; they are not a segmentation of disease. Each map is scaled to its own peak (1.0 on the bar): "
        "compare regions within a film, not colours between films."
    )
for title, items in worklist.page_sections(readings, card_page):
    st.subheader(title)
    for i in items:
        show_card(i)
if card_page.caption:
    st.caption(card_page.caption)

# The batch-level check, in its place above the worklist; the batch PDF carries its words.
with drift_box:
    if len(readings) > 1:
        # Drift is a property of a batch, not of a film: one test over every film read here.
        drift_result = batch_drift()
        if drift_result is not None:  # the same words on the Overview and in the batch PDF
            st.session_state[LAST_DRIFT_KEY] = texts.drift_summary(
                drift_result.shifted, drift_result.method, drift_result.n, drift_result.p_value
            )
        notice = texts.batch_drift_notice(
            drift_result, None if drift_result is not None else drift.why_unavailable(loaded, len(assessed))
        )
        if notice.kind == "error":
            st.error(notice.text, icon=":material/trending_up:")
        else:
            st.caption(notice.text)
downloads[1].download_button(
    "Download study report (PDF)",
    batch_pdf_on_click(readings, digests, loaded, model_key, st.session_state.get(LAST_DRIFT_KEY)),
    "pneumo_report.pdf",
    "application/pdf",
    key=f"pdf-batch-{model_key}",
    help="Every image with its Grad-CAM, the decision, the operating point and the model's figures.",
)


# The full-size viewer: the film open in it at its own resolution (zoom, pan, window/level, the Grad-CAM layer),
# the previous and next film of the worklist on P and N. Open while VIEWER names a film of this batch: a card's
# "Open full size" or the worklist's button sets it, closing the dialog clears it. Its widgets rerun the dialog only.
@st.dialog("Film viewer", width="large", on_dismiss=functools.partial(st.session_state.pop, VIEWER, None))
def show_viewer() -> None:
    # The film from the state, not an argument: a rerun of the dialog alone calls it with the arguments it was
    # first called with.
    i = st.session_state[VIEWER][0]
    at, before, after = worklist.neighbours(viewable, i)
    steps = {
        "Previous film": (before, "P", ":material/arrow_back:"),
        "Next film": (after, "N", ":material/arrow_forward:"),
    }
    with st.container(horizontal=True, vertical_alignment="center", key="viewer-nav"):
        for label, (j, key, icon) in steps.items():
            st.button(
                label,
                key=f"viewer-{key}",
                icon=icon,
                shortcut=key,
                disabled=j is None,
                on_click=st.session_state.__setitem__,
                args=(VIEWER, (j, digests[j])) if j is not None else None,
            )
        st.markdown(f"Film **{at}** of {len(viewable)} in worklist order")
    reading = readings[i]
    scored = worklist.scored(reading)
    st.markdown(f"**Item {i + 1}** · {worklist.badge(reading.decision)} · {worklist.viewer_score(reading)}")
    st.text(Path(reading.name).name)
    for warning in reading.warnings:
        st.warning(plain(warning), icon=":material/warning:")
    controls = st.columns([3, 2, 2, 2], vertical_alignment="bottom")
    preset = controls[0].selectbox("Window preset", list(viewer.PRESETS), key="viewer-preset")
    centre_default, width_default = viewer.PRESETS[preset]
    # One pair of sliders per preset: picking a preset starts from its window, the sliders fine-tune it.
    centre = controls[1].slider(
        "Window centre (level)", 0, viewer.LEVELS - 1, centre_default, key=f"viewer-centre-{preset}"
    )
    width = controls[2].slider("Window width", 1, viewer.LEVELS, width_default, key=f"viewer-width-{preset}")
    layer = controls[3].toggle(
        "Grad-CAM layer",
        value=scored,
        key=f"viewer-map-{i}-{digests[i]}",
        help="Off at first for a film the input check does not take for a chest film.",
    )
    film = native_film(film_source(i))
    figure = viewer.film_figure(film, centre, width, heatmap(i) if layer else None, opacity)
    st.plotly_chart(figure, config=viewer.CONFIG, key="viewer-figure")
    st.caption(viewer.view_caption(film.shape, centre, width, layer))


if worklist.still_open(st.session_state.get(VIEWER), viewable, digests):
    show_viewer()
else:  # none open, or a film of an earlier batch
    st.session_state.pop(VIEWER, None)


history_panel(batch_key)
