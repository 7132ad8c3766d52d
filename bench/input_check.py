"""The input check of the shipped model (models/): how many real films it refuses or warns about, and how many wrong
inputs it refuses, before (one level: every film beyond the 98th percentile of held-out distances refused) and after
(a warning level, a refusal level, the orientation classifier and the flat-white page check).

    python -m pneumo input-check            # refit the shipped model's check (models/ood.npz and its card)
    python bench/input_check.py [--out bench/input-check-results.json]

The films are fold 1 of the shipped ensemble's out-of-fold predictions (models/oof_predictions.csv): the network
whose features the check reads (the first member) never trained on them. "Before" is the same density and level
read as a check file without a refusal level, which is what the shipped file was (the refit reproduces its mean,
covariance and level exactly; this script checks it).

- Real films of a later period (a proxy: those films cannot be seen here): the calibration half of fold 1 (films
  used to fit neither the density nor the orientation classifier: out of fold), zoomed in about the centre 1×, 1.15×,
  1.3×, 1.45× (the edge mirrored), each with and without a white label burned into a random corner (a side marker,
  a projection, a time stamp; OpenCV's putText).
- Population folds: the check fitted, as training fits it, on fold 1's films outside one file-name population, and
  measured on that population's fold-1 films.
- Films the first member trained on (folds 2-5, as they are): out of fold for the density, not for the network.
- Wrong inputs: the calibration films inverted and turned by 90° either way and 180°; uniform noise; text pages
  (rendered text on white); colour pictures (synthetic landscapes), the last two as PNG files through the decoder.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import platform
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pneumo.model import input_check as quality  # noqa: E402

ZOOMS = (1.0, 1.15, 1.3, 1.45)
LABELS = ("L", "R", "PORTABLE", "AP SUPINE", "12:41", "2019-03-04 08:15")
NOISE, PAGES, PHOTOS = 100, 50, 50


def reframe(film: np.ndarray, zoom: float) -> np.ndarray:
    """Zoomed in about the centre, the edge mirrored (as pneumo.evaluation.framing frames a film)."""
    from pneumo.data.transforms import affine

    if zoom == 1.0:
        return np.asarray(film, np.float32)
    return np.clip(affine(film, scale=zoom, border="reflect"), 0.0, 1.0).astype(np.float32)


def burn_label(film: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A white text label in a random corner, as an exposure label or a time stamp is burned in."""
    import cv2

    out = (np.clip(film, 0, 1) * 255).astype(np.uint8)
    text = str(rng.choice(LABELS))
    scale, thick = float(rng.uniform(0.4, 0.8)), int(rng.integers(1, 3))
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    side, margin = out.shape[1], 6
    corner = int(rng.integers(4))
    x = margin if corner % 2 == 0 else side - w - margin
    y = h + margin if corner < 2 else out.shape[0] - margin
    cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick, cv2.LINE_AA)
    return out.astype(np.float32) / 255.0


def text_page(rng: np.random.Generator, height: int = 1100, width: int = 850) -> np.ndarray:
    """Lines of black text on a white page (a report, a letter), as uint8."""
    import cv2

    words = (
        "patient seen in clinic report findings impression chest radiograph heart size normal lungs clear "
        "no effusion follow up in two weeks signed date referral history cough fever"
    ).split()
    page = np.full((height, width), 255, np.uint8)
    y = int(rng.integers(60, 120))
    while y < height - 60:
        line = " ".join(rng.choice(words, int(rng.integers(5, 11))))
        scale, thick = float(rng.uniform(0.6, 0.9)), int(rng.integers(1, 3))
        cv2.putText(page, line, (60, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 0, thick, cv2.LINE_AA)
        y += int(rng.integers(28, 40))
    return page


def colour_picture(rng: np.random.Generator, height: int = 480, width: int = 640) -> np.ndarray:
    """A synthetic colour photograph: sky over grass, coloured discs, sensor noise; uint8 RGB."""
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width], dtype=float)[:, None, None]
    sky = np.array([0.35, 0.6, 0.95]) * (1 - 0.4 * yy[..., None])
    grass = np.array([0.2, 0.65, 0.2]) * (0.7 + 0.3 * yy[..., None])
    img = np.where(yy[..., None] < rng.uniform(0.45, 0.7), sky, grass)
    for _ in range(int(rng.integers(3, 8))):
        cx, cy, r = rng.random(), rng.random(), rng.uniform(0.03, 0.15)
        img[((xx - cx) ** 2 + (yy - cy) ** 2) < r * r] = rng.random(3)
    img = img + rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def population(path: str, label: int) -> str:
    """The file-name population of a film, named as the card's population figures name them."""
    from pneumo.data.collection import parse_name
    from pneumo.data.splits import series

    return f"{series(path)} normals" if label == 0 else f"{parse_name(path)[1]} pneumonia"


def legacy(density: quality.FeatureDensity) -> quality.FeatureDensity:
    """The check as a file without a refusal level reads: its one level refuses (the check before)."""
    return dataclasses.replace(density, refusal=None, refusal_rate=None, orientation=None)


def tally(density: quality.FeatureDensity, found: list[quality.Verdict]) -> dict:
    """Counts and shares of films refused and decided with a warning, and what refused them."""
    causes: dict[str, int] = {}
    for v in found:
        if v.cause:
            causes[v.cause] = causes.get(v.cause, 0) + 1
    n = len(found)
    refused, warned = sum(v.refused for v in found), sum(v.warned for v in found)
    return {
        "n": n,
        "refused": int(refused),
        "refused_share": refused / n,
        "warned": int(warned),
        "warned_share": warned / n,
        "refused_by": {  # a film may be refused for more than one reason
            "colour": int(sum(v.colour > quality.COLOUR_LIMIT for v in found)),
            "flat white": int(sum(v.blank > quality.BLANK_LIMIT for v in found)),
            "named cause": causes,
            "distance beyond the refusal level": int(
                sum(v.cause is None and v.distance > density.refusal_level for v in found)
            ),
        },
    }


def judge(
    density: quality.FeatureDensity,
    feats: np.ndarray,
    films: list[np.ndarray],
    features_of: Callable[..., np.ndarray],
    colour: list[float] | None = None,
) -> dict:
    return tally(density, quality.verdicts(density, feats, films, features_of, colour))


def spread(distances: np.ndarray, warning: float) -> dict[str, float]:
    """Where a set of films lies, in feature distance and as multiples of the warning level."""
    return {
        "p50": float(np.percentile(distances, 50)),
        "p99": float(np.percentile(distances, 99)),
        "max": float(distances.max()),
        "max_over_warning_level": float(distances.max() / warning),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "bench" / "input-check-results.json"))
    args = parser.parse_args()
    import pandas as pd

    from pneumo.data.decode import load_xray
    from pneumo.evaluation.drift_reference import predictions_for_reference
    from pneumo.evaluation.validate import load_images
    from pneumo.model.loading import load_model

    started = time.perf_counter()
    loaded = load_model(ROOT / "models" / "model.keras")
    shipped = loaded.density
    if shipped is None:
        raise SystemExit("models/ood.npz: no input check beside the shipped model")

    def features_of(batch: list[np.ndarray] | np.ndarray) -> np.ndarray:
        return quality.features(loaded, batch)

    frame, what = predictions_for_reference(loaded.path)
    films = load_images(frame["path"].tolist(), loaded.input_size)
    feats = features_of(films)
    refit = quality.fit(feats)  # the density and levels alone, as the check before was fitted
    if not np.allclose(refit.mean, shipped.mean) or not np.isclose(refit.alarm, shipped.alarm):
        raise SystemExit("models/ood.npz was not fitted on fold 1's films in this order: its halves are unknown")
    fit_idx, cal_idx = quality.halves(len(films))
    before, after = legacy(shipped), shipped
    checks = {"before": before, "after": after}
    two_levels = shipped.refusal is not None and shipped.orientation is not None
    print(f"{len(films)} films of fold 1; calibration half {len(cal_idx)}; two levels: {two_levels}", file=sys.stderr)

    rng = np.random.default_rng(0)
    cal = [films[i] for i in cal_idx]
    later: list[dict[str, Any]] = []
    for zoom in ZOOMS:
        for label in (False, True):
            batch = [reframe(x, zoom) for x in cal]
            if label:
                batch = [burn_label(x, rng) for x in batch]
            f = features_of(batch)
            row: dict[str, Any] = {"zoom": zoom, "label": label}
            for name, density in checks.items():
                row[name] = judge(density, f, batch, features_of)
            row["distance"] = spread(after.distance(f), after.alarm)
            row["flat_white_max"] = max(quality.blank_share(x) for x in batch)
            later.append(row)
            print(
                f"zoom {zoom} label {label}: refused {row['before']['refused']} -> {row['after']['refused']}, "
                f"warned {row['after']['warned']} of {len(batch)}",
                file=sys.stderr,
            )

    pops = np.array([population(p, int(y)) for p, y in zip(frame["path"], frame["label"])])
    folds: list[dict[str, Any]] = []
    for name in sorted(set(pops)):
        inside, outside = np.where(pops == name)[0], np.where(pops != name)[0]
        others = [films[i] for i in outside]
        fitted = quality.fit(feats[outside], images=others, features_of=features_of)
        held = [films[i] for i in inside]
        row = {"population": name, "fit_films": int(len(outside))}
        for label, density in (("before", legacy(fitted)), ("after", fitted)):
            row[label] = judge(density, feats[inside], held, features_of)
        row["distance"] = spread(fitted.distance(feats[inside]), fitted.alarm)
        row["levels"] = {"warning": fitted.alarm, "refusal": fitted.refusal_level}
        folds.append(row)
        print(f"population {name}: refused {row['before']['refused']} -> {row['after']['refused']}", file=sys.stderr)

    oof = pd.read_csv(loaded.path.with_name("oof_predictions.csv"))
    seen_paths = oof.loc[oof["fold"] != 0, "path"].tolist()
    seen = load_images(seen_paths, loaded.input_size)
    seen_feats = features_of(seen)
    trained_on: dict[str, Any] = {name: judge(d, seen_feats, list(seen), features_of) for name, d in checks.items()}
    trained_on["distance"] = spread(after.distance(seen_feats), after.alarm)
    trained_on["flat_white_max"] = max(quality.blank_share(x) for x in seen)

    wrong: list[dict[str, Any]] = []
    cases: dict[str, list[np.ndarray]] = {c.name: [c.make(x) for x in cal] for c in quality.CAUSES}
    cases["uniform noise"] = [rng.random(films.shape[1:]).astype(np.float32) for _ in range(NOISE)]
    for case, batch in cases.items():
        f = features_of(batch)
        row = {"case": case}
        for name, density in checks.items():
            row[name] = judge(density, f, batch, features_of)
        row["distance"] = spread(after.distance(f), after.alarm)
        wrong.append(row)
        print(
            f"{case}: refused {row['before']['refused']} -> {row['after']['refused']} of {len(batch)}", file=sys.stderr
        )
    decoded = {
        "text page (rendered text on white, PNG)": [load_xray(png(text_page(rng)), "page.png") for _ in range(PAGES)],
        "colour picture (synthetic photograph, PNG)": [
            load_xray(png(colour_picture(rng)), "photo.png") for _ in range(PHOTOS)
        ],
    }
    for case, xrays in decoded.items():
        batch = [x.pixels for x in xrays]
        colour = [x.colour for x in xrays]
        f = features_of(batch)
        row = {"case": case}
        for name, density in checks.items():
            row[name] = judge(density, f, batch, features_of, colour)
        row["distance"] = spread(after.distance(f), after.alarm)
        row["flat_white_min"] = min(quality.blank_share(x) for x in batch)
        wrong.append(row)
        print(
            f"{case}: refused {row['before']['refused']} -> {row['after']['refused']} of {len(batch)}", file=sys.stderr
        )

    results = {
        "what": __doc__.split("\n\n")[0].strip(),
        "model": loaded.card.name,
        "films": what,
        "command": "python bench/input_check.py",
        "check": {
            "before": {"refusal_level": before.refusal_level, "rule": "refused beyond the one level"},
            "after": {
                "warning_level": after.alarm,
                "refusal_level": after.refusal_level,
                "refusal_factor": quality.REFUSAL_FACTOR,
                "orientation_classifier": after.orientation is not None,
                "orientation_gate": quality.ORIENTATION_GATE,
                "orientation_evidence": quality.ORIENTATION_EVIDENCE,
                "flat_white_limit": quality.BLANK_LIMIT,
            },
            "fit_films": int(len(fit_idx)),
            "calibration_films": int(len(cal_idx)),
        },
        "later_period_proxy": {
            "note": "a proxy for films of a later period, which cannot be seen here: the calibration half of fold 1 "
            "(out of fold: used to fit neither the density nor the orientation classifier) reframed as that period "
            "frames films. The label condition burns a label into every film.",
            "conditions": later,
        },
        "population_folds": {
            "note": "the check fitted as training fits it on fold 1's films outside one population, measured on that "
            "population's fold-1 films (out of fold for the density, the levels, the classifier and the network)",
            "folds": folds,
        },
        "films_the_network_trained_on": {
            "note": "folds 2-5 as they are: the first member trained on them, so its features of them are "
            "in-sample; out of fold for the density",
            **trained_on,
        },
        "wrong_inputs": wrong,
        "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}",
        "seconds": round(time.perf_counter() - started, 1),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"written {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
