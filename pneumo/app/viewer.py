"""The full-size film viewer: a Plotly figure of one film at its own resolution, zoomed and panned in the
browser, under a display window (centre and width, as a DICOM viewer's window/level), with the Grad-CAM map as
a layer that can be switched off. Plain arrays in, a figure out: no Streamlit here."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import plotly.graph_objects as go

from pneumo.data.pixels import to_uint8
from pneumo.model import explain

# Gray levels of an 8-bit film. The full window (centre 128, width 256) shows every level as it is stored.
LEVELS = 256
FULL_WINDOW = (128, 256)
MAP_TITLE = "share of the map's peak"  # the colour bar's title: every map is scaled to its own film's peak
# Named windows a reader picks from before fine-tuning with the sliders: (centre, width) in gray levels.
PRESETS: dict[str, tuple[int, int]] = {
    "Full range": FULL_WINDOW,
    "Lungs (dark half spread out)": (80, 140),
    "Mediastinum and bone (bright half)": (180, 120),
    "High contrast": (128, 96),
}
# What st.plotly_chart is given with the figure: the wheel and a pinch zoom, a drag pans (dragmode below),
# the mode bar keeps zoom, pan, reset and a PNG of the view.
CONFIG: dict[str, Any] = {
    "scrollZoom": True,
    "displaylogo": False,
    "doubleClick": "reset",
    "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"],
    "toImageButtonOptions": {"format": "png", "filename": "pneumo_film_view"},
}


def window(film: np.ndarray, centre: float, width: float) -> np.ndarray:
    """The film's gray levels through a linear display window, as 8-bit samples.

    The DICOM linear VOI function (PS3.3 C.11.2.1.2.1) on the film's 8-bit levels x, output 0 to 255:
    x <= centre - 0.5 - (width - 1) / 2 gives 0, x > centre - 0.5 + (width - 1) / 2 gives 255, and between them
    ((x - (centre - 0.5)) / (width - 1) + 0.5) * 255, rounded. The full window (128, 256) leaves every level as it
    is. A float film in [0, 1] is taken at its 8-bit levels first; width is at least 1 (width 1: a threshold)."""
    if width < 1:
        raise ValueError(f"window width must be at least 1, got {width}")
    x = to_uint8(np.asarray(film)).astype(np.float64)
    low, high = centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2
    if width > 1:
        inside = ((x - (centre - 0.5)) / (width - 1) + 0.5) * (LEVELS - 1)
    else:
        inside = np.zeros_like(x)  # no level lies strictly inside a window of width 1
    out = np.where(x <= low, 0.0, np.where(x > high, LEVELS - 1.0, inside))
    return np.clip(np.rint(out), 0, LEVELS - 1).astype(np.uint8)


def _png_uri(gray: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(explain.png_bytes(gray)).decode("ascii")


def film_figure(
    film: np.ndarray,
    centre: float = FULL_WINDOW[0],
    width: float = FULL_WINDOW[1],
    heat: np.ndarray | None = None,
    opacity: float = 0.45,
    height: int = 600,
) -> go.Figure:
    """One film at its own resolution (one image pixel per film pixel; the axes span exactly the film) under
    the window (centre, width), and, when `heat` is given, the Grad-CAM map over it as a second layer: a heat map
    of the map's own cells stretched over the whole film (any map size), at `opacity`, with a titled colour bar
    0 to 1. A drag pans, the wheel zooms; the y axis runs down the film as the film is stored."""
    shown = window(film, centre, width)
    h, w = shown.shape
    fig = go.Figure(
        go.Image(
            source=_png_uri(shown),
            x0=0,
            dx=1,
            y0=0,
            dy=1,
            name="X-ray",
            hovertemplate="x %{x}, y %{y}<extra>X-ray</extra>",
        )
    )
    if heat is not None:
        heat = np.asarray(heat, dtype=np.float32)
        mh, mw = heat.shape
        dx, dy = w / mw, h / mh  # each map cell covers this many film pixels
        fig.add_trace(
            go.Heatmap(
                z=heat,
                x0=-0.5 + dx / 2,
                dx=dx,
                y0=-0.5 + dy / 2,
                dy=dy,
                zmin=0.0,
                zmax=1.0,
                colorscale="Jet",
                opacity=float(opacity),
                name="Grad-CAM",
                # Under the film, across: beside it, it would take a quarter of a phone's width.
                colorbar=dict(
                    title=dict(text=MAP_TITLE, side="top"),
                    tickvals=[0, 0.5, 1],
                    orientation="h",
                    x=0.5,
                    xanchor="center",
                    y=-0.02,
                    yanchor="top",
                    len=0.6,
                    thickness=12,
                ),
                hovertemplate="Grad-CAM %{z:.2f} of the peak<extra></extra>",
            )
        )
    fig.update_xaxes(range=[-0.5, w - 0.5], visible=False, constrain="domain")
    fig.update_yaxes(range=[h - 0.5, -0.5], visible=False, scaleanchor="x", scaleratio=1, constrain="domain")
    return fig.update_layout(
        height=height,
        margin=dict(l=0, r=0, t=0, b=0 if heat is None else 64),
        dragmode="pan",
        plot_bgcolor="rgba(0, 0, 0, 0)",
        showlegend=False,
        meta=dict(film_shape=[h, w], window=[float(centre), float(width)]),
    )


def view_caption(shape: tuple[int, ...], centre: float, width: float, layer: bool) -> str:
    """What the viewer says under a film of this shape (rows, columns) shown through the window (centre, width),
    with or without its map layer."""
    return (
        f"The film at its own resolution ({shape[1]}×{shape[0]} px), window centre {centre}, width {width} of gray "
        "levels 0–255. Drag to pan, scroll or pinch to zoom, double-click to fit."
        + (" The map is scaled to its own peak (1.0 on the bar)." if layer else "")
    )


def layers(fig: go.Figure) -> list[str]:
    """The names of a viewer figure's layers, bottom first ("X-ray", and "Grad-CAM" when the map is shown)."""
    return [str(trace.name) for trace in fig.data]
