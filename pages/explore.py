"""Dataset Explorer: what is in a labelled collection before training on it."""

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from pneumo.app import auth, plots
from pneumo.app.ui import (
    active_model,
    data_root,
    film_thumbnail,
    model_state_key,
    plain,
    progress_bar,
    require_entry_point,
    summarize_with_bar,
)
from pneumo.core.paths import CLASS_NAMES
from pneumo.data import overview
from pneumo.evaluation import audit, card_figures, review, shortcuts

require_entry_point()

st.title("Dataset Explorer")
root = data_root()
if root is None:
    st.info(
        "No data folder is configured. Add one under data/, in .streamlit/secrets.toml ([pneumo] data_roots) "
        "or in the PNEUMO_DATA_ROOTS environment variable."
    )
    st.stop()
try:
    summary = summarize_with_bar(root)
except (ValueError, OSError) as exc:  # DatasetError and any unreadable folder: a message, never a traceback
    st.error(f"This data folder cannot be read: {plain(exc)}", icon=":material/error:")
    st.stop()

st.caption(f"{plain(summary.root)} — {summary.layout}, {summary.n_images:,} images")
cols = st.columns(5)
cols[0].metric("Images", f"{summary.n_images:,}")
cols[1].metric(
    "Imbalance ratio", overview.imbalance_words(summary), help="majority : minority class, over the readable films"
)
cols[2].metric("Patients", f"{len(summary.images_per_patient):,}")
cols[3].metric("Duplicate groups", len(summary.duplicate_groups))
cols[4].metric("Unreadable files", len(summary.unreadable))

has_splits = overview.has_splits(summary)
left, right = st.columns(2)
left.plotly_chart(plots.class_counts(summary.counts, splits=has_splits), width="stretch")
if not has_splits:
    left.caption("This folder has no train/val/test splits: training draws its own validation films from it.")
for line in summary.links.lines():
    st.info(plain(line), icon=":material/link:")
with right:
    if not overview.readable_count(summary):
        st.warning("No film of this folder could be read: class weights and the imbalance are not computed.")
    st.markdown(
        f"**What the imbalance means for training.** In this folder {overview.normal_share(summary):.1%} of the "
        f"images are NORMAL; the majority class has {summary.imbalance_ratio:.2f}× the images of the minority. "
        "Unweighted, a model can score well by leaning towards the majority; training weights the loss per class "
        f"({plain(overview.weights_words(summary))}) so both classes count equally. Another site or period may have "
        "a different mix, which moves precision and the share flagged at any threshold: check it on the Threshold "
        "page with that site's own labelled films."
    )
    st.markdown(f"**Patients per class:** {plain(overview.patients_words(summary))}")

left, right = st.columns(2)
left.plotly_chart(plots.images_per_patient(summary.images_per_patient), width="stretch")
if summary.subtypes:
    right.plotly_chart(plots.subtypes(summary.subtypes), width="stretch")
stats = summary.image_stats
left, right = st.columns(2)
left.plotly_chart(plots.violins(stats, "mean", "Mean intensity per image, by class"), width="stretch")
right.plotly_chart(plots.violins(stats, "std", "Contrast (intensity std) per image, by class"), width="stretch")
varying = overview.varying_sizes(stats)
if varying:
    cols = st.columns(len(varying))
    for col, c in zip(cols, varying):
        col.plotly_chart(plots.distribution(stats, c, f"Image {c} (px)"), width="stretch")
elif one_size := overview.one_size_words(stats):
    st.caption(one_size)


def show_film(column: Any, path: str, caption: str | None = None) -> None:
    """A film in a grid cell (decoded once, kept small: ui.film_thumbnail), or why it cannot be shown."""
    try:
        picture = film_thumbnail(path)
    except (ValueError, OSError) as exc:  # changed or removed since the folder was read
        column.caption(f"{plain(overview.file_name(path))}: {plain(getattr(exc, 'reason', exc))}")
        return
    column.image(picture, caption=caption, clamp=True, width="stretch")


with st.expander(f"Exact duplicates: {len(summary.duplicate_groups)} groups (same pixels under different names)"):
    if summary.duplicate_groups:
        for group in summary.duplicate_groups[: overview.DUPLICATE_GROUPS_SHOWN]:
            cols = st.columns(max(len(group), 4))
            for col, path in zip(cols, group):
                show_film(col, path, plain(overview.file_name(path)))
        if more := overview.more_groups_words(len(summary.duplicate_groups)):
            st.caption(more)
        st.caption("Duplicates are kept on one side of the validation split together with their patients.")
    else:
        st.write("None found.")
if summary.unreadable:
    with st.expander(f"Unreadable files: {len(summary.unreadable)}", expanded=True):
        st.dataframe(pd.DataFrame(summary.unreadable, columns=["path", "reason"]), hide_index=True, width="stretch")

st.subheader("Sample grid")
# A button, not a number box: a box labelled "Shuffle" read as a count of something. Each press is a new
# random draw, kept (per folder) until the next press.
draw_key = f"sample-draw:{root}"
if st.button("Shuffle", icon=":material/shuffle:", key=f"shuffle:{root}", help="Show another random draw of images"):
    st.session_state[draw_key] = st.session_state.get(draw_key, 0) + 1
seed = st.session_state.get(draw_key, 0)
st.caption(
    f"Draw {seed + 1}: up to {overview.GRID_PER_CLASS} films of each class at random; Shuffle shows another draw."
)
for cls, pick in overview.sample_draw(summary.image_stats, seed).items():
    st.markdown(f"**{cls}**")
    cols = st.columns(overview.GRID_PER_CLASS)
    for col, path in zip(cols, pick):
        show_film(col, path, plain(overview.file_name(path)))


st.subheader("Suspected label errors")
loaded = active_model()


@st.cache_data(show_spinner="Auditing labels…", max_entries=4)
def audited_for(root: str, model_key: str) -> pd.DataFrame:
    return audit.audit_folder(root, loaded.path)


audited = None
if loaded is None:
    st.info("Select a model in the sidebar: the audit reads its predictions out of fold.")
else:
    try:
        audited = audited_for(str(root), model_state_key(loaded))
    except (ValueError, OSError) as exc:
        st.error(f"The labels of this folder cannot be audited: {plain(exc)}", icon=":material/error:")
        audited = None
if loaded is not None and audited is not None:
    info = audit.summary(audited)
    out_of_fold, by_model = review.score_sources(audited)
    st.caption(
        f"Confident learning (cleanlab) on {info['n']:,} films: scores out of fold for {out_of_fold:,}, from the "
        f"model itself for {by_model:,} (out of sample only where it never trained on them). The images are never "
        f"changed; verdicts are saved beside the data as {audit.REVIEW_FILE}, and `pneumo train --label-review` "
        "applies them."
    )
    st.markdown(
        f"**{info['suspects']} of {info['n']:,} films ({info['suspect_share']:.1%}) are suspects**: their "
        "given label is contradicted by the score of a model that never saw them."
    )
    if info["suspects"]:
        order = st.radio("Sort", review.ORDERS, horizontal=True, key=f"audit-sort:{root}")
        shown = review.suspects_in_order(audited, order)
        # Each widget starts at the verdict saved in the review file, so a second session shows the first one's
        # verdicts instead of "keep" everywhere. The file is read at every run: a widget this session has not
        # touched follows a verdict another reviewer saved since; shown_before remembers what each widget last
        # showed from the file, the baseline a save compares against.
        review_file = audit.review_path(root)
        try:
            saved = audit.saved_verdicts(review_file, shown["path"])
            review_problem = None
        except (ValueError, OSError) as exc:  # ReviewError (duplicate or conflicting rows, …): saving would refuse
            saved, review_problem = {}, f"The saved verdicts cannot be read: {plain(exc)}"
            st.error(review_problem, icon=":material/error:")
        verdicts: dict[str, str] = {}
        shown_key = f"verdicts-shown:{root}"
        shown_before: dict[str, str] = st.session_state.setdefault(shown_key, {})
        cols = st.columns(6)
        for i, r in enumerate(shown.itertuples()):
            with cols[i % 6]:
                show_film(st, r.path)
                st.caption(
                    f"{plain(Path(r.path).name)} · labelled {CLASS_NAMES[int(r.label)]} · p={r.probability:.3f} · "
                    f"score {r.score:.3f}"
                )
                widget = f"verdict:{root}:{r.path}"
                start = review.verdict_shown(shown_before.get(r.path), st.session_state.get(widget), saved, r.path)
                if start is not None:  # untouched here: the box follows the review file
                    shown_before[r.path] = st.session_state[widget] = start
                verdicts[r.path] = st.selectbox("Verdict", audit.VERDICTS, key=widget, label_visibility="collapsed")
        blocked = auth.refusal(auth.REVIEW_LABELS) or review_problem
        if st.button("Save verdicts", disabled=blocked is not None, help=blocked, key=f"save-verdicts:{root}"):
            # Only what this reviewer changed is written (merged under a lock into the file as it is now): an
            # untouched widget neither overwrites a verdict saved meanwhile nor records "keep" for an unseen film.
            changed = audit.changed_verdicts(verdicts, shown_before)
            try:
                written = audit.write_review(review_file, changed, audited) if changed else review_file
            except (ValueError, OSError) as exc:
                st.error(f"The verdicts cannot be saved: {plain(exc)}", icon=":material/error:")
            else:
                shown_before.update(changed)  # saved: the new baseline
                st.toast(
                    f"Saved {len(changed)} changed verdict(s) into {written.name}."
                    if changed
                    else "No verdict changed."
                )

st.subheader("Cues that are not anatomy")
st.caption(
    "Framing, the film's border, burned-in marks and exposure statistics, each asked alone (and all together) how "
    "well it predicts the label, cross-validated by patient. A strong cue is something other than the lungs that "
    "tells the classes apart in this collection: a network can learn it, and figures on the same collection will not "
    "show it."
)
shortcut_key = f"shortcuts:{root}"
if st.button("Run the shortcut audit", key=f"run-shortcuts:{root}"):
    bar, tick = progress_bar("Measuring each film's cues…")
    try:
        st.session_state[shortcut_key] = shortcuts.audit_folder(str(root), progress=tick)
    except (ValueError, OSError) as exc:
        st.error(f"The shortcut audit cannot run on this folder: {plain(exc)}", icon=":material/error:")
    bar.empty()
found = st.session_state.get(shortcut_key)
if found:
    st.markdown(
        f"**All {len(found['cues'])} cues together: ROC AUC {found['all_cues_roc_auc']:.3f}** on {found['n']:,} films "
        f"(0.5 is chance). Strongest alone: **{plain(found['strongest'])}**."
    )
    st.plotly_chart(
        plots.cue_chart(found["cues"]), width="stretch", key=f"cue-chart:{root}", config={"displayModeBar": False}
    )
    st.dataframe(
        pd.DataFrame(found["framing_by_class"]),
        hide_index=True,
        width="stretch",
        column_config={k: st.column_config.NumberColumn(format="%.3f") for k in ("p10", "median", "p90")},
    )
    st.caption(plain(found["how"]))
    framing = loaded.card.shift_checks.get("framing") if loaded is not None else None
    if framing and framing.get("conditions"):
        st.markdown("**The active model's decision under the framing sweep** (from its card):")
        st.plotly_chart(
            plots.framing_chart(framing["conditions"], card_figures.watched_zooms(framing)),
            width="stretch",
            key=f"explore-framing:{root}",
            config={"displayModeBar": False},
        )
        st.caption(plain(framing.get("how", "")))
