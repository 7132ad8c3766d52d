"""Where the lungs are on a frontal chest film, by image analysis alone (no segmentation weights can be fetched).

The lungs are the two large dark regions either side of the bright mediastinum. So: equalise locally (CLAHE),
smooth, take the darkest part of the chest's usual zone, keep the largest region left of the midline and the
largest right of it, close and fill them. A film where that finds no pair, or a pair covering under 6 % or over
50 % of the film, falls back to a fixed chest box and says so.

Used for the framing cue of the shortcut audit (how much of the film the lung field fills), for the share of
a map's heat inside the lungs, and for a model's canonical framing: a model whose card names the "lungs" framing
sees every film cropped to its lung field (with a margin) in training and serving alike, so how tightly the film
was framed reaches the network much less.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WORK_SIDE = 128  # the analysis runs at this side: the lung outline needs no more
# The fallback: left/right 15 %, top 15 %, bottom 25 % of the film excluded (a chest film's usual lung zone).
FALLBACK_BOX = (0.15, 0.15, 0.85, 0.75)  # x0, y0, x1, y1 as fractions of the width and height
SEARCH_BOX = (0.04, 0.08, 0.96, 0.85)  # where lungs are looked for
DARK_PERCENTILE = 35  # the darkest 35 % of the search zone: two lungs fill about a third of it
# Canonical framings a model may name (its card's "framing"): the whole film, or its lung field's box.
FRAMINGS = ("none", "lungs")
# The lungs' box is widened by this share of its size on each side, so the costophrenic angles and the apices,
# where the image analysis cuts short, stay in view.
FRAMING_MARGIN = 0.08


@dataclass(frozen=True)
class LungField:
    mask: np.ndarray  # bool, the film's shape
    found: bool  # False: the fallback box

    @property
    def share(self) -> float:
        """The share of the film the lung field covers."""
        return float(self.mask.mean())

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The field's bounding box as fractions of the width and height (x0, y0, x1, y1)."""
        ys, xs = np.nonzero(self.mask)
        h, w = self.mask.shape
        return float(xs.min() / w), float(ys.min() / h), float((xs.max() + 1) / w), float((ys.max() + 1) / h)


def _fallback(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    x0, y0, x1, y1 = FALLBACK_BOX
    mask = np.zeros(shape, bool)
    mask[round(y0 * h) : round(y1 * h), round(x0 * w) : round(x1 * w)] = True
    return mask


def lung_field(img: np.ndarray) -> LungField:
    """The lung field of a 2-D [0, 1] frontal chest film (see the module's docstring)."""
    import cv2

    img = np.asarray(img, np.float32)
    h, w = img.shape
    small = cv2.resize(img, (WORK_SIDE, WORK_SIDE), interpolation=cv2.INTER_AREA)
    u8 = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(np.clip(small * 255, 0, 255).astype(np.uint8))
    u8 = cv2.GaussianBlur(u8, (0, 0), 2.0)
    # Only the chest's usual zone is searched: air beside the body, the neck and the abdomen stay outside it, so a
    # lung that reaches the film's edge (a tight crop) is still one region and not joined to the air around it.
    # The air around the body: dark (below Otsu's level over the whole film) and reaching the film's edge. A tightly
    # cropped film shows none, and its lungs reach the edge themselves: then the search runs without this step.
    _, outside = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    count, labels = cv2.connectedComponents(outside.astype(np.uint8), connectivity=4)
    edge = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    air = np.isin(labels, edge[edge > 0])
    air = cv2.dilate(air.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))).astype(bool)
    for excluded in (air, np.zeros_like(air)):
        filled = _pair(u8, excluded)
        if filled is not None:
            return LungField(cv2.resize(filled, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool), True)
    return LungField(_fallback((h, w)), False)


def _pair(u8: np.ndarray, excluded: np.ndarray) -> np.ndarray | None:
    """The darkest regions left and right of the midline within the search zone less `excluded`, closed and
    filled; None when there is no plausible pair."""
    import cv2

    x0, y0, x1, y1 = (round(v * WORK_SIDE) for v in SEARCH_BOX)
    zone = np.zeros_like(excluded)
    zone[y0:y1, x0:x1] = True
    zone &= ~excluded
    if zone.sum() < 0.1 * WORK_SIDE**2:
        return None
    level = np.percentile(u8[zone], DARK_PERCENTILE)
    dark = ((u8 <= level) & zone).astype(np.uint8)
    dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(dark, connectivity=4)
    # A strip of air beside the body hugs the film's side; a lung's centre lies well inside it.
    big = [
        i
        for i in range(1, count)
        if stats[i, cv2.CC_STAT_AREA] >= 0.015 * WORK_SIDE**2 and 0.12 * WORK_SIDE < centroids[i][0] < 0.88 * WORK_SIDE
    ]
    left = [i for i in big if centroids[i][0] < WORK_SIDE / 2]
    right = [i for i in big if centroids[i][0] >= WORK_SIDE / 2]
    keep = [max(side, key=lambda i: stats[i, cv2.CC_STAT_AREA]) for side in (left, right) if side]
    if len(keep) < 2:
        return None
    mask: np.ndarray = np.isin(labels, keep).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    # Each lung a tall region, together a plausible share of the film; a strip of air beside the body is neither.
    tall = all(stats[i, cv2.CC_STAT_HEIGHT] >= 1.2 * stats[i, cv2.CC_STAT_WIDTH] for i in keep)
    return filled if tall and 0.06 <= filled.mean() <= 0.5 else None


def heat_inside(heat: np.ndarray, mask: np.ndarray) -> float:
    """The share of a map's heat (non-negative) that falls inside a mask of the same film (any size: the map is
    resized to the mask's)."""
    import cv2

    heat = np.clip(np.asarray(heat, np.float32), 0, None)
    if heat.shape != mask.shape:
        heat = cv2.resize(heat, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
    total = float(heat.sum())
    return float(heat[mask].sum() / total) if total > 0 else 0.0


def peak_inside(heat: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the map's hottest point lies inside the mask."""
    import cv2

    heat = np.asarray(heat, np.float32)
    if heat.shape != mask.shape:
        heat = cv2.resize(heat, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return bool(mask[y, x])


def framing_box(img: np.ndarray, framing: str) -> tuple[int, int, int, int]:
    """The part of a 2-D film a model with this canonical framing sees, as pixel bounds (y0, y1, x0, x1): the
    whole film for "none"; for "lungs", the lung field's box widened by FRAMING_MARGIN, or the whole film when no
    lung field is found (a fixed box would crop a film that is not framed like a chest film in the first place)."""
    h, w = np.shape(img)[:2]
    if framing not in FRAMINGS:
        raise ValueError(f"unknown framing {framing!r}; known: {', '.join(FRAMINGS)}")
    if framing == "none":
        return 0, h, 0, w
    field = lung_field(img)
    if not field.found:
        return 0, h, 0, w
    x0, y0, x1, y1 = field.box
    mx, my = FRAMING_MARGIN * (x1 - x0), FRAMING_MARGIN * (y1 - y0)
    top, bottom = max(0, int((y0 - my) * h)), min(h, int(np.ceil((y1 + my) * h)))
    left, right = max(0, int((x0 - mx) * w)), min(w, int(np.ceil((x1 + mx) * w)))
    return top, bottom, left, right


def apply_framing(img: np.ndarray, framing: str) -> np.ndarray:
    """The film as a model with this canonical framing sees it, before resizing (a view, no copy)."""
    y0, y1, x0, x1 = framing_box(img, framing)
    return np.asarray(img)[y0:y1, x0:x1]


def input_description(framing: str) -> str:
    """The card's words for what the network reads of a film under this canonical framing."""
    framed = ", cropped to its lung field first (pneumo.data.anatomy)" if framing == "lungs" else ""
    return f"single-channel grayscale, float32 in [0, 1]{framed}, resized to input_size × input_size (area)"


def framed_input(img: np.ndarray, framing: str, size: int) -> np.ndarray:
    """A film as the network's input: framed, then resized to size × size (pneumo.data.pixels.resize). The one
    place training, the checks and serving turn a film into what the network sees."""
    from pneumo.data.pixels import resize

    return resize(apply_framing(img, framing) if framing != "none" else img, size)


def place_map(heat: np.ndarray, shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """A map computed on the framed film, drawn back onto the whole film (shape): stretched into the framing's
    box, zero outside it, where the network saw nothing."""
    import cv2

    y0, y1, x0, x1 = box
    out = np.zeros(shape, np.float32)
    out[y0:y1, x0:x1] = cv2.resize(np.asarray(heat, np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return out
