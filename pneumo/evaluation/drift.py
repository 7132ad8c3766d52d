"""Is a batch of films unlike the films the operating point was set on? A drift check on unlabelled batches.

A single film far from the held-out films raises the wrong-input warning (pneumo.model.input_check); a batch can be
shifted while none of its films is: a later period, another device, another post-processing moves the
whole distribution a little. This module compares a batch with a reference of held-out films stored
beside the model (``drift_reference.npz``), on what the model itself sees:

- the Mahalanobis distance of each film's pooled features from the mean of held-out films (mean and a
  Ledoit-Wolf shrunk precision fitted on one part of them; the reference distances come from another
  part, because films used to fit the mean lie closer to it than new films do);
- the score margin: how far the film's logit lies from the decision threshold's.

Both tests are one-sided: a batch is shifted when its films lie *farther* from the reference or score
*closer to the threshold* (less sure) than the reference films, never because they lie closer or score
more surely, so films the model was trained on do not raise it. Both are done within each predicted
class (score below / at or above the reference's split threshold): pneumonias lie farther from the mean
than normals and score more surely, so a pooled test would call a ward with more pneumonias "shifted"
(measured on the shipped model's held-out films: 57 % of all-pneumonia batches of 50). The tests are
two-sample Kolmogorov-Smirnov (scipy.stats.ks_2samp), combined with a Bonferroni correction over the tests
run (for the decision "any test rejects", Holm's procedure decides the same; Holm-adjusted p-values per test
are reported too).

Films of one patient are not independent: a reference of 300 films from 150 patients knows the population
about as well as 150 independent films would. KS p-values that count films would trust the reference's
chance quirks, and every batch from other patients would then look "shifted" more often than alpha (measured
on the shipped model: 4-12 % of in-distribution batches of 50, depending on which patients formed the
reference). So each test's p-value is the larger of scipy's and the asymptotic one-sided Smirnov p-value
exp(-2 n m / (n + m) D^2) with m the number of *patients* in the reference stratum. The batch's films are
counted as independent (a batch carries no patient ids).

The false-alarm rate depends on which patients happen to form the reference, so it is measured over
repeated patient splits of the held-out films (SPLITS of them): the card gives the pooled rate (what a
reference built this way from these films can be expected to do) and its spread over splits, beside the
rate on the shipped split's own calibration films.

Minimum batch: a predicted class with fewer than MIN_STRATUM films is not tested (one far film must not
make a batch "shifted": drift is a property of a batch), and MIN_BATCH = 2 * MIN_STRATUM guarantees that
at least one class of any batch can be tested."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cachetools import LRUCache

from pneumo.core.files import atomic_write_bytes
from pneumo.model import input_check as quality

# SciPy, scikit-learn, pandas, pneumo.data.collection and pneumo.evaluation.validate are imported where used: the CLI
# imports this module
# at start, and they would add seconds to every command.

REFERENCE_FILE = "drift_reference.npz"
ALPHA = 0.05  # family-wise, over the tests of one batch
MIN_STRATUM = 10
MIN_BATCH = 2 * MIN_STRATUM
CALIBRATION_N = 50
FRACTIONS = (0.4, 0.3, 0.3)  # held-out films: fit the mean and precision / reference / calibration
SPLITS = 10  # patient splits the false-alarm rate is measured over
MIN_REFERENCE_FILMS = 100
STRATA = ("predicted normal", "predicted pneumonia")
# The given probabilities are the model's own (or its first member's) when they agree with what it
# computes now to this much (ONNX Runtime and Keras agree to 1e-4).
SCORE_TOLERANCE = 1e-3
METHOD = (
    "one-sided two-sample KS per predicted class: feature distance (Mahalanobis, larger = shifted) and "
    "score margin from the threshold (smaller = shifted), the reference counted by patients; Bonferroni over "
    "the tests run"
)

Progress = Callable[[int, int], None]


class DriftUnavailable(ValueError):
    """No drift check can be made: no reference beside the model, a stale one, or too few films."""


@dataclass
class DriftResult:
    shifted: bool
    p_value: float  # Bonferroni-adjusted smallest p of the tests run
    n: int
    method: str
    reference: str
    alpha: float = ALPHA
    statistic: float = 0.0  # KS statistic of the test with the smallest p
    tests: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    advice: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Reference:
    """Held-out films' feature distances and scores, with the mean and precision the distances use."""

    mean: np.ndarray
    precision: np.ndarray
    distances: np.ndarray
    probabilities: np.ndarray
    split_threshold: float  # the model's threshold when the reference was built: where the classes split
    score_source: str  # "model" (the served probability), "member 1" (an ensemble's first member) or "none"
    model_sha256_16: str
    description: str
    n_fit: int
    n_calibration: int
    created: str
    calibration: dict[str, Any] = field(default_factory=dict)
    patients: np.ndarray | None = None  # an integer code per reference film: its patient (None: one film each)

    @property
    def n(self) -> int:
        return int(len(self.distances))

    def effective(self, mask: np.ndarray) -> int:
        """How many independent observations the reference films under ``mask`` are: their patients."""
        if self.patients is None or len(self.patients) != len(self.distances):
            return int(mask.sum())
        return int(len(np.unique(self.patients[mask])))

    def distance(self, features: np.ndarray) -> np.ndarray:
        d = np.asarray(features, dtype=np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))

    def margin(self, probabilities: np.ndarray) -> np.ndarray:
        return np.abs(_logit(np.asarray(probabilities, dtype=np.float64)) - _logit(np.array([self.split_threshold]))[0])

    def label(self) -> str:
        return f"{self.n} {self.description}, reference built {self.created[:10]}"

    def compare(self, distances: np.ndarray, probabilities: np.ndarray | None, alpha: float = ALPHA) -> DriftResult:
        """The drift test of a batch given its feature distances and scores (see the module docstring)."""
        distances = np.asarray(distances, dtype=np.float64).reshape(-1)
        n = len(distances)
        if n < MIN_BATCH:
            raise DriftUnavailable(
                f"a drift check needs at least {MIN_BATCH} films, got {n}: fewer cannot tell a "
                "shifted batch from chance"
            )
        if probabilities is None:
            raise ValueError("the batch's scores are needed: they split it by predicted class")
        probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        batch_pos, ref_pos = probabilities >= self.split_threshold, self.probabilities >= self.split_threshold
        tests: list[dict[str, Any]] = []
        skipped: list[str] = []
        for value, stratum in enumerate(STRATA):
            b, r = batch_pos == bool(value), ref_pos == bool(value)
            if b.sum() < MIN_STRATUM or r.sum() < MIN_STRATUM:
                skipped.append(
                    f"{stratum}: {int(b.sum())} films in the batch, {int(r.sum())} in the reference "
                    f"(each needs {MIN_STRATUM})"
                )
                continue
            # ks_2samp's first sample is the batch: alternative="less" means its CDF lies below the
            # reference's somewhere, i.e. its distances are larger; "greater" means its margins are smaller.
            m = self.effective(r)
            statistic, p = smirnov(distances[b], self.distances[r], "less", m)
            tests.append(
                {
                    "stratum": stratum,
                    "kind": "feature distance (larger)",
                    "n": int(b.sum()),
                    "n_reference": int(r.sum()),
                    "reference_patients": m,
                    "statistic": statistic,
                    "p_value": p,
                }
            )
            if self.score_source != "none":
                statistic, p = smirnov(self.margin(probabilities[b]), self.margin(self.probabilities[r]), "greater", m)
                tests.append(
                    {
                        "stratum": stratum,
                        "kind": "score margin (smaller)",
                        "n": int(b.sum()),
                        "n_reference": int(r.sum()),
                        "reference_patients": m,
                        "statistic": statistic,
                        "p_value": p,
                    }
                )
        if not tests:
            raise DriftUnavailable(
                "no predicted class has enough films in both the batch and the reference: " + "; ".join(skipped)
            )
        for t, adjusted in zip(tests, holm([t["p_value"] for t in tests])):
            t["p_holm"] = adjusted
        best = min(tests, key=lambda t: t["p_value"])
        p_value = min(1.0, best["p_value"] * len(tests))
        shifted = p_value <= alpha
        return DriftResult(
            shifted,
            float(p_value),
            n,
            METHOD,
            self.label(),
            alpha,
            best["statistic"],
            tests,
            skipped,
            advice(shifted, p_value, n),
        )

    # ------------------------------------------------------------------ storage

    def save(self, path: str | Path) -> None:
        buf = io.BytesIO()
        patients = self.patients if self.patients is not None else np.arange(self.n)
        np.savez(
            buf,
            mean=self.mean,
            precision=self.precision,
            distances=self.distances,
            probabilities=self.probabilities,
            split_threshold=self.split_threshold,
            patients=patients,
            meta=np.array(
                json.dumps(
                    {
                        "score_source": self.score_source,
                        "model_sha256_16": self.model_sha256_16,
                        "description": self.description,
                        "n_fit": self.n_fit,
                        "n_calibration": self.n_calibration,
                        "created": self.created,
                        "calibration": self.calibration,
                    }
                )
            ),
        )
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                return cls(
                    z["mean"],
                    z["precision"],
                    z["distances"],
                    z["probabilities"],
                    float(z["split_threshold"]),
                    str(meta["score_source"]),
                    str(meta["model_sha256_16"]),
                    str(meta["description"]),
                    int(meta["n_fit"]),
                    int(meta["n_calibration"]),
                    str(meta["created"]),
                    dict(meta.get("calibration") or {}),
                    np.asarray(z["patients"], dtype=np.int64) if "patients" in z.files else None,
                )
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise DriftUnavailable(f"{path}: not a drift reference ({exc})") from exc

    def card_section(self) -> dict[str, Any]:
        """What the card says of the drift check: the reference, the test, and its measured error rates."""
        return {
            "reference_file": REFERENCE_FILE,
            "reference": self.label(),
            "method": METHOD,
            "alpha": ALPHA,
            "reference_patients": self.effective(np.ones(self.n, dtype=bool)),
            "min_batch": MIN_BATCH,
            "min_per_predicted_class": MIN_STRATUM,
            "score_source": self.score_source,
            "n_fit": self.n_fit,
            "n_reference": self.n,
            "n_calibration": self.n_calibration,
            "model_sha256_16": self.model_sha256_16,
            "created": self.created,
            **self.calibration,
        }


def smirnov(batch: np.ndarray, reference: np.ndarray, alternative: str, reference_patients: int) -> tuple[float, float]:
    """One-sided two-sample KS of a batch against reference films from ``reference_patients`` patients:
    (statistic, p-value), the p-value never below scipy's and counting the reference by patients."""
    from scipy.stats import ks_2samp

    found = ks_2samp(batch, reference, alternative=alternative)
    n, m = len(batch), max(1, min(int(reference_patients), len(reference)))
    statistic = float(found.statistic)
    clustered = float(np.exp(-2.0 * n * m / (n + m) * statistic**2))
    return statistic, float(min(1.0, max(float(found.pvalue), clustered)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given."""
    m = len(p_values)
    order = np.argsort(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return [float(x) for x in adjusted]


def advice(shifted: bool, p_value: float, n: int) -> str:
    if shifted:
        return (
            f"This batch of {n} films is unlike the films the operating point was set on (p = {p_value:.2g}): "
            "its sensitivity and specificity may not hold. Check a sample of these films by hand, look for a "
            "change of device, processing or population, and set a site operating point on labelled films "
            "of this site (python -m pneumo calibrate)."
        )
    return (
        f"No evidence that this batch of {n} films differs from the reference (p = {p_value:.2g}); this does not "
        "prove it is alike, and says nothing of any single film."
    )


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def model_sha(model_path: str | Path) -> str:
    """A short hash of the model file: a reference is only valid for the features of the model it was built on."""
    h = hashlib.sha256()
    with open(model_path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------- the model's view of a batch


def _read(paths: Sequence[str]) -> tuple[list[np.ndarray | None], list[str | None]]:
    from pneumo.data.collection import read_item

    def one(path: str) -> tuple[np.ndarray | None, str | None]:
        try:
            return read_item(path), None
        except (ValueError, OSError) as exc:
            return None, str(exc)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        out = list(pool.map(one, paths))
    return [o[0] for o in out], [o[1] for o in out]


def scores(loaded: Any, images: list[np.ndarray] | np.ndarray, source: str) -> np.ndarray | None:
    """The batch's scores as the reference's were made: the served probability, or the first member's."""
    if source == "none":
        return None
    if source == "member 1":
        return np.asarray(loaded.member_probabilities(images))[:, 0].astype(float)
    return np.asarray(loaded.predict(images), dtype=float)


def view(
    loaded: Any, paths: Sequence[str], source: str = "model", chunk: int = 128, progress: Progress | None = None
) -> tuple[np.ndarray, np.ndarray | None, list[int], list[dict[str, str]]]:
    """Pooled features and scores of files, decoded a chunk at a time (a large folder never sits in memory);
    returns (features, scores, indices of the readable files, unreadable files with the reason)."""
    feats, probs, kept, bad = [], [], [], []
    for start in range(0, len(paths), chunk):
        part = list(paths[start : start + chunk])
        images, errors = _read(part)
        ok = [i for i, img in enumerate(images) if img is not None]
        bad += [{"path": part[i], "error": str(errors[i])} for i in range(len(part)) if images[i] is None]
        if ok:
            batch = [img for img in images if img is not None]  # the films of ok, in order
            feats.append(quality.features(loaded, batch))
            s = scores(loaded, batch, source)
            if s is not None:
                probs.append(s)
            kept += [start + i for i in ok]
        if progress:
            progress(min(start + chunk, len(paths)), len(paths))
    if not kept:
        return np.zeros((0, 0)), None, [], bad
    return np.concatenate(feats), (np.concatenate(probs) if probs else None), kept, bad


def reference_path(model_path: str | Path) -> Path:
    return Path(model_path).with_name(REFERENCE_FILE)


# ---------------------------------------------------------------------- checking batches

# A few (reference file, model file) versions, read once each: two sessions may serve two models at once.
_CACHE: LRUCache[tuple[str, float, str, float], tuple[Reference, str]] = LRUCache(maxsize=4)
_CACHE_LOCK = threading.Lock()


def load_reference(loaded: Any) -> Reference:
    """The reference beside the model, checked to belong to it; DriftUnavailable saying why not."""
    path = reference_path(loaded.path)
    if not path.exists():
        raise DriftUnavailable(
            f"no drift reference beside {loaded.path} ({REFERENCE_FILE}); build one with "
            "`python -m pneumo drift-reference --model MODEL`"
        )
    model = Path(loaded.path)
    key = (str(path.resolve()), path.stat().st_mtime, str(model.resolve()), model.stat().st_mtime)
    with _CACHE_LOCK:
        found = _CACHE.get(key)
    if found is None:
        found = (Reference.load(path), model_sha(loaded.path))
        with _CACHE_LOCK:
            _CACHE[key] = found
    reference, sha = found
    if reference.model_sha256_16 != sha:
        raise DriftUnavailable(
            f"{path} was built for another version of the model: rebuild it (`python -m pneumo drift-reference`)"
        )
    return reference


def warm_up(loaded: Any) -> None:
    """Load the model's reference (when it has one) and the statistics the check uses, for a server that
    wants its first batch as fast as the rest: SciPy's import alone is half a second."""
    from scipy.stats import ks_2samp  # noqa: F401

    why_unavailable(loaded, MIN_BATCH)


def why_unavailable(loaded: Any, n: int) -> str | None:
    """Why a batch of n films gets no drift check (no reference, a stale one, too few films), or None."""
    try:
        load_reference(loaded)
    except DriftUnavailable as exc:
        return str(exc)
    if n < MIN_BATCH:
        return (
            f"{n} films: a drift check needs at least {MIN_BATCH} (fewer cannot tell a shifted batch from chance, "
            f"and each predicted class needs {MIN_STRATUM})"
        )
    return None


def check_batch(
    loaded: Any, images: list[np.ndarray] | np.ndarray, probabilities: Sequence[float] | None = None
) -> DriftResult | None:
    """The drift check of decoded [0, 1] gray films; None when there is none (``why_unavailable`` says why).

    ``probabilities``: the served probabilities when already computed (they are reused when the
    reference compares served scores).
    """
    if why_unavailable(loaded, len(images)) is not None:
        return None
    reference = load_reference(loaded)
    s: np.ndarray | None
    if probabilities is not None and reference.score_source == "model":
        s = np.asarray(probabilities, dtype=float)
    else:
        s = scores(loaded, images, reference.score_source)
        if s is None:
            s = np.asarray(probabilities, dtype=float) if probabilities is not None else loaded.predict(images)
    return reference.compare(reference.distance(quality.features(loaded, images)), s)


def check_paths(
    loaded: Any, paths: Sequence[str], probabilities: Sequence[float] | None = None, progress: Progress | None = None
) -> tuple[DriftResult, list[dict[str, str]]]:
    """The drift check of image files (unreadable ones are listed, not fatal); DriftUnavailable when none
    can be made. ``probabilities``, when given, are the served ones for every path, in order."""
    reference = load_reference(loaded)
    if len(paths) < MIN_BATCH:  # before any decoding: a user error answers at once
        raise DriftUnavailable(f"a drift check needs at least {MIN_BATCH} films, got {len(paths)}")
    source = reference.score_source
    reuse = probabilities is not None and source == "model"
    feats, s, kept, bad = view(
        loaded, list(paths), "none" if reuse else (source if source != "none" else "model"), progress=progress
    )
    if reuse:
        s = np.asarray(probabilities, dtype=float)[kept]
    if len(kept) < MIN_BATCH:
        raise DriftUnavailable(f"a drift check needs at least {MIN_BATCH} readable films, got {len(kept)}")
    return reference.compare(reference.distance(feats), s), bad


def report(loaded: Any, paths: Sequence[str], probabilities: Sequence[float] | None = None) -> dict[str, Any]:
    """The ``drift`` object of an evaluation report: the result, or why there is none."""
    try:
        result, _ = check_paths(loaded, paths, probabilities)
    except DriftUnavailable as exc:
        return {"available": False, "reason": str(exc)}
    return {"available": True, **result.to_dict()}


def expand(paths: Iterable[str | Path]) -> list[str]:
    """Files as given, folders as every image file under them (sorted); a missing path is an error."""
    from pneumo.data.collection import IMAGE_SUFFIXES

    out: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += [str(f) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        elif p.exists():
            out.append(str(p))
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out
