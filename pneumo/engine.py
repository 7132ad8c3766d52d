"""Inference engines for a saved model: ONNX Runtime when an exported graph matches the model file.

On a CPU, ONNX Runtime runs this project's small CNNs several times faster than TensorFlow, for one
film and for batches (see bench/), and it needs no TensorFlow import, which costs seconds at start-up.
The model is exported with tf2onnx into two graphs: model.onnx (the probability and the pooled features
the input check reads, for any batch) and gradcam.onnx (Grad-CAM and Grad-CAM++ maps of one image, the
gradient included, exported from the same TensorFlow function the traced engine runs). Each records the SHA-256 of the .keras file it came from; a
graph whose source no longer matches is ignored, so a retrained or replaced model is never served by a
stale export. Without onnxruntime, or without a matching export, TensorFlow serves the model.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

ONNX_NAME = "model.onnx"
CAM_NAME = "gradcam.onnx"
SOURCE_KEY = "pneumo_source_sha256"
LAYER_KEY = "pneumo_gradcam_layer"
CAM_OUTPUTS = {"gradcam": "gradcam", "gradcam++": "gradcam_plus_plus"}
ENGINE_ENV = "PNEUMO_ENGINE"  # "auto" (default), "onnx" or "tensorflow"
OPSET = 17


class ExportError(RuntimeError):
    """The model could not be exported to ONNX (missing converter, unsupported operation)."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def onnx_path(model_path: str | Path) -> Path:
    return Path(model_path).with_name(ONNX_NAME)


def export_onnx(model: Any, model_path: str | Path, gradcam_layer: str | None = None) -> Path:
    """Write model.onnx (and gradcam.onnx when a Grad-CAM layer is given) beside model_path, the saved
    .keras file of `model`, atomically."""
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as exc:
        raise ExportError(f"ONNX export needs tf2onnx ({exc})") from exc
    from .quality import feature_model

    size = int(model.input_shape[1])
    image = tf.TensorSpec([None, size, size, 1], tf.float32, name="xray")
    try:
        features = feature_model(model)
    except ValueError:
        features = None

    def serve(x: Any) -> dict[str, Any]:
        out = {"probability": tf.reshape(model(x, training=False), [-1])}
        if features is not None:
            out["features"] = features(x, training=False)
        return out

    source = file_sha256(model_path)
    dest = onnx_path(model_path)
    # A converter slip must never reach a reading: the export is checked against Keras on probe images
    # (the 1e-4 tolerance of the tests) and removed when it differs.
    probe = np.random.default_rng(0).random((4, size, size, 1)).astype(np.float32)
    _convert(serve, [image], {SOURCE_KEY: source}, dest)
    _check(dest, {"probability": np.asarray(model(probe, training=False)).reshape(-1)}, {"xray": probe})
    dest.with_name(CAM_NAME).unlink(missing_ok=True)
    if gradcam_layer:
        from .explain import METHODS, cam_function

        _register_gradient_ops()
        try:
            cams = {m: cam_function(model, m, gradcam_layer) for m in METHODS}
        except ValueError:  # no such layer: the card's Grad-CAM layer is checked where maps are drawn
            return dest
        # One image at a time, with static shapes: the gradient's shape arithmetic then folds into constants.
        one = [tf.TensorSpec([1, size, size, 1], tf.float32, name="xray"), tf.TensorSpec([1], tf.float32, name="sign")]
        try:
            cam_dest = dest.with_name(CAM_NAME)
            _convert(lambda x, sign: {CAM_OUTPUTS[m]: fn(x, sign) for m, fn in cams.items()}, one,
                     {SOURCE_KEY: source, LAYER_KEY: gradcam_layer}, cam_dest)
            sign = np.ones(1, np.float32)
            _check(cam_dest, {CAM_OUTPUTS[m]: np.asarray(fn(probe[:1], sign)) for m, fn in cams.items()},
                   {"xray": probe[:1], "sign": sign}, relative=1e-3)
        except ExportError:
            pass  # probabilities from ONNX Runtime, Grad-CAM from the traced TensorFlow graph
    return dest


def _check(path: Path, expected: dict[str, np.ndarray], feeds: dict[str, np.ndarray], relative: float = 0.0) -> None:
    """Refuse an export whose outputs differ from Keras': by 1e-4 (probabilities), or by `relative` of the
    largest value (Grad-CAM maps, whose scale is arbitrary: they are normalised before display)."""
    session = _session(path)
    for name, want in expected.items():
        got = session.run([name], feeds)[0]
        tolerance = relative * float(np.abs(want).max()) if relative else 1e-4
        if got.shape != want.shape or not np.allclose(got, want, atol=tolerance, rtol=0):
            path.unlink(missing_ok=True)
            raise ExportError(f"{path}: ONNX Runtime's '{name}' differs from Keras' on probe images; export removed")


def _convert(fn: Any, signature: list[Any], metadata: dict[str, str], dest: Path) -> None:
    import tensorflow as tf
    import tf2onnx

    from .runs import atomic_write_bytes

    try:
        proto, _ = tf2onnx.convert.from_function(tf.function(fn, input_signature=signature), input_signature=signature,
                                                 opset=OPSET)
    except Exception as exc:  # the converter raises many types for operations it cannot map
        raise ExportError(f"{dest}: ONNX export failed ({type(exc).__name__}: {exc})") from exc
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write_bytes(dest, proto.SerializeToString())


def _register_gradient_ops() -> None:
    """tf2onnx maps forward operations only; the Grad-CAM graph also holds the sigmoid's gradient."""
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("SigmoidGrad")
    class SigmoidGrad:  # noqa: F841 - registered by the decorator
        @classmethod
        def version_1(cls, ctx: Any, node: Any, **kwargs: Any) -> None:
            y, dy = node.input  # dy · y · (1 − y)
            one = ctx.make_const(utils.make_name("one"), np.array(1.0, np.float32)).output[0]
            slope = ctx.make_node("Mul", [y, ctx.make_node("Sub", [one, y]).output[0]]).output[0]
            ctx.remove_node(node.name)
            ctx.make_node("Mul", [dy, slope], outputs=node.output, name=node.name)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One pool over every core for each operator; nothing runs beside it in a request.
    options.intra_op_num_threads = os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _metadata(session: Any) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


class OnnxEngine:
    """ONNX Runtime sessions over an exported model: probabilities, pooled features, Grad-CAM maps."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.session = _session(self.path)
        self.input_name = self.session.get_inputs()[0].name
        self.input_size = int(self.session.get_inputs()[0].shape[1])
        self.has_features = "features" in [o.name for o in self.session.get_outputs()]
        self.source_sha256 = _metadata(self.session).get(SOURCE_KEY)
        self.cam_session: Any = None
        self.cam_layer: str | None = None
        cam_path = self.path.with_name(CAM_NAME)
        if cam_path.exists():
            try:
                session = _session(cam_path)
            except Exception:  # a damaged Grad-CAM graph: the traced TensorFlow one serves instead
                session = None
            if session is not None and _metadata(session).get(SOURCE_KEY) == self.source_sha256:
                self.cam_session, self.cam_layer = session, _metadata(session).get(LAYER_KEY)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(["probability"], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]

    def features(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(["features"], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]

    def explains(self, layer: str) -> bool:
        return self.cam_session is not None and self.cam_layer == layer

    def cam(self, batch: np.ndarray, sign: np.ndarray, method: str) -> np.ndarray:
        """Raw maps at the Grad-CAM layer's resolution, one image at a time."""
        maps = [self.cam_session.run([CAM_OUTPUTS[method]], {"xray": np.ascontiguousarray(batch[i: i + 1], np.float32),
                                                              "sign": np.asarray(sign[i: i + 1], np.float32)})[0]
                for i in range(len(batch))]
        return np.concatenate(maps)


def engine_choice() -> str:
    choice = os.environ.get(ENGINE_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "onnx", "tensorflow"):
        raise ValueError(f"{ENGINE_ENV}={choice!r}: choose auto, onnx or tensorflow")
    return choice


def open_onnx(model_path: str | Path) -> OnnxEngine | None:
    """The ONNX engine for a model file, or None (no export, a stale one, no onnxruntime, or turned off)."""
    choice = engine_choice()
    path = onnx_path(model_path)
    if choice == "tensorflow" or not path.exists():
        if choice == "onnx":
            raise FileNotFoundError(f"{ENGINE_ENV}=onnx but there is no {path}; run: python -m pneumo export {model_path}")
        return None
    try:
        engine = OnnxEngine(path)
    except ImportError:
        if choice == "onnx":
            raise
        return None
    except Exception as exc:  # onnxruntime raises its own types for damaged files
        if choice == "onnx":
            raise ValueError(f"{path}: cannot be loaded by ONNX Runtime ({exc})") from exc
        return None
    if engine.source_sha256 != file_sha256(model_path):
        if choice == "onnx":
            raise ValueError(f"{path} was exported from another version of {model_path}; run: python -m pneumo export")
        return None
    return engine
