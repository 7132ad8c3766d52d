"""Inference engines for a saved model: ONNX Runtime when an exported graph matches the model file.

On a CPU, ONNX Runtime runs this project's small CNNs several times faster than TensorFlow, for one film and for
batches (see bench/), and it needs no TensorFlow import, which costs seconds at start-up. The model is exported with
tf2onnx into two graphs: model.onnx (the probability and the pooled features the input check reads, for any batch)
and gradcam.onnx (Grad-CAM and Grad-CAM++ maps of one image, the gradient included, exported from the same
TensorFlow function the traced engine runs). Each records the SHA-256 of the .keras file it came from; a graph whose
source no longer matches is ignored, so a retrained or replaced model is never served by a stale export. Without
onnxruntime, or without a matching export, TensorFlow serves the model.

The recorded hash is self-declared: any graph can carry it. So export also writes onnx_probe.json beside the model:
a few deterministic synthetic films with the Keras model's own outputs on them. Every load runs the probe through
the graphs (a few milliseconds) and serves them only when they agree within 1e-4 (probabilities); a graph that does
not, or has no probe, is refused with one line and TensorFlow serves.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.core.files import atomic_write_bytes, atomic_write_json, file_sha256
from pneumo.model.input_check import feature_model

# TensorFlow, tf2onnx and ONNX Runtime are imported where used: exporting needs the first two and serving the last;
# the dashboard imports this module and must not load TensorFlow (~600 MB resident).

ONNX_NAME = "model.onnx"
CAM_NAME = "gradcam.onnx"
SOURCE_KEY = "pneumo_source_sha256"
LAYER_KEY = "pneumo_gradcam_layer"
CAM_OUTPUTS = {"gradcam": "gradcam", "gradcam++": "gradcam_plus_plus"}
ENGINE_ENV = "PNEUMO_ENGINE"  # "auto" (default), "onnx" or "tensorflow"
OPSET = 17
PROBE_NAME = "onnx_probe.json"  # runs.PROBE_FILE
PROBE_VERSION = 1
PROBE_TOLERANCE = 1e-4  # probabilities; other outputs within 1e-3 of their largest value
PROBE_MAX_BYTES = 4 * 2**20
_log = logging.getLogger("pneumo.model.serving")


class ExportError(RuntimeError):
    """The model could not be exported to ONNX (missing converter, unsupported operation)."""


def onnx_path(model_path: str | Path) -> Path:
    return Path(model_path).with_name(ONNX_NAME)


def export_onnx(
    model: Any, model_path: str | Path, gradcam_layer: str | None = None, cam_functions: Mapping[str, Any] | None = None
) -> Path:
    """Write model.onnx (and gradcam.onnx when map functions are given) beside model_path, the saved
    .keras file of `model`, atomically.

    cam_functions: {method: fn(x, sign) -> maps} for the Grad-CAM layer (pneumo.model.explain.cam_functions).
    The engine receives them rather than importing the module that makes them: explanations depend on
    the serving engine, not the other way round.
    """
    try:
        import tensorflow as tf
        import tf2onnx  # noqa: F401 - checked here, so a missing converter is one line before any work
    except ImportError as exc:
        raise ExportError(f"ONNX export needs tf2onnx ({exc})") from exc
    size = int(model.input_shape[1])
    image = tf.TensorSpec([None, size, size, 1], tf.float32, name="xray")
    try:
        features = feature_model(model)
    except ValueError:
        features = None

    members = ensemble_members(model)

    def serve(x: Any) -> dict[str, Any]:
        if members:
            # An ensemble also serves each member's probability, computed once: member k of a cross-fitted
            # ensemble never saw fold k, so its stored out-of-fold predictions can be re-checked through
            # the very graph that serves.
            each = tf.stack([tf.reshape(m(x, training=False), [-1]) for m in members], axis=1)
            out = {"probability": tf.reduce_mean(each, axis=1), "members": each}
        else:
            out = {"probability": tf.reshape(model(x, training=False), [-1])}
        if features is not None:
            out["features"] = features(x, training=False)
        return out

    source = file_sha256(model_path)
    dest = onnx_path(model_path)
    # A converter slip must never reach a reading: the export is checked against Keras on probe images
    # (the 1e-4 tolerance of the tests) and removed when it differs; the same probe, with Keras' outputs,
    # is kept beside the model so that every load can check the graph again.
    probe = probe_images(size)
    _convert(serve, [image], {SOURCE_KEY: source}, dest)
    expected = {name: np.asarray(value) for name, value in serve(tf.constant(probe)).items()}
    _check(dest, {"probability": expected["probability"]}, {"xray": probe})
    expected = _agreeing_outputs(dest, expected, probe)
    _write_probe(model_path, source, size, expected)
    dest.with_name(CAM_NAME).unlink(missing_ok=True)
    if gradcam_layer and cam_functions:
        _register_gradient_ops()
        cams = dict(cam_functions)
        # One image at a time, with static shapes: the gradient's shape arithmetic then folds into constants.
        one = [tf.TensorSpec([1, size, size, 1], tf.float32, name="xray"), tf.TensorSpec([1], tf.float32, name="sign")]
        try:
            cam_dest = dest.with_name(CAM_NAME)
            _convert(
                lambda x, sign: {CAM_OUTPUTS[m]: fn(x, sign) for m, fn in cams.items()},
                one,
                {SOURCE_KEY: source, LAYER_KEY: gradcam_layer},
                cam_dest,
            )
            sign = np.ones(1, np.float32)
            maps = {CAM_OUTPUTS[m]: np.asarray(fn(probe[:1], sign)) for m, fn in cams.items()}
            _check(cam_dest, maps, {"xray": probe[:1], "sign": sign}, relative=1e-3)
            _write_probe(model_path, source, size, expected, maps)
        except ExportError:
            pass  # probabilities from ONNX Runtime, Grad-CAM from the traced TensorFlow graph
    return dest


def probe_images(size: int) -> np.ndarray:
    """Eight deterministic films (size × size × 1, float32 in [0, 1]) that every export is checked on.

    Chest-like pictures (body, two dark lung fields) with an opacity of growing strength and changing
    exposure, then noise and a ramp: a trained model gives them different probabilities, so a graph that
    answers a constant, or another model's answers, cannot match them all. Changing this function makes
    every stored probe disagree: bump PROBE_VERSION with it.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1)
    body = np.sqrt(np.clip(1.0 - ((xx - 0.5) / 0.45) ** 2 - ((yy - 0.55) / 0.6) ** 2, 0.0, 1.0))
    lungs = sum(np.exp(-(((xx - cx) / 0.13) ** 2 + ((yy - 0.5) / 0.25) ** 2)) for cx in (0.32, 0.68))
    films = []
    for k in range(6):
        film = 0.15 + 0.6 * body - 0.35 * (0.6 + 0.1 * k) * lungs
        side = 0.32 if k % 2 else 0.68
        film = film + 0.1 * k * np.exp(-((xx - side) ** 2 + (yy - 0.55) ** 2) / (2 * 0.08**2))
        films.append(np.clip(film, 0.0, 1.0) ** (0.7 + 0.1 * k))
    films.append(np.random.default_rng(PROBE_VERSION).random((size, size)))
    films.append(np.outer(np.linspace(0.0, 1.0, size), np.linspace(1.0, 0.0, size)))
    return np.stack(films)[..., None].astype(np.float32)


def probe_path(model_path: str | Path) -> Path:
    return Path(model_path).with_name(PROBE_NAME)


def _tolerance(name: str, want: np.ndarray) -> float:
    if name in ("probability", "members"):
        return PROBE_TOLERANCE
    return 1e-3 * max(1.0, float(np.abs(want).max()) if want.size else 1.0)


def _agreeing_outputs(path: Path, expected: dict[str, np.ndarray], probe: np.ndarray) -> dict[str, np.ndarray]:
    """The outputs ONNX Runtime reproduces within the load-time tolerance (the probability always does,
    after _check); only those are stored, so a load never refuses a graph export itself accepted."""
    session = _session(path)
    kept = {}
    for name, want in expected.items():
        got = session.run([name], {"xray": probe})[0]
        if got.shape == want.shape and np.allclose(got, want, atol=_tolerance(name, want), rtol=0):
            kept[name] = want
    return kept


def _write_probe(
    model_path: str | Path,
    source: str,
    size: int,
    outputs: dict[str, np.ndarray],
    cams: dict[str, np.ndarray] | None = None,
) -> None:
    atomic_write_json(
        probe_path(model_path),
        {
            "version": PROBE_VERSION,
            "source_sha256": source,
            "input_size": size,
            "images": int(len(outputs["probability"])),
            "about": "Keras outputs on pneumo.model.serving.probe_images(input_size); every load of model.onnx and "
            "gradcam.onnx is checked against them",
            "outputs": {name: value.astype(float).tolist() for name, value in outputs.items()},
            "gradcam": {name: value.astype(float).tolist() for name, value in (cams or {}).items()},
        },
    )


def _read_probe(model_path: Path, source: str, size: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The stored probe's (outputs, Grad-CAM maps); ValueError saying what is wrong with it."""
    path = probe_path(model_path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(PROBE_MAX_BYTES + 1)
    except FileNotFoundError:
        raise ValueError(
            f"there is no {PROBE_NAME} to check it against (an export from before load-time "
            "checks, or copied without it)"
        ) from None
    if len(raw) > PROBE_MAX_BYTES:
        raise ValueError(f"{PROBE_NAME} is larger than {PROBE_MAX_BYTES // 2**20} MB")
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError(f"{PROBE_NAME} is not valid JSON") from None
    if not isinstance(record, dict) or record.get("version") != PROBE_VERSION:
        raise ValueError(f"{PROBE_NAME} is not a version-{PROBE_VERSION} probe record")
    if record.get("source_sha256") != source:
        raise ValueError(f"{PROBE_NAME} was written for another version of {model_path.name}")
    if record.get("input_size") != size:
        raise ValueError(f"{PROBE_NAME} is for {record.get('input_size')!r} px input, the graph takes {size} px")

    def arrays(block: Any, name: str) -> dict[str, np.ndarray]:
        if not isinstance(block, dict):
            raise ValueError(f"{PROBE_NAME}: {name} must be an object")
        try:
            return {str(k): np.asarray(v, dtype=np.float32) for k, v in block.items()}
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{PROBE_NAME}: {name} must hold arrays of numbers") from None

    outputs = arrays(record.get("outputs"), "outputs")
    if "probability" not in outputs:
        raise ValueError(f"{PROBE_NAME} holds no probabilities")
    return outputs, arrays(record.get("gradcam", {}), "gradcam")


def check_probe(engine: OnnxEngine, model_path: str | Path, source: str) -> tuple[str | None, str | None]:
    """Run the stored probe through an engine's graphs: (why model.onnx must not serve, or None; why
    gradcam.onnx must not, or None). A refused Grad-CAM graph is dropped from the engine."""
    model_path = Path(model_path)
    try:
        outputs, cams = _read_probe(model_path, source, engine.input_size)
    except ValueError as exc:
        return str(exc), None
    probe = probe_images(engine.input_size)
    names = [o.name for o in engine.session.get_outputs()]
    missing = [name for name in outputs if name not in names]
    if missing:
        return f"it has no '{missing[0]}' output, which the model's export had", None
    try:  # one pass over the probe for every output
        served = dict(zip(outputs, engine.session.run(list(outputs), {engine.input_name: probe})))
    except Exception as exc:  # onnxruntime raises its own types for graphs that cannot take the probe
        return f"it cannot run the probe films ({type(exc).__name__})", None
    for name, want in outputs.items():
        got = served[name]
        if got.shape != want.shape:
            return (
                f"its '{name}' has shape {tuple(got.shape)} on the probe films, the model's {tuple(want.shape)}",
                None,
            )
        diff = float(np.abs(got.astype(np.float64) - want).max()) if want.size else 0.0
        if not diff <= _tolerance(name, want):
            return (
                f"its '{name}' on the probe films differs from the model's by {diff:.3g} "
                f"(allowed {_tolerance(name, want):.0e})"
            ), None
    if engine.cam_session is None:
        return None, None
    cam_problem = None
    if set(cams) != set(CAM_OUTPUTS.values()):
        cam_problem = f"{CAM_NAME}: no Grad-CAM maps in {PROBE_NAME} to check it against"
    else:
        try:
            feeds = {"xray": probe[:1], "sign": np.ones(1, np.float32)}
            served = dict(zip(cams, engine.cam_session.run(list(cams), feeds)))
            for name, want in cams.items():
                got = served[name]
                tolerance = 1e-3 * float(np.abs(want).max()) if want.size else 0.0
                if got.shape != want.shape or not np.allclose(got, want, atol=tolerance, rtol=0):
                    cam_problem = f"{CAM_NAME}: its '{name}' map on the probe film differs from the model's"
                    break
        except Exception as exc:  # as above
            cam_problem = f"{CAM_NAME}: cannot run the probe film ({type(exc).__name__})"
    if cam_problem:
        engine.cam_session, engine.cam_layer = None, None
    return None, cam_problem


def ensemble_members(model: Any) -> list[Any]:
    """The member networks of an ensemble built by pneumo (nested models named member1, member2, …)."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name.startswith("member")]


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

    try:
        proto, _ = tf2onnx.convert.from_function(
            tf.function(fn, input_signature=signature), input_signature=signature, opset=OPSET
        )
    except Exception as exc:  # the converter raises many types for operations it cannot map
        raise ExportError(f"{dest}: ONNX export failed ({type(exc).__name__}: {exc})") from exc
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write_bytes(dest, proto.SerializeToString())


def _register_gradient_ops() -> None:
    """tf2onnx maps forward operations only; the Grad-CAM graph also holds the sigmoid's gradient.

    tf2onnx.handler.tf_op is tf2onnx's own registration decorator, not a private name: tfonnx.py (1.17)
    calls it "the future way we want custom ops to be registered", and the other public route,
    from_function(custom_op_handlers=...), is "the old custom op api" it wraps into tf_op and marks for
    removal. A handler registered here applies to every later conversion in the process; registering
    again replaces it with the same mapping.
    """
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


def _session(path: Path, spin: bool = True, threads: int | None = None) -> Any:
    """An ONNX Runtime session over every core for each operator (or `threads` of them).

    spin: the pool's threads busy-wait between operators (the fastest when nothing else wants the cores:
    the command line, the benchmark). A process that shares its cores (the dashboard, with its web server
    and often the browser beside it) passes False: spinning threads then take the cores from the work
    they wait for, and 25 films took 6.0 s to show instead of 3.8-4.2 s on 2 cores. threads: fewer than every
    core, for a process that is one of several on the machine (a screening actor: one per core).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads or os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _metadata(session: Any) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


class OnnxEngine:
    """ONNX Runtime sessions over an exported model: probabilities, pooled features, Grad-CAM maps."""

    def __init__(self, path: str | Path, spin: bool = True, threads: int | None = None):
        self.path = Path(path)
        self.session = _session(self.path, spin, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.input_size = int(self.session.get_inputs()[0].shape[1])
        self.has_features = "features" in [o.name for o in self.session.get_outputs()]
        self.source_sha256 = _metadata(self.session).get(SOURCE_KEY)
        self.cam_session: Any = None
        self.cam_layer: str | None = None
        cam_path = self.path.with_name(CAM_NAME)
        if cam_path.exists():
            try:
                session = _session(cam_path, spin, threads)
            except Exception:  # a damaged Grad-CAM graph: the traced TensorFlow one serves instead
                session = None
            if session is not None and _metadata(session).get(SOURCE_KEY) == self.source_sha256:
                self.cam_session, self.cam_layer = session, _metadata(session).get(LAYER_KEY)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(["probability"], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]

    def outputs(self, batch: np.ndarray, names: list[str]) -> list[np.ndarray]:
        """Several outputs of one pass of the network (the probability and the pooled features share it)."""
        return self.session.run(names, {self.input_name: np.ascontiguousarray(batch, np.float32)})

    @property
    def has_members(self) -> bool:
        return "members" in [o.name for o in self.session.get_outputs()]

    def member_probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Each ensemble member's probability (images × members)."""
        return self.session.run(["members"], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]

    def features(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(["features"], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]

    def explains(self, layer: str) -> bool:
        return self.cam_session is not None and self.cam_layer == layer

    def cam(self, batch: np.ndarray, sign: np.ndarray, method: str) -> np.ndarray:
        """Raw maps at the Grad-CAM layer's resolution, one image at a time."""
        return self.cams(batch, sign, (method,))[method]

    def cams(self, batch: np.ndarray, sign: np.ndarray, methods: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Raw maps of several methods from one forward and backward pass per image (they share it)."""
        names = [CAM_OUTPUTS[m] for m in methods]
        runs = [
            self.cam_session.run(
                names,
                {
                    "xray": np.ascontiguousarray(batch[i : i + 1], np.float32),
                    "sign": np.asarray(sign[i : i + 1], np.float32),
                },
            )
            for i in range(len(batch))
        ]
        return {m: np.concatenate([run[k] for run in runs]) for k, m in enumerate(methods)}


def engine_choice() -> str:
    choice = os.environ.get(ENGINE_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "onnx", "tensorflow"):
        raise ValueError(f"{ENGINE_ENV}={choice!r}: choose auto, onnx or tensorflow")
    return choice


def open_onnx(
    model_path: str | Path, notes: list[str] | None = None, spin: bool = True, threads: int | None = None
) -> OnnxEngine | None:
    """The ONNX engine for a model file, or None (no export, a stale one, no onnxruntime, or turned off).
    threads: ONNX Runtime's threads per operator (default: every core).

    An export whose graph fails the stored probe is refused: one line on the "pneumo.model.serving" logger (and in
    notes, when given), and None, so TensorFlow serves; with PNEUMO_ENGINE=onnx, ValueError instead.
    """
    choice = engine_choice()
    path = onnx_path(model_path)
    if choice == "tensorflow" or not path.exists():
        if choice == "onnx":
            raise FileNotFoundError(
                f"{ENGINE_ENV}=onnx but there is no {path}; run: python -m pneumo export {model_path}"
            )
        return None
    try:
        engine = OnnxEngine(path, spin, threads)
    except ImportError:
        if choice == "onnx":
            raise
        return None
    except Exception as exc:  # onnxruntime raises its own types for damaged files
        if choice == "onnx":
            raise ValueError(f"{path}: cannot be loaded by ONNX Runtime ({exc})") from exc
        return None
    source = file_sha256(model_path)
    if engine.source_sha256 != source:
        if choice == "onnx":
            raise ValueError(f"{path} was exported from another version of {model_path}; run: python -m pneumo export")
        return None
    problem, cam_problem = check_probe(engine, model_path, source)
    if problem:
        message = f"{path}: refused: {problem}; {Path(model_path).name} is served by TensorFlow"
        if choice == "onnx":
            raise ValueError(
                message.replace("is served by TensorFlow", f"is not served ({ENGINE_ENV}=onnx)")
                + f"; run: python -m pneumo export {model_path}"
            )
        message += f" (a trusted re-export: python -m pneumo export {model_path})"
        _log.warning("warning: %s", message)
        if notes is not None:
            notes.append(message)
        return None
    if cam_problem:
        message = (
            f"{path.with_name(CAM_NAME)}: refused: {cam_problem.split(': ', 1)[-1]}; Grad-CAM is drawn by TensorFlow"
        )
        _log.warning("warning: %s", message)
        if notes is not None:
            notes.append(message)
    return engine
