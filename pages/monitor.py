"""Monitor: the model in use, from its logged readings and the readers' verdicts (pneumo.integrations.records)."""

from pathlib import Path

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
    value, low = bounded(report.sensitivity, report.sensitivity_lower_95)
    st.metric(
        "Sensitivity vs readers",
        value,
        low,
        delta_color="off",
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
        help=f"{c['tn']} of {c['tn'] + c['fp']} films readers called NORMAL were not flagged.",
        width="content",
    )
for alert in report.alerts:
    if alert.direction == "card claims more":
        st.error(plain(alert.message), icon=":material/notification_important:")
    else:
        st.warning(plain(alert.message), icon=":material/info:")
claimed = report.claim
st.caption(
    f"The card's claim ({plain(claimed.source)}): sensitivity "
    f"{'n/a' if claimed.sensitivity is None else f'{claimed.sensitivity:.3f}'}, specificity "
    f"{'n/a' if claimed.specificity is None else f'{claimed.specificity:.3f}'}."
)

st.subheader(f"By {report.by}")
table = pd.DataFrame([vars(p) for p in report.periods])
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    column_config={
        "start": st.column_config.TextColumn(report.by),
        "flagged": st.column_config.NumberColumn("share flagged", format="percent"),
        "not_assessable": st.column_config.NumberColumn("share not assessable", format="percent"),
        "rejected": st.column_config.NumberColumn("share unreadable", format="percent"),
        "agreement": st.column_config.NumberColumn("agreement with readers", format="percent"),
    },
)
if len(table) > 1:
    st.line_chart(table.set_index("start")[["flagged", "not_assessable", "agreement"]])

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
