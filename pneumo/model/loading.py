"""Loading saved models with their cards, and inference on [0, 1] grayscale images.

Nothing here imports Keras or TensorFlow until a Keras model is needed: a model with a matching ONNX
export (pneumo.model.serving) is served by ONNX Runtime, which starts in a fraction of TensorFlow's time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from cachetools import LRUCache

from pneumo import import_tensorflow_quietly
from pneumo.core.card import CardError, ModelCard, check_threshold, update_card
from pneumo.core.files import check_writable, now_iso

# TensorFlow and Keras are imported where used: the dashboard serves through ONNX Runtime and must not load them
# (~600 MB resident).
from pneumo.core.paths import DEFAULT_MODEL_PATH
from pneumo.data.anatomy import FRAMINGS, framed_input
from pneumo.model import input_check
from pneumo.model.architectures import ARCHITECTURES
from pneumo.model.input_check import FILE_NAME, FeatureDensity
from pneumo.model.serving import ensemble_members, open_onnx

CARD_MAX_BYTES = 8 * 2**20

T = TypeVar("T")


class ServingCache:
    """What one loaded network builds once and keeps: traced graphs (forward pass, features, Grad-CAM per
    method and layer), tf-keras-vis explainers and the input check's density.

    Bounded (an LRU of MAX_ENTRIES): the keys include a caller-chosen Grad-CAM layer, so a long-lived
    app asked for many layers would otherwise keep a traced graph for each. Thread-safe: the app serves
    every session from one cached model. Each key is built under a lock of its own, so two sessions asking
    for one graph at once trace it once, while lookups and builds of other keys (the input check's density
    on every reading) never wait behind a slow one (the first Grad-CAM graph loads Keras).
    """

    MAX_ENTRIES = 32

    def __init__(self, maxsize: int = MAX_ENTRIES) -> None:
        self._entries: LRUCache[Hashable, Any] = LRUCache(maxsize=maxsize)
        self._lock = threading.Lock()  # guards the two dicts only, never held during a build
        # Re-entrant: a build may ask for other entries, which have locks of their own.
        self._building: dict[Hashable, threading.RLock] = {}

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        """The entry for key, built by build() on first use (and again after eviction or clear())."""
        with self._lock:
            if key in self._entries:
                return self._entries[key]
            building = self._building.setdefault(key, threading.RLock())
        with building:
            with self._lock:
                if key in self._entries:  # built by the session that held the key's lock before us
                    return self._entries[key]
            value = build()
            with self._lock:
                self._entries[key] = value
                self._building.pop(key, None)
            return value

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class PreparedBatch(np.ndarray):
    """A batch LoadedModel.prepare made (n × size × size × 1, float32), with the canonical framing it was made
    with: served as it is when passed again to a model of that framing. A model with a canonical framing cannot
    tell its own prepared batch from films that happen to have the input's shape by the shape alone, and cropping
    twice would zoom in twice. Slices and element-wise results keep the mark; np.stack and np.concatenate drop
    it (their result is then taken for films)."""

    framing: str = "none"

    def __array_finalize__(self, obj: Any) -> None:
        self.framing = getattr(obj, "framing", "none")


def common_framing(model_paths: Sequence[str | Path]) -> str:
    """The one canonical framing of models to be averaged, read from their cards; ValueError naming the framings
    when they differ (one averaged network sees each film one way)."""
    found = {str(read_card(Path(p)).extra.get("framing", "none")) for p in model_paths}
    if len(found) > 1:
        raise ValueError(f"the runs were trained with different framings ({', '.join(sorted(found))})")
    return found.pop() if found else "none"


@dataclass
class LoadedModel:
    """A saved network with its card: everything inference and the app need."""

    keras_model: Any  # None until needed (Grad-CAM, training) when an ONNX engine serves inference
    card: ModelCard
    path: Path
    engine: Any = None  # pneumo.model.serving.OnnxEngine, or None for TensorFlow
    # Which operating point card.threshold is: "shipped" (the card's own) or a site point's name, put in
    # force by pneumo.evaluation.site.apply_operating_point, so readings, CSVs and reports can say which they used.
    operating_point: str = "shipped"
    # Why an ONNX export beside the model is not serving it (refused at load: see engine.open_onnx), or None.
    engine_note: str | None = None
    # Traced graphs and side files built for this network. An init field on purpose: dataclasses.replace
    # (pneumo.evaluation.site.apply_operating_point) hands the same cache to the copy, as every entry depends on the
    # network and its folder, never on the card's threshold, so a new operating point retraces nothing.
    cache: ServingCache = field(default_factory=ServingCache, repr=False, compare=False)

    @property
    def model(self) -> Any:
        """The Keras model, loaded (and TensorFlow imported) on first use."""
        if self.keras_model is None:
            # Through the shared cache: every operating-point copy of this model uses one network.
            self.keras_model = self.cache.get("keras", lambda: load_keras_model(self.path))
        return self.keras_model

    @property
    def engine_name(self) -> str:
        return "ONNX Runtime" if self.engine is not None else "TensorFlow"

    @property
    def input_size(self) -> int:
        if self.keras_model is None and self.engine is not None:
            return self.engine.input_size
        return int(self.model.input_shape[1])

    @property
    def threshold(self) -> float:
        return self.card.threshold

    @property
    def density(self) -> Any:
        """The input check's feature density (ood.npz beside the model), or None when there is none."""
        return self.cache.get("density", lambda: FeatureDensity.load(self.path.with_name(FILE_NAME)))

    def clear_caches(self) -> None:
        """Forget every traced graph, explainer and the loaded density; each is rebuilt on next use."""
        self.cache.clear()

    @property
    def gradcam_layer(self) -> str:
        if self.card.gradcam_layer:
            return self.card.gradcam_layer
        arch = ARCHITECTURES.get(self.card.architecture)
        return arch.gradcam_layer if arch else _last_conv_layer(self.model)

    @property
    def framing(self) -> str:
        """The canonical framing every film gets before the network (pneumo.data.anatomy.FRAMINGS), from the
        card: "none" for cards written before framings existed."""
        return str(self.card.extra.get("framing", "none"))

    def prepare(self, images: list[np.ndarray] | np.ndarray) -> np.ndarray:
        """Frame [0, 1] gray images as the model was trained (its canonical framing), resize them to the model
        input and stack them into a batch (n × size × size × 1, float32, a PreparedBatch).

        Each film is resized straight into its place in one float32 batch: one copy per film, where stacking and
        then converting made three. A batch this returned is served as it is (with no copy), and so is, for a
        model without a framing step, any batch already at the input size, so a caller that prepares once and
        predicts many times pays the preparation once (bench/run.py measured 1 ms per film for a second
        pass)."""
        size = self.input_size
        framing = self.framing
        if isinstance(images, np.ndarray):
            ready = images.ndim == 4 and images.shape[1:] == (size, size, 1)
            if ready and (framing == "none" or getattr(images, "framing", None) == framing):
                return _mark(np.ascontiguousarray(images, dtype=np.float32), framing)
            if images.ndim == 2:
                images = images[None]
            elif images.ndim == 4 and images.shape[-1] == 1:
                images = images[..., 0]
        batch = np.empty((len(images), size, size, 1), np.float32)
        for i, img in enumerate(images):
            batch[i, :, :, 0] = framed_input(img, framing, size)
        return _mark(batch, framing)

    def predict(self, images: list[np.ndarray] | np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Probability of pneumonia for each [0, 1] grayscale image."""
        batch = self.prepare(images)
        out = [
            np.asarray(self._forward(batch[start : start + batch_size])) for start in range(0, len(batch), batch_size)
        ]
        return np.concatenate(out).reshape(-1).astype(float)

    def predict_with_features(
        self, images: list[np.ndarray] | np.ndarray, batch_size: int = 32
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each film's probability and its pooled features (what pneumo.model.input_check.features gives), from
        one pass of the network where the ONNX graph serves both: the input check run film by film after
        ``predict`` passes every film through the network a second time. Two passes under TensorFlow."""
        batch = self.prepare(images)
        if self.engine is None or not self.engine.has_features:
            return self.predict(batch, batch_size), input_check.features(self, batch)
        probabilities, features = [], []
        for start in range(0, len(batch), batch_size):
            p, f = self.engine.outputs(batch[start : start + batch_size], ["probability", "features"])
            probabilities.append(np.asarray(p).reshape(-1))
            features.append(np.asarray(f))
        if not probabilities:
            return np.zeros(0), input_check.features(self, batch)
        return np.concatenate(probabilities).astype(float), np.concatenate(features)

    def member_probabilities(self, images: list[np.ndarray] | np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Each ensemble member's probability (images × members) through the serving engine; a
        single network is its own one member."""
        batch = self.prepare(images)
        if self.engine is not None and self.engine.has_members:
            run = self.engine.member_probabilities
        else:
            import tensorflow as tf

            def trace() -> Any:
                nets = ensemble_members(self.model) or [self.model]
                size = self.input_size
                return tf.function(
                    lambda x: tf.stack([tf.reshape(n(x, training=False), [-1]) for n in nets], axis=1),
                    input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32)],
                )

            run = self.cache.get("members", trace)
        return np.concatenate([np.asarray(run(batch[i : i + batch_size])) for i in range(0, len(batch), batch_size)])

    @property
    def _forward(self) -> Callable[[np.ndarray], Any]:
        if self.engine is not None:
            return self.engine.probabilities
        # A traced graph: model.predict() builds a tf.data pipeline per call and an eager call runs
        # layer by layer; both cost more than the network itself for a single X-ray.
        return self.cache.get("forward", self._trace_forward)

    def _trace_forward(self) -> Callable[[np.ndarray], Any]:
        import tensorflow as tf

        size = self.input_size
        model = self.model  # the network itself, not self: a copy made by dataclasses.replace shares this graph
        return tf.function(
            lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32)]
        )


def _mark(batch: np.ndarray, framing: str) -> PreparedBatch:
    out = batch.view(PreparedBatch)
    out.framing = framing
    return out


def _last_conv_layer(model: Any) -> str:
    import keras

    for layer in reversed(model.layers):
        if (
            not isinstance(layer, keras.layers.InputLayer)
            and len(getattr(getattr(layer, "output", None), "shape", None) or ()) == 4
        ):
            return layer.name
    raise ValueError("model has no 4-D feature map for Grad-CAM")


# Predictions stored beside a model, best first: every training film out of fold (a cross-fitted
# ensemble), else the run's own held-out films.
OOF_FILE = "oof_predictions.csv"
STORED_KINDS = {OOF_FILE: "out-of-fold", "val_predictions.csv": "held-out"}


def stored_predictions_file(model_path: str | Path) -> Path | None:
    """The labelled predictions stored with a model (see STORED_KINDS), or None."""
    for name in STORED_KINDS:
        candidate = Path(model_path).with_name(name)
        if candidate.exists():
            return candidate
    return None


def card_path(model_path: Path) -> Path:
    """The card beside a model: card.json in its folder (runs and models/ alike)."""
    return Path(model_path).with_name("card.json")


def read_card(model_path: Path) -> ModelCard:
    """The model's card, validated; a model without one gets the default card (threshold 0.5)."""
    path = card_path(model_path)
    if not path.exists():
        return ModelCard.default(Path(model_path).parent.name)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CardError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if size > CARD_MAX_BYTES:  # the shipped card is 9 KB; nothing is read from a runaway or hostile file
        raise CardError(
            f"{path}: {size / 2**20:.0f} MB, larger than a model card can be ({CARD_MAX_BYTES // 2**20} MB)"
        )
    try:
        return ModelCard.read(path)
    except RecursionError:  # JSON nested beyond the parser's stack
        raise CardError(f"{path}: nested too deeply to be a model card") from None


def model_file(path: str | Path | None = None) -> Path:
    """The .keras file a --model argument names: the shipped model for None, model.keras inside a folder."""
    model_path = Path(path) if path else DEFAULT_MODEL_PATH
    return model_path / "model.keras" if model_path.is_dir() else model_path


class ModelLoadError(ValueError):
    """A model file that cannot be loaded; the message names it and says why."""


def load_model(path: str | Path | None = None, shared_cores: bool = False, threads: int | None = None) -> LoadedModel:
    """Load a model with its card; the shipped default when no path is given.

    A matching ONNX export beside the file serves inference (the Keras model then loads on first use);
    otherwise the .keras file is loaded now, with Keras' safe mode on. shared_cores: the process shares
    its cores with other work (the dashboard), so ONNX Runtime's threads sleep rather than spin. threads:
    ONNX Runtime's threads per operator, when fewer than every core (one process of several per machine).
    """
    model_path = Path(path) if path else DEFAULT_MODEL_PATH
    if model_path.is_dir():
        model_path = model_path / "model.keras"
    if not model_path.exists():
        raise FileNotFoundError(f"no model at {model_path}")
    card = read_card(model_path)  # a bad card is refused before the model is loaded
    framing = card.extra.get("framing", "none")
    if framing not in FRAMINGS:  # serving without the step the network was trained with would be silently wrong
        raise ModelLoadError(
            f"{card_path(model_path)}: framing {framing!r} is not one this version knows ({', '.join(FRAMINGS)})"
        )
    notes: list[str] = []
    engine = open_onnx(model_path, notes, spin=not shared_cores, threads=threads)
    return LoadedModel(
        None if engine else load_keras_model(model_path), card, model_path, engine, engine_note="; ".join(notes) or None
    )


def load_keras_model(model_path: str | Path) -> Any:
    """The Keras model in a .keras file (safe mode on), checked for one square image input."""
    import_tensorflow_quietly()
    import keras

    try:
        model = keras.models.load_model(model_path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for damaged, foreign or unsafe files
        raise ModelLoadError(f"{model_path}: cannot be loaded as a Keras model ({type(exc).__name__}: {exc})") from exc
    if len(model.inputs) != 1 or len(model.input_shape) != 4 or model.input_shape[1] != model.input_shape[2]:
        raise ModelLoadError(f"{model_path}: expected one square image input, got {model.input_shape}")
    return model


def save_operating_point(model_path: str | Path, threshold: float, rule: str, **record: Any) -> ModelCard:
    """Write a new operating threshold (and how it was chosen) into the model's card, atomically.

    Extra keyword fields (who confirmed what) are kept in the card's threshold history. Read, changed and
    written under the card's lock (update_card): a save at the same time as a calibration, an evaluation or
    another save loses neither.
    """
    threshold = check_threshold(threshold, str(model_path))
    check_writable(card_path(Path(model_path)))  # a read-only card is refused, never replaced (ReadOnlyError)

    def put(card: ModelCard) -> None:
        card.threshold_history.append(
            {"threshold": card.threshold, "rule": card.threshold_rule, "replaced": now_iso(), **record}
        )
        card.threshold, card.threshold_rule = threshold, rule

    return update_card(card_path(Path(model_path)), put)
