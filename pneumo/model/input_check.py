"""Is this input a frontal chest film like the ones the model learned from? Warnings for every reading.

Two kinds of evidence:

- what the file says: colour content (a photograph, a coloured document);
- the model's own view: the distance of the image's pooled features from those of the held-out films
  (Mahalanobis, with a shrunk covariance). The alarm level is the 98th percentile of distances of
  held-out films not used to fit the mean and covariance, so about 2 % of real films raise it. An
  image that comes much closer once inverted, or turned by 90°/180°, is named as such.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumo import import_tensorflow_quietly
from pneumo.core.files import atomic_write_bytes

# TensorFlow, Keras and scikit-learn are imported where used: the dashboard imports this module and must not load
# TensorFlow (~600 MB resident) or scikit-learn (~2 s).

FILE_NAME = "ood.npz"
ALARM_QUANTILE = 98.0
# An inverted or rotated version must be this much closer (as a fraction of the alarm level) before
# the warning names that cause instead of the general one.
NAMED_CAUSE_MARGIN = 0.5
COLOUR_LIMIT = 0.08  # mean channel spread (0-1 scale) above which an image is a colour picture


@dataclass
class FeatureDensity:
    """Mean, shrunk precision matrix and alarm level of the model's pooled features."""

    mean: np.ndarray
    precision: np.ndarray
    alarm: float
    false_alarm_rate: float  # measured on the calibration half of the held-out films
    n_fit: int
    n_calibrate: int

    def distance(self, features: np.ndarray) -> np.ndarray:
        d = np.asarray(features, dtype=np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))

    def save(self, path: str | Path) -> None:
        buf = io.BytesIO()
        np.savez(
            buf,
            mean=self.mean,
            precision=self.precision,
            alarm=self.alarm,
            false_alarm_rate=self.false_alarm_rate,
            n_fit=self.n_fit,
            n_calibrate=self.n_calibrate,
        )
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> FeatureDensity | None:
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(
                    z["mean"],
                    z["precision"],
                    float(z["alarm"]),
                    float(z["false_alarm_rate"]),
                    int(z["n_fit"]),
                    int(z["n_calibrate"]),
                )
        except (OSError, KeyError, ValueError):
            return None


def feature_model(model: Any) -> Any:
    """The sub-network from the input to the pooled features ('gap'), inside an ensemble's first member too."""
    import keras

    for holder in [model, *[layer for layer in model.layers if isinstance(layer, keras.Model)]]:
        try:
            gap = holder.get_layer("gap")
        except ValueError:
            continue
        return keras.Model(holder.input, gap.output, name="features")
    raise ValueError(f"model '{model.name}' has no pooled feature layer named 'gap'")


def features(loaded: Any, images: np.ndarray | list[np.ndarray], batch_size: int = 64) -> np.ndarray:
    """Pooled features of [0, 1] grayscale images: from the ONNX engine, or a traced graph kept on the model."""
    batch = loaded.prepare(images)
    engine = getattr(loaded, "engine", None)
    run = engine.features if engine is not None and engine.has_features else _traced_features(loaded)
    return np.concatenate([np.asarray(run(batch[i : i + batch_size])) for i in range(0, len(batch), batch_size)])


def _traced_features(loaded: Any) -> Any:
    """The pooled-feature sub-network as one traced graph, kept in the model's cache under "features"."""

    def trace() -> Any:
        import_tensorflow_quietly()  # the first TensorFlow import when ONNX Runtime serves predictions
        import tensorflow as tf

        net = feature_model(loaded.model)
        size = loaded.input_size
        return tf.function(
            lambda x: net(x, training=False), input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32)]
        )

    return loaded.cache.get("features", trace)


def fit(feats: np.ndarray, seed: int = 0) -> FeatureDensity:
    """Fit the density on one half of the held-out features, set the alarm level on the other half."""
    from sklearn.covariance import LedoitWolf

    feats = np.asarray(feats, dtype=np.float64)
    if len(feats) < 20:
        raise ValueError(f"need at least 20 held-out images to calibrate the input check, got {len(feats)}")
    order = np.random.default_rng(seed).permutation(len(feats))
    fit_part, cal_part = feats[order[: len(feats) // 2]], feats[order[len(feats) // 2 :]]
    lw = LedoitWolf().fit(fit_part)
    density = FeatureDensity(lw.location_, lw.precision_, 0.0, 0.0, len(fit_part), len(cal_part))
    cal = density.distance(cal_part)
    density.alarm = float(np.percentile(cal, ALARM_QUANTILE))
    density.false_alarm_rate = float((cal > density.alarm).mean())
    return density


def _variants(image: np.ndarray) -> dict[str, np.ndarray]:
    """The corrections tried, each named by what it says of the film as sent: a film that matches once
    turned 90° counter-clockwise (np.rot90 turns that way on screen) was sent turned 90° clockwise."""
    return {
        "inverted (negative film)": 1.0 - image,
        "turned 90° clockwise": np.rot90(image, 1),
        "upside down": np.rot90(image, 2),
        "turned 90° counter-clockwise": np.rot90(image, 3),
    }


@dataclass
class Assessment:
    """What the input check found: warnings to show beside the score, and whether the film may be
    given a decision at all.

    A film that is not a chest radiograph (a photo, a document, noise) or that is inverted or turned is
    not assessable: its probability is still listed, but no decision is made. Such films are not
    corrected and re-scored: the check names a likely cause, it does not prove it (about 2 % of real
    films raise the alarm), and a score for a transformed film the reader has not seen would be a
    decision on an image nobody looked at. The reader fixes the export and sends the film again.
    """

    warnings: list[str]
    assessable: bool = True


def inspect(loaded: Any, image: np.ndarray, density: FeatureDensity | None, colour: float = 0.0) -> Assessment:
    """The input check for one image (see Assessment)."""
    warnings: list[str] = []
    assessable = True
    if colour > COLOUR_LIMIT:
        warnings.append(
            f"colour image (channel spread {colour:.2f}): a radiograph is gray; this looks like a photo or document"
        )
        assessable = False
    if density is None:
        return Assessment(warnings, assessable)
    own = float(density.distance(features(loaded, [image]))[0])
    if own > density.alarm:
        assessable = False
        # Only a refused film is looked at inverted and turned, to name the fix: a film the model knows
        # costs one pass instead of five.
        variants = _variants(image)
        others = dict(zip(variants, density.distance(features(loaded, list(variants.values())))))
        cause, best = min(others.items(), key=lambda kv: kv[1])
        if best < density.alarm and own - best > NAMED_CAUSE_MARGIN * density.alarm:
            warnings.append(
                f"looks {cause}: the model's features match real films far better that way; "
                "correct the orientation or polarity and send the film again"
            )
        else:
            warnings.append(
                f"unlike the films the model was checked on (feature distance {own:.1f}, alarm level "
                f"{density.alarm:.1f}): not a frontal chest X-ray, or from a very different source; "
                "the score is not reliable"
            )
    return Assessment(warnings, assessable)


def check(loaded: Any, image: np.ndarray, density: FeatureDensity | None, colour: float = 0.0) -> list[str]:
    """Warnings for one image; an empty list when it looks like the films the model was checked on."""
    return inspect(loaded, image, density, colour).warnings


def detection_rates(
    loaded: Any, images: np.ndarray, density: FeatureDensity, limit: int = 200, seed: int = 0
) -> dict[str, float]:
    """Share of held-out films warned about as they are (false alarms), and once inverted, turned or
    replaced by noise (detections): the figures the card reports for the input check."""
    rng = np.random.default_rng(seed)
    pick = images[rng.choice(len(images), size=min(limit, len(images)), replace=False)]
    cases = {
        "real films (false alarms)": list(pick),
        "inverted": [1.0 - x for x in pick],
        "rotated by 90°": [np.rot90(x) for x in pick],
        "upside down": [np.rot90(x, 2) for x in pick],
        "uniform noise": [rng.random(x.shape).astype(np.float32) for x in pick[:50]],
    }
    return {name: float(np.mean([bool(check(loaded, x, density)) for x in batch])) for name, batch in cases.items()}
