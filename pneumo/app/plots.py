"""Plotly figures for the dashboard; each takes plain tables and returns a figure."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

CLASS_COLORS = {"NORMAL": "#2a9d8f", "PNEUMONIA": "#e76f51"}
# Plotly's toolbar (the modebar) sits in a chart's top-right corner; on a phone it appears on a tap and stays,
# and it covered the end of every title. Each chart keeps a band this tall at its top for the toolbar alone,
# and its title sits under that band, left-aligned, where the toolbar never reaches.
MODEBAR_PX = 30
TITLE = dict(x=0, xref="container", xanchor="left", y=1, yref="container", yanchor="top", pad=dict(t=MODEBAR_PX, l=10))
TITLED_TOP = MODEBAR_PX + 40  # the toolbar's band, then the title's line
# The title's place as title_* keys, not a `title` key: a chart may still pass title="…" beside **LAYOUT.
LAYOUT = dict(
    margin=dict(l=10, r=10, t=TITLED_TOP, b=10),
    legend=dict(orientation="h", y=-0.2),
    **{f"title_{k}": v for k, v in TITLE.items()},
)
NO_SPLITS = "no splits (one folder)"  # the x label of a folder whose films are not divided into splits


def class_counts(counts: pd.DataFrame, splits: bool = True) -> go.Figure:
    """Images per split and class; splits=False for a folder that has none (class folders, a manifest without a
    split column), whose films the scanner files under "train": shown as NO_SPLITS, not as a training split."""
    if not splits:
        counts = counts.groupby(lambda _: NO_SPLITS).sum()
        counts.index.name = "split"
    long = counts.reset_index().melt(id_vars=counts.index.name or "split", var_name="class", value_name="images")
    fig = px.bar(
        long,
        x=long.columns[0],
        y="images",
        color="class",
        barmode="group",
        text="images",
        color_discrete_map=CLASS_COLORS,
        title="Images per split and class" if splits else "Images per class (this folder has no splits)",
    )
    return fig.update_layout(**LAYOUT)


def images_per_patient(per_patient: pd.Series) -> go.Figure:
    counts = per_patient.value_counts().sort_index()
    fig = px.bar(
        x=counts.index,
        y=counts.values,
        labels={"x": "images per patient", "y": "patients"},
        title="How many images each patient contributes",
    )
    return fig.update_layout(**LAYOUT)


def subtypes(counts: dict[str, int]) -> go.Figure:
    """Pneumonia subtypes (bacterial / viral, from file names) as bars."""
    fig = px.bar(
        x=list(counts),
        y=list(counts.values()),
        text=list(counts.values()),
        labels={"x": "subtype", "y": "images"},
        title="Pneumonia subtype (from file names)",
        color=list(counts),
        color_discrete_sequence=["#e76f51", "#f4a261", "#e9c46a"],
    )
    return fig.update_layout(**LAYOUT, showlegend=False)


def violins(stats: pd.DataFrame, column: str, title: str) -> go.Figure:
    """One violin per class side by side: no class hides behind the other."""
    fig = px.violin(
        stats,
        x="class_name",
        y=column,
        color="class_name",
        box=True,
        points=False,
        color_discrete_map=CLASS_COLORS,
        title=title,
        labels={"class_name": "class"},
    )
    return fig.update_layout(**LAYOUT, showlegend=False)


def distribution(stats: pd.DataFrame, column: str, title: str) -> go.Figure:
    fig = px.histogram(
        stats,
        x=column,
        color="class_name",
        barmode="overlay",
        opacity=0.65,
        nbins=40,
        color_discrete_map=CLASS_COLORS,
        title=title,
    )
    return fig.update_layout(**LAYOUT)


def confusion(conf: dict[str, int]) -> go.Figure:
    z = [[conf["tn"], conf["fp"]], [conf["fn"], conf["tp"]]]
    xs, ys = ["predicted NORMAL", "predicted PNEUMONIA"], ["NORMAL", "PNEUMONIA"]
    fig = go.Figure(go.Heatmap(z=z, x=xs, y=ys, colorscale="Blues", showscale=False, zmin=0))
    top = max(max(row) for row in z) or 1
    # Each count in the colour that reads on its own cell (white on dark blue, black on pale), in any theme.
    for i, row in enumerate(z):
        for j, value in enumerate(row):
            fig.add_annotation(
                x=xs[j],
                y=ys[i],
                text=f"{value:,}",
                showarrow=False,
                font=dict(size=16, color="white" if value > top / 2 else "black"),
            )
    fig.update_yaxes(autorange="reversed", title="actual")
    return fig.update_layout(title="Confusion matrix", height=320, **LAYOUT)


def roc_pr(roc: pd.DataFrame, pr: pd.DataFrame, point: dict[str, Any]) -> go.Figure:
    """ROC and precision-recall curves with the current operating point marked."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("ROC", "Precision–recall"))
    fig.add_trace(
        go.Scatter(
            x=roc["fpr"],
            y=roc["tpr"],
            mode="lines",
            name="ROC",
            customdata=roc["threshold"],
            hovertemplate="FPR %{x:.3f}<br>TPR %{y:.3f}<br>t=%{customdata:.3f}",
        ),
        1,
        1,
    )
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="gray"), showlegend=False), 1, 1
    )
    fig.add_trace(
        go.Scatter(
            x=pr["recall"],
            y=pr["precision"],
            mode="lines",
            name="PR",
            customdata=pr["threshold"],
            hovertemplate="recall %{x:.3f}<br>precision %{y:.3f}<br>t=%{customdata:.3f}",
        ),
        1,
        2,
    )
    spec, sens, prec = point.get("specificity"), point.get("sensitivity"), point.get("precision")
    if spec is not None and sens is not None:
        fig.add_trace(
            go.Scatter(
                x=[1 - spec], y=[sens], mode="markers", marker=dict(size=13, color="red"), name="operating point"
            ),
            1,
            1,
        )
    if prec is not None and sens is not None:
        fig.add_trace(
            go.Scatter(x=[sens], y=[prec], mode="markers", marker=dict(size=13, color="red"), showlegend=False), 1, 2
        )
    fig.update_xaxes(title_text="1 − specificity", row=1, col=1)
    fig.update_yaxes(title_text="sensitivity", row=1, col=1)
    fig.update_xaxes(title_text="recall (sensitivity)", row=1, col=2)
    fig.update_yaxes(title_text="precision", row=1, col=2)
    return fig.update_layout(height=380, **LAYOUT)


def probability_histogram(y: np.ndarray, p: np.ndarray, threshold: float) -> go.Figure:
    frame = pd.DataFrame({"probability": p, "class": np.where(np.asarray(y) == 1, "PNEUMONIA", "NORMAL")})
    fig = px.histogram(
        frame,
        x="probability",
        color="class",
        nbins=40,
        barmode="overlay",
        opacity=0.65,
        color_discrete_map=CLASS_COLORS,
        title="Predicted probability by true class",
        range_x=[0, 1],
    )
    fig.add_vline(x=threshold, line_color="red", line_dash="dash", annotation_text=f"threshold {threshold:.3f}")
    return fig.update_layout(**LAYOUT)


def calibration(cal: pd.DataFrame, shown: pd.DataFrame | None = None) -> go.Figure:
    """Observed pneumonia rate against the mean predicted value per bin: the model's score, and, for a card that
    maps scores to probabilities, the probability a reading shows (the one the reader is told)."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="gray"), name="perfect"))
    curves = [(cal, "score" if shown is not None else "model")]
    if shown is not None:
        curves.append((shown, "probability shown"))
    for table, name in curves:
        fig.add_trace(
            go.Scatter(
                x=table["predicted"],
                y=table["observed"],
                mode="lines+markers",
                name=name,
                text=table["count"],
                hovertemplate=name + ": predicted %{x:.2f}<br>observed %{y:.2f}<br>n=%{text}",
            )
        )
    fig.update_xaxes(title="mean predicted value", range=[0, 1])
    fig.update_yaxes(title="observed pneumonia rate", range=[0, 1])
    return fig.update_layout(title="Calibration", height=340, **LAYOUT)


CURVE_METRICS = ("loss", "auc", "recall", "precision")


def learning_curves(
    histories: dict[str, list[dict[str, Any]]], val_n: dict[str, int | None] | None = None
) -> go.Figure:
    """Loss, AUC, recall and precision per epoch, train (solid) and validation (dashed), one colour per run.

    val_n: each run's number of validation films, named beside its validation curves ("val, n = 7"): an AUC of
    1.0 on 7 films says little, and the curve alone does not show it."""
    fig = make_subplots(
        rows=2, cols=2, subplot_titles=[m.upper() if m == "auc" else m.capitalize() for m in CURVE_METRICS]
    )
    palette = px.colors.qualitative.Plotly
    val_n = val_n or {}
    last_epoch = 1
    for i, (name, epochs) in enumerate(histories.items()):
        if not epochs:
            continue
        x = [e["epoch"] for e in epochs]
        last_epoch = max([last_epoch, *(int(v) for v in x)])
        n = val_n.get(name)
        val_label = f"val, n = {n:,}" if n is not None else "val"
        color = palette[i % len(palette)]
        for j, metric in enumerate(CURVE_METRICS):
            row, col = j // 2 + 1, j % 2 + 1
            for prefix, dash in (("", "solid"), ("val_", "dash")):
                key = prefix + metric
                if key in epochs[0]:
                    fig.add_trace(
                        go.Scatter(
                            x=x,
                            y=[e.get(key) for e in epochs],
                            mode="lines+markers",
                            line=dict(color=color, dash=dash),
                            name=f"{name} {val_label if prefix else 'train'}",
                            legendgroup=name,
                            showlegend=(j == 0),
                        ),
                        row,
                        col,
                    )
    # Epochs are whole numbers: a tick every epoch (a few epochs gave ticks at 1.2 and 1.4), or every few on
    # a long run, about ten ticks in all, never a fraction.
    fig.update_xaxes(title_text="epoch", tick0=0, dtick=max(1, -(-last_epoch // 10)), tickformat="d")
    return fig.update_layout(height=520, **LAYOUT)


def stress_chart(conditions: pd.DataFrame, threshold: float) -> go.Figure:
    """ROC AUC and specificity of the held-out films under each acquisition change, worst first."""
    frame = conditions.sort_values("specificity", ascending=False)
    fig = go.Figure()
    fig.add_bar(
        y=frame["change"],
        x=frame["roc_auc"],
        orientation="h",
        name="ROC AUC",
        hovertemplate="%{y}: AUC %{x:.4f}<extra></extra>",
    )
    fig.add_bar(
        y=frame["change"],
        x=frame["specificity"],
        orientation="h",
        name=f"specificity at {threshold:.3f}",
        hovertemplate="%{y}: specificity %{x:.3f}<extra></extra>",
    )
    # The axis starts at 0: a bar's length is its value, and no difference is stretched to look large. The
    # legend sits below the bars, where it covers none of them at any width.
    fig.update_layout(
        barmode="group",
        height=130 + 26 * len(frame),
        margin=dict(l=10, r=10, t=MODEBAR_PX, b=10),  # the toolbar's band above the top bars
        xaxis=dict(range=[0.0, 1.0]),
        legend=dict(orientation="h", y=-0.08, yanchor="top"),
    )
    return fig


# The Kermany collection's file-name series, named for a reader: IM-… and NORMAL2-IM-… are two numbering series
# of normal films (the second a later addition to the collection), person… the pneumonias. A card names a
# population by its series ("NORMAL2-IM normals"), which says nothing to someone who never read the file names.
SERIES_NAMES = {
    "IM": "IM series (earlier period)",
    "NORMAL2-IM": "NORMAL2-IM series (later period)",
    "person": "person series",
}


def population_name(row: dict[str, Any]) -> str:
    """A population of the card's shift checks in words: "normals, NORMAL2-IM series (later period)", or a band of
    patient numbers, "pneumonias, person series, patients 1–336"."""
    population = row.get("population")
    if population:
        series, _, kind = str(population).rpartition(" ")
        return f"{kind}, {SERIES_NAMES[series]}" if series in SERIES_NAMES else str(population)
    kind = "normals" if row.get("label") == 0 else "pneumonias"
    series = SERIES_NAMES.get(str(row.get("series")), str(row.get("series")))
    return f"{kind}, {series}, patients {row.get('numbers')}"


def population_chart(rows: list[dict[str, Any]], label: str) -> go.Figure:
    """Specificity of normals and sensitivity of pneumonias per population at the operating threshold."""
    names = [population_name(r) for r in rows]
    values = [r.get("specificity", r.get("sensitivity")) for r in rows]
    kinds = ["specificity" if "specificity" in r else "sensitivity" for r in rows]
    fig = go.Figure(
        go.Bar(
            y=names,
            x=values,
            orientation="h",
            marker_color=[CLASS_COLORS["NORMAL"] if k == "specificity" else CLASS_COLORS["PNEUMONIA"] for k in kinds],
            text=[f"{k} {v:.3f} (n={r['n']})" for k, v, r in zip(kinds, values, rows)],
            textposition="inside",
            insidetextanchor="start",
            hovertemplate="%{y}: %{x:.4f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=dict(TITLE, text=label),
        height=MODEBAR_PX + 90 + 26 * len(rows),
        margin=dict(l=10, r=10, t=TITLED_TOP, b=10),
        xaxis=dict(range=[0.0, 1.0]),
        showlegend=False,
    )
    return fig


def bound_curve(curve: list[tuple[int, float]], target: float) -> go.Figure:
    """The one-sided 95 % lower bound of sensitivity against the number of labelled pneumonias, with the
    target: how many a site needs before its bound can mean anything."""
    n, bound = zip(*curve) if curve else ((), ())
    fig = go.Figure(
        go.Scatter(
            x=list(n),
            y=list(bound),
            mode="lines+markers",
            name="lower 95 % bound",
            hovertemplate="%{x} pneumonias: bound %{y:.3f}<extra></extra>",
        )
    )
    fig.add_hline(y=target, line_dash="dot", annotation_text=f"target {target:.3f}", annotation_position="bottom right")
    fig.update_layout(
        title="Sensitivity bound against labelled pneumonias",
        height=320,
        xaxis_title="labelled pneumonia films",
        yaxis=dict(range=[0, 1], title="lower 95 % bound"),
        **LAYOUT,
    )
    return fig


def framing_chart(rows: list[dict[str, Any]], zooms: tuple[float, float]) -> go.Figure:
    """Sensitivity and specificity at the operating threshold against zoom (log axis: 0.7× and 1/0.7× stand as far
    from 1 as each other), each with its 95 % interval as a band; the range a caution watches is shaded."""
    frame = sorted((r for r in rows if r.get("family") == "zoom"), key=lambda r: r["zoom"])
    fig = go.Figure()
    fig.add_vrect(x0=zooms[0], x1=zooms[1], fillcolor="rgba(128,128,128,0.12)", line_width=0, layer="below")
    for key, colour in (("sensitivity", CLASS_COLORS["PNEUMONIA"]), ("specificity", CLASS_COLORS["NORMAL"])):
        xs = [r["zoom"] for r in frame if r.get(key) is not None]
        values = [r[key] for r in frame if r.get(key) is not None]
        lows = [(r.get(f"{key}_95") or {}).get("low", r[key]) for r in frame if r.get(key) is not None]
        highs = [(r.get(f"{key}_95") or {}).get("high", r[key]) for r in frame if r.get(key) is not None]
        band = colour + "33"
        fig.add_scatter(
            x=xs + xs[::-1],
            y=highs + lows[::-1],
            fill="toself",
            fillcolor=band,
            line_width=0,
            hoverinfo="skip",
            showlegend=False,
        )
        fig.add_scatter(
            x=xs,
            y=values,
            mode="lines+markers",
            name=key,
            line_color=colour,
            hovertemplate=f"zoom %{{x:g}}×: {key} %{{y:.3f}}<extra></extra>",
        )
    fig.update_layout(
        height=320,
        margin=dict(l=10, r=10, t=10, b=10),
        yaxis=dict(range=[0.0, 1.02], title="at the threshold"),
        xaxis=dict(
            type="log",
            title="zoom (1 = as sent; above 1 zoomed in)",
            tickvals=[r["zoom"] for r in frame],
            ticktext=[f"{r['zoom']:g}×" for r in frame],
        ),
        legend=dict(orientation="h", y=-0.25, yanchor="top"),
    )
    return fig


def cue_chart(rows: list[dict[str, Any]]) -> go.Figure:
    """Each non-anatomical cue's cross-validated ROC AUC for the label, strongest first; 0.5 (chance) marked."""
    colours = {"framing": "#e76f51", "border": "#8d99ae", "text": "#6a4c93", "intensity": "#2a9d8f"}
    fig = go.Figure(
        go.Bar(
            y=[r["cue"] for r in rows],
            x=[r["roc_auc"] for r in rows],
            orientation="h",
            marker_color=[colours.get(r["kind"], "#888888") for r in rows],
            text=[f"{r['kind']}: {r['roc_auc']:.3f}" for r in rows],
            textposition="inside",
            insidetextanchor="start",
            hovertemplate="%{y}: ROC AUC %{x:.3f}<extra></extra>",
        )
    )
    fig.add_vline(x=0.5, line_dash="dot", annotation_text="chance", annotation_position="top")
    fig.update_layout(
        height=90 + 26 * len(rows),
        margin=dict(l=10, r=10, t=30, b=10),
        showlegend=False,
        xaxis=dict(range=[0.0, 1.0], title="ROC AUC of the cue alone (cross-validated by patient)"),
        yaxis=dict(autorange="reversed"),
    )
    return fig
