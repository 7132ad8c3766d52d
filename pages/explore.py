"""Dataset Explorer: what is in a labelled collection before training on it."""

import random
from pathlib import Path

import pandas as pd
import streamlit as st

from pneumo.app import auth, plots
from pneumo.app.ui import (
    active_model,
    data_root,
    model_state_key,
    plain,
    progress_bar,
    require_entry_point,
    settings,
    summarize_with_bar,
)
from pneumo.core.paths import CLASS_NAMES
from pneumo.data import collection as D
from pneumo.evaluation import audit, shortcuts

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
readable = summary.n_images if summary.n_readable is None else summary.n_readable
imbalance = f"{summary.imbalance_ratio:.2f} : 1" if readable else "—"
cols[1].metric("Imbalance ratio", imbalance, help="majority : minority class, over the readable films")
cols[2].metric("Patients", f"{len(summary.images_per_patient):,}")
cols[3].metric("Duplicate groups", len(summary.duplicate_groups))
cols[4].metric("Unreadable files", len(summary.unreadable))

# Class folders (and a manifest without a split column) have no splits: the scanner files their films under
# "train", which the chart must not show as a training split.
has_splits = summary.layout not in ("class folders", "CSV manifest") or list(summary.counts.index) != ["train"]
left, right = st.columns(2)
left.plotly_chart(plots.class_counts(summary.counts, splits=has_splits), width="stretch")
if not has_splits:
    left.caption("This folder has no train/val/test splits: training draws its own validation films from it.")
for line in summary.links.lines():
    st.info(plain(line), icon=":material/link:")
with right:
    if not readable:
        st.warning("No film of this folder could be read: class weights and the imbalance are not computed.")
    weights = ", ".join(f"{CLASS_NAMES[k]} × {v:.2f}" for k, v in summary.class_weights.items())
    normal_share = summary.counts.get("NORMAL", pd.Series(dtype=int)).sum() / max(summary.n_images, 1)
    st.markdown(
        f"**What the imbalance means for training.** In this folder {normal_share:.1%} of the images are NORMAL; the "
        f"majority class has {summary.imbalance_ratio:.2f}× the images of the minority. Unweighted, a model can score "
        f"well by leaning towards the majority; training weights the loss per class ({weights}) so both classes count "
        "equally. Another site or period may have a different mix, which moves precision and the share flagged at any "
        "threshold: check it on the Threshold page with that site's own labelled films."
    )
    st.markdown("**Patients per class:** " + ", ".join(f"{k}: {v:,}" for k, v in summary.patients_per_class.items()))

left, right = st.columns(2)
left.plotly_chart(plots.images_per_patient(summary.images_per_patient), width="stretch")
if summary.subtypes:
    right.plotly_chart(plots.subtypes(summary.subtypes), width="stretch")
stats = summary.image_stats
left, right = st.columns(2)
left.plotly_chart(plots.violins(stats, "mean", "Mean intensity per image, by class"), width="stretch")
right.plotly_chart(plots.violins(stats, "std", "Contrast (intensity std) per image, by class"), width="stretch")
varying = [c for c in ("width", "height") if not stats.empty and stats[c].nunique() > 1]
if varying:
    cols = st.columns(len(varying))
    for col, c in zip(cols, varying):
        col.plotly_chart(plots.distribution(stats, c, f"Image {c} (px)"), width="stretch")
elif not stats.empty:
    st.caption(f"Every image is {int(stats['width'].iloc[0])}×{int(stats['height'].iloc[0])} px.")

with st.expander(f"Exact duplicates: {len(summary.duplicate_groups)} groups (same pixels under different names)"):
    if summary.duplicate_groups:
        for group in summary.duplicate_groups[:12]:
            cols = st.columns(max(len(group), 4))
            for col, path in zip(cols, group):
                col.image(
                    D.read_item(path),
                    caption=plain(Path(path.split(D.NPZ_SEPARATOR)[0]).name),
                    clamp=True,
                    width="stretch",
                )
        if len(summary.duplicate_groups) > 12:
            st.caption(f"… and {len(summary.duplicate_groups) - 12} more groups.")
        st.caption("Duplicates are kept on one side of the validation split together with their patients.")
    else:
        st.write("None found.")
if summary.unreadable:
    with st.expander(f"Unreadable files: {len(summary.unreadable)}", expanded=True):
        st.dataframe(pd.DataFrame(summary.unreadable, columns=["path", "reason"]), hide_index=True, width="stretch")

st.subheader("Sample grid")
readable = summary.image_stats
# A button, not a number box: a box labelled "Shuffle" read as a count of something. Each press is a new
# random draw, kept (per folder) until the next press.
draw_key = f"sample-draw:{root}"
if st.button("Shuffle", icon=":material/shuffle:", key=f"shuffle:{root}", help="Show another random draw of images"):
    st.session_state[draw_key] = st.session_state.get(draw_key, 0) + 1
seed = st.session_state.get(draw_key, 0)
st.caption(f"Draw {seed + 1}: up to 8 films of each class at random; Shuffle shows another draw.")
for cls in CLASS_NAMES:
    paths = readable.loc[readable.class_name == cls, "path"].tolist()
    if not paths:
        continue
    st.markdown(f"**{cls}**")
    pick = random.Random(seed).sample(paths, min(8, len(paths)))
    cols = st.columns(8)
    for col, path in zip(cols, pick):
        col.image(
            D.read_item(path), caption=plain(Path(path.split(D.NPZ_SEPARATOR)[0]).name), clamp=True, width="stretch"
        )


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
    sources = audited["source"].value_counts().to_dict()
    st.caption(
        f"Confident learning (cleanlab) on {info['n']:,} films: scores out of fold for "
        f"{sources.get('out of fold', 0):,}, from the model itself for {sources.get('model', 0):,} (out of "
        "sample only where it never trained on them). The images are never changed; verdicts are saved beside "
        f"the data as {audit.REVIEW_FILE}, and `pneumo train --label-review` applies them."
    )
    suspects = audited[audited["suspect"]]
    st.markdown(
        f"**{info['suspects']} of {info['n']:,} films ({info['suspect_share']:.1%}) are suspects**: their "
        "given label is contradicted by the score of a model that never saw them."
    )
    if not suspects.empty:
        order = st.radio(
            "Sort", ["most suspicious first", "least suspicious first"], horizontal=True, key=f"audit-sort:{root}"
        )
        # The score is cleanlab's label quality (self-confidence): the lower it is, the more the model doubts the
        # given label, so the most suspicious films have the lowest scores and come first in ascending order.
        shown = suspects.sort_values("score", ascending=order.startswith("most"), kind="stable").head(24)
        # Each widget starts at the verdict saved in the review file, so a second session shows the first one's
        # verdicts instead of "keep" everywhere. The file is read at every run: a widget this session has not
        # touched follows a verdict another reviewer saved since; shown_before remembers what each widget last
        # showed from the file, the baseline a save compares against.
        review_file = audit.review_path(root)
        try:
            saved = audit.saved_verdicts(review_file, shown["path"])
            review_problem = None
        except (ValueError, OSError) as exc:  # ReviewError (duplicate or conflicting rows, …): saving would refuse
            saved, review_problem = {}, plain(exc)
            st.error(f"The saved verdicts cannot be read: {review_problem}", icon=":material/error:")
        verdicts: dict[str, str] = {}
        shown_key = f"verdicts-shown:{root}"
        shown_before: dict[str, str] = st.session_state.setdefault(shown_key, {})
        cols = st.columns(6)
        for i, r in enumerate(shown.itertuples()):
            with cols[i % 6]:
                st.image(D.read_item(r.path), clamp=True, width="stretch")
                st.caption(
                    f"{plain(Path(r.path).name)} · labelled {CLASS_NAMES[int(r.label)]} · p={r.probability:.3f} · "
                    f"score {r.score:.3f}"
                )
                widget = f"verdict:{root}:{r.path}"
                was = shown_before.get(r.path)
                if was is None or st.session_state.get(widget, was) == was:  # untouched here: show the file's
                    shown_before[r.path] = st.session_state[widget] = saved.get(r.path, "keep")
                verdicts[r.path] = st.selectbox("Verdict", audit.VERDICTS, key=widget, label_visibility="collapsed")
        cfg = settings()
        blocked = auth.refusal(auth.REVIEW_LABELS) or (
            f"The saved verdicts cannot be read: {review_problem}" if review_problem else None
        )
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
        zooms = tuple((framing.get("worst_in_range") or {}).get("zooms") or (0.85, 1.3))
        st.plotly_chart(
            plots.framing_chart(framing["conditions"], zooms),
            width="stretch",
            key=f"explore-framing:{root}",
            config={"displayModeBar": False},
        )
        st.caption(plain(framing.get("how", "")))
