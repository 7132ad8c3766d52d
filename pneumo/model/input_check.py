"""Is this input like the films the model was checked on? Warnings, and refusals, for every reading.

Three kinds of evidence:

- what the file says: colour content (a photograph, a coloured document) and a mostly flat white picture (a page
  of text, a screen capture): refused;
- how far the model's pooled features lie from those of held-out films (Mahalanobis, with a shrunk covariance),
  against two levels set on held-out films not used to fit the mean and covariance:
  * the warning level, their 98th percentile: about 2 % of real films pass it. Such a film is decided, with a
    warning that it is unlike the films the model was checked on;
  * the refusal level, REFUSAL_FACTOR times the warning level, far beyond what real films reach: such a film
    is not assessable. bench/input_check.py measured the shipped model's held-out films reframed as a later
    period frames them (zoomed in up to 1.45×, a burned-in label) at up to 1.7 times the warning level, and
    uniform noise beyond 3 times it.
- the film's orientation and polarity, read by a linear classifier on the same features (fitted on the fit half
  of the held-out films, as they are and reframed, each upright, inverted, and turned by 90°, 180° and 270°). A
  film it reads as inverted or turned is corrected and read again; it is refused, with the cause named, only
  when both readings agree (a likelihood ratio of at least e^ORIENTATION_EVIDENCE) and the corrected film lies
  nearer the held-out films, within the refusal level. The
  distance alone cannot tell: the network's features barely change under a half turn (four upside-down films
  in ten lie within the warning level), and a real film zoomed in lies as far out as a turned one.

A check file written before the refusal level (one level, ``alarm``) keeps the meaning it was written with:
films beyond that level are refused, and the cause is named by the distances of the corrected films.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pneumo import import_tensorflow_quietly
from pneumo.core.files import atomic_write_bytes

# TensorFlow, Keras and scikit-learn are imported where used: the dashboard imports this module and must not load
# TensorFlow (~600 MB resident) or scikit-learn (~2 s).

FILE_NAME = "ood.npz"
ALARM_QUANTILE = 98.0  # the warning level: this percentile of the calibration films' distances
# The refusal level as a multiple of the warning level. Measured on the shipped model (bench/input_check.py):
# held-out films zoomed in 1.45× with a burned-in label reach 1.73 times the warning level, the 4,173 films its
# features' network trained on 1.75 times; uniform noise lies beyond 3 times. Pages and photographs overlap the
# zoomed films in distance (1.3 to 2.3 times): the flat-white and colour checks refuse those.
REFUSAL_FACTOR = 2.0
# A check file without an orientation classifier names a cause when a corrected version is closer than the film
# by this fraction of its one level, and within that level.
NAMED_CAUSE_MARGIN = 0.5
# The orientation classifier is asked to confirm a cause (one more pass of the network, on the corrected film)
# when the film as sent reads as that cause with at least this probability; and the cause is named when the two
# readings favour "sent that way" over "sent upright" by a log-likelihood ratio above ORIENTATION_EVIDENCE
# (e^6 ≈ 400). Set on the shipped model's calibration films (bench/input_check.py): at 6 none of them zoomed in
# 1× to 1.3×, with or without a burned-in label, is refused, one in 522 zoomed in 1.45×; 96 % of them upside
# down and over 99 % inverted or turned by a quarter are.
ORIENTATION_GATE = 0.5
ORIENTATION_EVIDENCE = 6.0
# The orientation classifier also learns each fit film reframed at a zoom drawn log-uniformly from this range:
# the framings the network itself is trained on (the 'frame' augmentation), so that a tightly framed real film
# is not read as a turned one.
REFRAME_ZOOMS = (0.7, 1.6)
COLOUR_LIMIT = 0.08  # mean channel spread (0-1 scale) above which an image is a colour picture
# A page or a screen capture is mostly flat white; a chest film is not: of the 5,216 training films at 224 px,
# none had more than 19 % of its pixels flat white (3 × 3 range at most BLANK_FLAT, value at least BLANK_WHITE),
# rendered text pages 50-64 %.
BLANK_LIMIT = 0.35
BLANK_SIDE = 224
BLANK_WHITE = 0.9
BLANK_FLAT = 0.02


@dataclass(frozen=True)
class Cause:
    """A way a film can arrive wrong: turned by quarter turns (counter-clockwise as np.rot90 turns on screen)
    and/or inverted. Named by what it says of the film as sent."""

    name: str
    turns: int
    inverted: bool = False

    def make(self, image: np.ndarray) -> np.ndarray:
        """An upright film as it would arrive this way."""
        out = np.rot90(image, self.turns)
        return 1.0 - out if self.inverted else out

    def correct(self, image: np.ndarray) -> np.ndarray:
        """A film that arrived this way, put right."""
        out = 1.0 - image if self.inverted else image
        return np.rot90(out, -self.turns)


CAUSES = (
    Cause("inverted (negative film)", 0, inverted=True),
    Cause("turned 90° clockwise", 3),
    Cause("upside down", 2),
    Cause("turned 90° counter-clockwise", 1),
)
UPRIGHT = "as sent"  # the orientation classifier's class 0; class k + 1 is CAUSES[k]


def _class_of_correction(k: int) -> int:
    """The classifier's class an upright film falls in once CAUSES[k]'s correction is applied to it (turning a
    film back by a quarter turn clockwise makes an upright one look turned counter-clockwise)."""
    cause = CAUSES[k]
    for j, other in enumerate(CAUSES):
        if other.inverted == cause.inverted and other.turns == (-cause.turns) % 4:
            return j + 1
    raise ValueError(f"no cause undoes {cause.name}")


@dataclass
class Orientation:
    """A softmax classifier on standardised pooled features: class 0 a film as sent upright, class k + 1 a film
    that arrived as CAUSES[k]."""

    centre: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (1 + len(CAUSES)) × features
    intercept: np.ndarray

    def probabilities(self, feats: np.ndarray) -> np.ndarray:
        z = ((np.asarray(feats, np.float64) - self.centre) / self.scale) @ self.coef.T + self.intercept
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


@dataclass
class FeatureDensity:
    """Mean and shrunk precision matrix of the model's pooled features, the warning and refusal levels, and the
    orientation classifier.

    ``alarm`` is the warning level. ``refusal`` is None in a file written before there were two levels: its one
    level (``alarm``) then refuses, as it did when written (``refusal_level``). ``false_alarm_rate`` is the share
    of the calibration films beyond the warning level, ``refusal_rate`` the share the whole check refuses (None
    when not measured)."""

    mean: np.ndarray
    precision: np.ndarray
    alarm: float
    false_alarm_rate: float  # measured on the calibration half of the held-out films
    n_fit: int
    n_calibrate: int
    refusal: float | None = None
    refusal_rate: float | None = None
    orientation: Orientation | None = field(default=None, repr=False)

    @property
    def refusal_level(self) -> float:
        return self.alarm if self.refusal is None else self.refusal

    def distance(self, features: np.ndarray) -> np.ndarray:
        d = np.asarray(features, dtype=np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))

    def save(self, path: str | Path) -> None:
        arrays: dict[str, Any] = {
            "mean": self.mean,
            "precision": self.precision,
            "alarm": self.alarm,
            "false_alarm_rate": self.false_alarm_rate,
            "n_fit": self.n_fit,
            "n_calibrate": self.n_calibrate,
        }
        # Only what is known is written: a key's absence is what tells a reader the file has no such part.
        if self.refusal is not None:
            arrays["refusal"] = self.refusal
        if self.refusal_rate is not None:
            arrays["refusal_rate"] = self.refusal_rate
        if self.orientation is not None:
            o = self.orientation
            arrays.update(
                orientation_classes=np.array([UPRIGHT, *(c.name for c in CAUSES)]),
                orientation_centre=o.centre,
                orientation_scale=o.scale,
                orientation_coef=o.coef,
                orientation_intercept=o.intercept,
            )
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> FeatureDensity | None:
        """The check stored at path; None when there is none or it cannot be read."""
        try:
            with np.load(path, allow_pickle=False) as z:
                density = cls(
                    z["mean"],
                    z["precision"],
                    float(z["alarm"]),
                    float(z["false_alarm_rate"]),
                    int(z["n_fit"]),
                    int(z["n_calibrate"]),
                    refusal=float(z["refusal"]) if "refusal" in z else None,
                    refusal_rate=float(z["refusal_rate"]) if "refusal_rate" in z else None,
                )
                # A classifier whose classes are not today's causes, in today's order, would name the wrong
                # fix: such a file is read without it (its distances still hold).
                classes = list(z["orientation_classes"]) if "orientation_classes" in z else []
                if "orientation_coef" in z and classes == [UPRIGHT, *(c.name for c in CAUSES)]:
                    density.orientation = Orientation(
                        z["orientation_centre"],
                        z["orientation_scale"],
                        z["orientation_coef"],
                        z["orientation_intercept"],
                    )
                return density
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


def blank_share(image: np.ndarray) -> float:
    """The share of a [0, 1] grayscale image, at BLANK_SIDE × BLANK_SIDE, that is flat white (see BLANK_LIMIT)."""
    from pneumo.data.pixels import resize

    small = resize(np.asarray(image, np.float32), BLANK_SIDE)
    h, w = small.shape
    padded = np.pad(small, 1, mode="edge")
    shifted = [padded[i : i + h, j : j + w] for i in range(3) for j in range(3)]
    spread = np.max(shifted, axis=0) - np.min(shifted, axis=0)
    return float(((small >= BLANK_WHITE) & (spread <= BLANK_FLAT)).mean())


def halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The indices of the fit half and the calibration half of n held-out films, as fit splits them."""
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 2], order[n // 2 :]


FeaturesOf = Callable[[list[np.ndarray]], np.ndarray]


def fit(
    feats: np.ndarray,
    seed: int = 0,
    images: Sequence[np.ndarray] | np.ndarray | None = None,
    features_of: FeaturesOf | None = None,
) -> FeatureDensity:
    """Fit the density on one half of the held-out features, set the warning and refusal levels on the other.

    Given the films (images, in the order of feats) and the model's features of any films (features_of), also fit
    the orientation classifier on the fit half and measure the share of the calibration half the whole check
    refuses; without them the check has no orientation classifier, and its refusal share counts distances only.
    """
    from sklearn.covariance import LedoitWolf

    feats = np.asarray(feats, dtype=np.float64)
    if len(feats) < 20:
        raise ValueError(f"need at least 20 held-out images to calibrate the input check, got {len(feats)}")
    fit_idx, cal_idx = halves(len(feats), seed)
    lw = LedoitWolf().fit(feats[fit_idx])
    density = FeatureDensity(lw.location_, lw.precision_, 0.0, 0.0, len(fit_idx), len(cal_idx))
    cal = density.distance(feats[cal_idx])
    density.alarm = float(np.percentile(cal, ALARM_QUANTILE))
    density.false_alarm_rate = float((cal > density.alarm).mean())
    density.refusal = REFUSAL_FACTOR * density.alarm
    if images is None or features_of is None:
        density.refusal_rate = float((cal > density.refusal).mean())
        return density
    density.orientation = fit_orientation([images[i] for i in fit_idx], features_of, seed)
    found = verdicts(density, feats[cal_idx], [images[i] for i in cal_idx], features_of)
    density.refusal_rate = float(np.mean([v.refused for v in found]))
    return density


def fit_orientation(images: Sequence[np.ndarray], features_of: FeaturesOf, seed: int = 0) -> Orientation:
    """The orientation classifier, fitted on the films as they are and once reframed (REFRAME_ZOOMS), each
    upright and as every cause would make it arrive: 10 feature passes per film."""
    from sklearn.linear_model import LogisticRegression

    from pneumo.data.transforms import affine

    rng = np.random.default_rng(seed)
    zooms = np.exp(rng.uniform(np.log(REFRAME_ZOOMS[0]), np.log(REFRAME_ZOOMS[1]), len(images)))
    # Reframed as the framing checks do: zoomed about the centre, the film's edge mirrored where the warp
    # samples outside it.
    reframed = [np.clip(affine(x, scale=float(z), border="reflect"), 0.0, 1.0) for x, z in zip(images, zooms)]
    films = [np.asarray(x, np.float32) for x in images] + reframed
    blocks = [features_of(films)] + [features_of([c.make(x) for x in films]) for c in CAUSES]
    x = np.concatenate(blocks).astype(np.float64)
    y = np.repeat(np.arange(len(blocks)), len(films))
    centre, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    model = LogisticRegression(C=1.0, max_iter=5000).fit((x - centre) / scale, y)
    return Orientation(centre, scale, model.coef_.astype(np.float64), model.intercept_.astype(np.float64))


@dataclass(frozen=True)
class Verdict:
    """What the check says of one film."""

    distance: float
    cause: str | None  # a named orientation or polarity cause: refused
    blank: float  # share of the film flat white (BLANK_LIMIT)
    refused: bool
    warned: bool  # beyond the warning level but decided
    colour: float = 0.0  # the file's channel spread (COLOUR_LIMIT)


def verdicts(
    density: FeatureDensity,
    feats: np.ndarray,
    images: Sequence[np.ndarray],
    features_of: FeaturesOf,
    colour: Sequence[float] | None = None,
) -> list[Verdict]:
    """The check for films whose features are known (feats, one row per film of images; colour: each file's
    channel spread, 0 for gray); features_of runs the network on the corrected films the check looks at (only
    films the classifier, or a one-level file's distance, points at)."""
    feats = np.asarray(feats, dtype=np.float64).reshape(len(images), -1)
    own = density.distance(feats)
    spreads = [0.0] * len(images) if colour is None else [float(c) for c in colour]
    blanks = [blank_share(image) for image in images]
    # A colour picture or a page is refused for what it is: no cause is looked for (turned back, a photo can
    # pass for an inverted film in the features, and "looks inverted" would send the reader the wrong way).
    looked = [c <= COLOUR_LIMIT and b <= BLANK_LIMIT for c, b in zip(spreads, blanks)]
    causes = _causes(density, feats, own, images, features_of, looked)
    out = []
    for d, cause, blank, spread in zip(own, causes, blanks, spreads):
        refused = cause is not None or spread > COLOUR_LIMIT or blank > BLANK_LIMIT or d > density.refusal_level
        out.append(Verdict(float(d), cause, blank, refused, not refused and d > density.alarm, spread))
    return out


def _causes(
    density: FeatureDensity,
    feats: np.ndarray,
    own: np.ndarray,
    images: Sequence[np.ndarray],
    features_of: FeaturesOf,
    looked: Sequence[bool],
) -> list[str | None]:
    """The named cause of each film (of those looked at), or None."""
    found: list[str | None] = [None] * len(images)
    if density.orientation is None:
        # Without a classifier only a refused film is looked at corrected, to name the fix: the one a corrected
        # version matches within the level, by a wide margin.
        level = density.refusal_level
        far = [i for i in range(len(images)) if looked[i] and own[i] > level]
        if not far:
            return found
        corrected = density.distance(features_of([c.correct(images[i]) for i in far for c in CAUSES]))
        for n, i in enumerate(far):
            each = corrected[n * len(CAUSES) : (n + 1) * len(CAUSES)]
            k = int(np.argmin(each))
            if each[k] < level and own[i] - each[k] > NAMED_CAUSE_MARGIN * level:
                found[i] = CAUSES[k].name
        return found
    p = density.orientation.probabilities(feats)
    guess = np.argmax(p[:, 1:], axis=1)  # the likeliest cause of each film
    asked = [i for i in range(len(images)) if looked[i] and p[i, 1 + guess[i]] >= ORIENTATION_GATE]
    if not asked:
        return found
    fixed = np.asarray(features_of([CAUSES[guess[i]].correct(images[i]) for i in asked]), dtype=np.float64)
    q = density.orientation.probabilities(fixed)
    closer = density.distance(fixed)
    for n, i in enumerate(asked):
        k = int(guess[i])
        # Sent as cause k: the film reads as k and the corrected one as upright. Sent upright: the film reads as
        # upright and the corrected one as what the correction makes of an upright film.
        sent_so = np.log(p[i, 1 + k] + 1e-12) + np.log(q[n, 0] + 1e-12)
        upright = np.log(p[i, 0] + 1e-12) + np.log(q[n, _class_of_correction(k)] + 1e-12)
        # The corrected film must also lie nearer the held-out films, and within the refusal level: a cause is
        # named only where correcting it gives a film the check would read (noise, a page or a photo turned
        # back is still far out, and is refused for what it is).
        if sent_so - upright > ORIENTATION_EVIDENCE and closer[n] < min(own[i], density.refusal_level):
            found[i] = CAUSES[k].name
    return found


@dataclass
class Assessment:
    """What the input check found: warnings to show beside the score, and whether the film may be
    given a decision at all.

    A film that is not a chest radiograph the model can read (a photo, a document, noise: far beyond the
    refusal level) or that is inverted or turned is not assessable: its probability is still listed, but no
    decision is made. A film beyond the warning level only is decided, with the warning beside it. Refused
    films are not corrected and re-scored: the check names a likely cause, it does not prove it, and a score
    for a transformed film the reader has not seen would be a decision on an image nobody looked at. The
    reader fixes the export and sends the film again.
    """

    warnings: list[str]
    assessable: bool = True


def inspect(
    loaded: Any,
    image: np.ndarray,
    density: FeatureDensity | None,
    colour: float = 0.0,
    own_features: np.ndarray | None = None,
) -> Assessment:
    """The input check for one image (see Assessment). own_features: the image's pooled features (1 × n) when
    the caller has them from the pass that gave its probability (a batch read), so the network does not run again
    unless the check looks at the corrected film."""
    warnings: list[str] = []
    if colour > COLOUR_LIMIT:
        warnings.append(
            f"colour image (channel spread {colour:.2f}): a radiograph is gray; this looks like a photo or document"
        )
    if density is None:
        blank = blank_share(image)
        if blank > BLANK_LIMIT:
            warnings.append(_blank_warning(blank))
        return Assessment(warnings, colour <= COLOUR_LIMIT and blank <= BLANK_LIMIT)
    own = features(loaded, [image]) if own_features is None else np.asarray(own_features)
    found = verdicts(density, own, [image], lambda batch: features(loaded, batch), [colour])[0]
    if found.blank > BLANK_LIMIT:
        warnings.append(_blank_warning(found.blank))
    if found.cause is not None:
        warnings.append(
            f"looks {found.cause}: the model's features read it so, and match the films it was checked on better "
            "once it is corrected; correct the orientation or polarity and send the film again"
        )
    elif found.distance > density.refusal_level:
        warnings.append(
            f"unlike the films the model was checked on (feature distance {found.distance:.1f}, beyond the refusal "
            f"level {density.refusal_level:.1f}): the score is not reliable and no decision is made"
        )
    elif found.warned:
        warnings.append(
            f"unlike the films the model was checked on (feature distance {found.distance:.1f}, beyond the warning "
            f"level {density.alarm:.1f} that {density.false_alarm_rate:.0%} of them pass, within the refusal level "
            f"{density.refusal_level:.1f}): decided, but read the score with care"
        )
    return Assessment(warnings, not found.refused)


def _blank_warning(blank: float) -> str:
    return (
        f"mostly flat white ({blank:.0%} of the image, above the limit of {BLANK_LIMIT:.0%}): a page or screen "
        "capture, not a radiograph the model can read"
    )


def check(loaded: Any, image: np.ndarray, density: FeatureDensity | None, colour: float = 0.0) -> list[str]:
    """Warnings for one image; an empty list when it looks like the films the model was checked on."""
    return inspect(loaded, image, density, colour).warnings


DETECTION_CASES = ("real films", "inverted", "turned 90° clockwise", "upside down", "uniform noise")


def detection_rates(
    loaded: Any, images: np.ndarray, density: FeatureDensity, limit: int = 200, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Shares of held-out films refused, and decided with a warning, as they are (false alarms) and once inverted,
    turned or replaced by noise (detections): the figures the card reports for the input check.

    {"refused": {case: share}, "warned": {case: share}} over DETECTION_CASES; noise is drawn for at most 50 films.
    """
    rng = np.random.default_rng(seed)
    pick = images[rng.choice(len(images), size=min(limit, len(images)), replace=False)]
    by_name = {c.name: c for c in CAUSES}
    cases = {
        "real films": list(pick),
        "inverted": [by_name["inverted (negative film)"].make(x) for x in pick],
        "turned 90° clockwise": [by_name["turned 90° clockwise"].make(x) for x in pick],
        "upside down": [by_name["upside down"].make(x) for x in pick],
        "uniform noise": [rng.random(x.shape).astype(np.float32) for x in pick[:50]],
    }

    def features_of(batch: list[np.ndarray]) -> np.ndarray:
        return features(loaded, batch)

    refused: dict[str, float] = {}
    warned: dict[str, float] = {}
    for name, batch in cases.items():
        found = verdicts(density, features_of(batch), batch, features_of)
        refused[name] = float(np.mean([v.refused for v in found]))
        warned[name] = float(np.mean([v.warned for v in found]))
    return {"refused": refused, "warned": warned}
