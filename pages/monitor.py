"""Monitor: the model in use, from its logged readings and the readers' verdicts (pneumo.integrations.records)."""

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from pneumo.app.ui import DISCLAIMER, plain, require_entry_point, settings
from pneumo.app.verdicts import app_database_url
from pneumo.integrations.records import RecordsError, monitor_model

require_entry_point()
st.title("Monitor")
st.caption(DISCLAIMER)

config = settings()
model_path = Path(st.session_state.get("model_path") or config.models_dir / "model.keras")
if not model_path.exists() or not config.is_allowed_model(model_path):
    st.error("No model is available. Train one on the Train page, or restore models/model.keras.")
    st.stop()

controls = st.columns(3)
by = controls[0].radio("Period", ["day", "week"], horizontal=True, key="monitor-by")
since = controls[1].date_input("Readings from", value=None, key="monitor-since", help="Empty: every reading.")
target = controls[2].number_input(
    "Target recall of the proposed point",
    min_value=0.5,
    max_value=1.0,
    value=None,
    step=0.01,
    placeholder="the card's own",
    key="monitor-target",
    help="Empty: the card's own target recall.",
)
try:
    report = monitor_model(
        model_path,
        operating_point=st.session_state.get("operating_point"),
        since=since,
        by=str(by),
        target_recall=target,
        url=app_database_url(),
    )
except (RecordsError, ValueError, OSError) as exc:
    st.error(f"The monitor cannot be shown: {plain(exc)}", icon=":material/error:")
    st.stop()

st.markdown(
    f"Model **{plain(report.model)}** at operating point **{plain(report.operating_point)}**, "
    f"threshold **{report.threshold:.4f}**."
)
if report.model_sha256:
    # The readings counted are this file's (by its SHA-256), not every model that shares the card's name.
    st.caption(f"Readings of the model file with SHA-256 `{report.model_sha256[:16]}…`")
if report.readings == 0:
    st.info(
        "No readings of this model are logged yet. Readings are logged by `python -m pneumo predict --log` and by "
        "the Predict page; readers' verdicts by `python -m pneumo verdicts import` and the Predict page's cards."
    )
    st.stop()


def bounded(value: float | None, low: float | None) -> tuple[str, str | None]:
    if value is None:
        return "n/a", None
    return f"{value:.3f}", (f"≥ {low:.3f} (95 %)" if low is not None else None)


c = report.confusion
with st.container(horizontal=True, gap="medium"):
    st.metric("Readings", report.readings, width="content")
    st.metric("With a verdict", report.verdicts, width="content")
    # The bound under each figure is not a change since anything: no arrow (an arrow reads as "up since last time").
    value, low = bounded(report.sensitivity, report.sensitivity_lower_95)
    st.metric(
        "Sensitivity vs readers",
        value,
        low,
        delta_color="off",
        delta_arrow="off",
        help=f"{c['tp']} of {c['tp'] + c['fn']} films readers called PNEUMONIA were flagged at the threshold in "
        "force; the small figure is the one-sided 95 % Clopper-Pearson lower bound.",
        width="content",
    )
    value, low = bounded(report.specificity, report.specificity_lower_95)
    st.metric(
        "Specificity vs readers",
        value,
        low,
        delta_color="off",
        delta_arrow="off",
        help=f"{c['tn']} of {c['tn'] + c['fp']} films readers called NORMAL were not flagged.",
        width="content",
    )
if report.verdicts:
    # Said beside the figures, not only in the help: a large share of judged films without a decision is itself news.
    st.caption(
        f"Sensitivity and specificity count {report.films} film(s) with a verdict and a decision"
        + (
            f"; {report.left_out} judged film(s) had none (not assessable or unreadable) and are left out."
            if report.left_out
            else "."
        )
    )
for alert in report.alerts:
    if alert.direction == "card claims more":  # the model does worse than its card says
        st.error(plain(alert.message), icon=":material/notification_important:")
    elif alert.figure == "not assessable":  # films unlike the training films: a shift, not yet a worse figure
        st.warning(plain(alert.message), icon=":material/warning:")
    else:  # better than claimed: the card undersells, worth a look
        st.warning(plain(alert.message), icon=":material/info:")
claimed = report.claim
st.caption(
    f"The card's claim ({plain(claimed.source)}): sensitivity "
    f"{'n/a' if claimed.sensitivity is None else f'{claimed.sensitivity:.3f}'}, specificity "
    f"{'n/a' if claimed.specificity is None else f'{claimed.specificity:.3f}'}"
    + (
        f"; its input check may mark up to {claimed.not_assessable:.1%} of real held-out films not assessable."
        if claimed.not_assessable is not None
        else "."
    )
)

st.subheader(f"By {report.by}")
SHARES = {  # column: (header, what it is a share of); shown in per cent with one decimal, every row alike
    "flagged": ("flagged", "Readings at or above their own threshold, among readings with a decision."),
    "not_assessable": ("not assessable", "Readings the input check did not take for a film the model can read."),
    "rejected": ("unreadable", "Inputs that could not be decoded, among all readings."),
    "agreement": (
        "agreement",
        "Readings whose flag matches the reader's verdict, among judged readings with a decision.",
    ),
}
table = pd.DataFrame([vars(p) for p in report.periods])
for column in SHARES:
    table[column] = table[column].astype(float) * 100.0
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    column_config={
        "start": st.column_config.TextColumn(report.by if report.by == "day" else "week of"),
        "readings": st.column_config.NumberColumn("readings"),
        "verdicts": st.column_config.NumberColumn("verdicts", help="Readings with a reader's verdict."),
        **{
            column: st.column_config.NumberColumn(f"{header} %", format="%.1f", help=what)
            for column, (header, what) in SHARES.items()
        },
    },
    column_order=["start", "readings", "flagged", "not_assessable", "rejected", "verdicts", "agreement"],
)
if len(table) > 1:
    # One tick per day or week, read level (not text set on end, no noon ticks between days); named series in per
    # cent on a fixed 0-100 scale, like the table, so a small wobble is not drawn as a cliff.
    shown = ["flagged", "not_assessable", "agreement"]
    long = (
        table.assign(start=pd.to_datetime(table["start"]))[["start", *shown]]
        .rename(columns={k: SHARES[k][0] for k in shown})
        .melt("start", var_name="figure", value_name="per cent")
    )
    step = "day" if report.by == "day" else "week"
    chart = (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X(
                "start:T",
                title=report.by if report.by == "day" else "week of",
                axis=alt.Axis(format="%d %b", labelAngle=0, tickCount={"interval": step, "step": 1}),
            ),
            y=alt.Y("per cent:Q", scale=alt.Scale(domain=[0, 100])),
            color=alt.Color(
                "figure:N", sort=[SHARES[k][0] for k in shown], legend=alt.Legend(orient="bottom", title=None)
            ),
            tooltip=[
                alt.Tooltip("start:T", title=step, format="%a %d %b %Y"),
                "figure:N",
                alt.Tooltip("per cent:Q", format=".1f"),
            ],
        )
    )
    st.altair_chart(
        chart, width="stretch", alt=f"Share flagged, not assessable and agreement with readers, by {report.by}."
    )

st.subheader("Operating point from the verdicts")
if report.proposed:
    proposed = report.proposed
    low = proposed.get("sensitivity_lower_95")
    st.markdown(
        f"The site rule on the readers' verdicts ({proposed['n']} films, {proposed['n_positive']} pneumonia) "
        f"sets the threshold at **{proposed['threshold']:.4f}** for a target recall of "
        f"{proposed['target_recall']:g}; sensitivity {proposed['sensitivity']:.3f}"
        + (f" (one-sided 95 % lower bound {low:.3f})" if low is not None else "")
        + ". Nothing is changed here: a site point is recorded with `python -m pneumo calibrate`."
    )
else:
    st.caption("No verdict of PNEUMONIA yet: no operating point can be proposed.")
for note in report.notes:
    st.caption(plain(note))
