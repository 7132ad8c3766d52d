"""Grad-CAM and Grad-CAM++ heatmaps and their overlay on the X-ray.

Three engines give the same maps: the exported ONNX graph when the model has one (pneumo.model.serving), a
traced TensorFlow graph otherwise, and tf-keras-vis, the reference both are tested against (a development
dependency: the `dev` extra installs it; serving never needs it).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from pneumo import import_tensorflow_quietly
from pneumo.data.anatomy import framing_box, place_map
from pneumo.data.pixels import to_uint8
from pneumo.model.input_check import check
from pneumo.model.loading import LoadedModel

# TensorFlow, Keras, tf-keras-vis and SciPy are imported where used: the dashboard imports this module and serves
# Grad-CAM through ONNX Runtime, so it must not load TensorFlow (~600 MB resident).

METHODS = ("gradcam", "gradcam++")
TARGET_ALIAS = "gradcam_target"

EPSILON = 1e-7  # keras.backend.epsilon(), which tf-keras-vis adds when it scales a map to [0, 1]


def _find_layer(model: Any, name: str) -> tuple[Any, Any]:
    """The layer called name, and the nested model holding it (None when it sits in the top graph)."""
    import keras

    try:
        return None, model.get_layer(name)
    except ValueError:
        pass
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            try:
                return layer, layer.get_layer(name)
            except ValueError:
                continue
    raise ValueError(f"layer '{name}' not found in model '{model.name}'")


def reachable_model(model: Any, layer_name: str) -> tuple[Any, str]:
    """A model in which the Grad-CAM layer is a top-level layer.

    tf-keras-vis reads the target layer's output from the model's own graph, which a layer inside a
    nested backbone is not part of. We rebuild the model (same layers, same weights) with the backbone
    split in two at the target, front and back, and an identity layer between them, so the gradient
    flows through a top-level tensor. Public Keras only: sub-models over the backbone's own graph
    (keras.Model on its tensors) and keras.models.clone_model(call_function=...) for the outer graph.
    """
    import keras

    holder, layer = _find_layer(model, layer_name)
    if holder is None:
        return model, layer_name
    alias = keras.layers.Identity(name=TARGET_ALIAS)
    back, skips = None, False
    if [id(t) for t in holder.outputs] != [id(layer.output)]:  # the target is not the backbone's own output
        front = keras.Model(holder.input, layer.output, name=f"{holder.name}_to_{layer_name}")
        try:
            back = keras.Model(layer.output, holder.output, name=f"{holder.name}_from_{layer_name}")
        except ValueError:
            # A connection bypasses the target (a residual around it): the back half also reads the
            # backbone's input. Those bypassing layers run twice; the gradient through the target is the same.
            back = keras.Model([*holder.inputs, layer.output], holder.output, name=f"{holder.name}_from_{layer_name}")
            skips = True
    else:
        front = holder

    def split_call(inputs: Any, **kwargs: Any) -> Any:
        # kwargs: what the outer graph passed to the backbone (training=False for a frozen one), kept.
        target = alias(front(inputs, **kwargs))
        if back is None:
            return target
        return back([*keras.tree.flatten(inputs), target] if skips else target, **kwargs)

    def call(operation: Any, *args: Any, **kwargs: Any) -> Any:
        if operation is holder:
            return split_call(*args, **kwargs)
        return operation(*args, **kwargs)

    name = f"{model.name}_for_gradcam"
    if isinstance(model, keras.Sequential):  # clone_model takes no call_function for a Sequential: a plain chain
        inputs = keras.Input(shape=model.input_shape[1:], name="xray")
        x = inputs
        for operation in model.layers:
            x = call(operation, x)
        return keras.Model(inputs, x, name=name), TARGET_ALIAS
    # clone_function=identity: the same layer objects (shared weights, no copy), called anew.
    rebuilt = keras.models.clone_model(model, clone_function=lambda operation: operation, call_function=call)
    return keras.Model(rebuilt.input, rebuilt.output, name=name), TARGET_ALIAS


def explained_network(model: Any, layer_name: str) -> Any:
    """The network Grad-CAM runs through.

    For an ensemble (an Average over member networks) it is the member holding the target layer: the
    other members do not depend on that feature map, so the ensemble's Grad-CAM weights are the
    member's scaled by 1/N, which normalisation removes: the same map at a fraction of the cost.
    (Grad-CAM++ weighs by the score itself, so there it is the member's own map.)
    """
    import keras

    holder, _ = _find_layer(model, layer_name)
    last = model.layers[-1]
    is_average = isinstance(last, keras.layers.Average)
    if (
        holder is not None
        and is_average
        and holder.input_shape == model.input_shape
        and holder.output_shape == model.output_shape
    ):
        return holder
    return model


def _explainer(loaded: LoadedModel, method: str, layer: str) -> tuple[Any, str]:
    """The tf-keras-vis explainer for a method and layer, kept in the model's own cache (it dies with it)."""

    def build() -> tuple[Any, str]:
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus

        target_model, target_layer = reachable_model(explained_network(loaded.model, layer), layer)
        cls = GradcamPlusPlus if method == "gradcam++" else Gradcam
        # clone=False: the model is never modified, and a copy would double its memory.
        return cls(target_model, clone=False), target_layer

    return loaded.cache.get(("tf-keras-vis", method, layer), build)


def gradcam(
    loaded: LoadedModel,
    image: np.ndarray,
    method: str = "gradcam",
    target: int | None = None,
    layer: str | None = None,
    engine: str = "compiled",
) -> np.ndarray:
    """A heatmap in [0, 1] at the image's size showing what drove the score of the target class.

    target: 1 explains the pneumonia score, 0 the normal score, None the predicted class.
    engine: "compiled" (one graph for the forward pass, gradient and weighting: the model's ONNX export
    when it has one, else traced TensorFlow) or "tf-keras-vis", the reference the compiled maps are
    tested against.
    """
    return gradcams(loaded, image, (method,), target, layer, engine)[method]


def gradcams(
    loaded: LoadedModel,
    image: np.ndarray,
    methods: tuple[str, ...] = METHODS,
    target: int | None = None,
    layer: str | None = None,
    engine: str = "compiled",
) -> dict[str, np.ndarray]:
    """gradcam() for several methods at once: with the ONNX export, one forward and backward pass serves
    every method, and the predicted class (target None) is found once."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"method must be one of {METHODS}")
    batch = loaded.prepare(image)
    # A model with a canonical framing saw only part of the film: its map is drawn back into that part.
    film = np.asarray(image)
    film = film[..., 0] if film.ndim == 3 else film
    box = framing_box(film, loaded.framing)
    if target is None:
        target = int(loaded.predict(batch)[0] >= loaded.threshold)
    sign = np.array([1.0 if target else -1.0], np.float32)
    onnx = (
        loaded.engine
        if engine == "compiled" and loaded.engine is not None and loaded.engine.explains(layer or loaded.gradcam_layer)
        else None
    )
    raw = onnx.cams(batch, sign, tuple(methods)) if onnx is not None else {}
    maps = {}
    for method in methods:
        if method in raw:
            cam = _expand(raw[method][0], batch.shape[1:3])
        elif engine == "compiled":
            cam = _expand(
                np.asarray(_compiled_cam(loaded, method, layer or loaded.gradcam_layer)(batch, sign))[0],
                batch.shape[1:3],
            )
        else:
            try:
                from tf_keras_vis.utils.scores import BinaryScore
            except ImportError as exc:  # the reference engine is the tests' and the bench's, not the app's
                raise ImportError("engine 'tf-keras-vis' needs the dev extra: pip install -e '.[dev]'") from exc

            explainer, target_layer = _explainer(loaded, method, layer or loaded.gradcam_layer)
            cam = explainer(
                BinaryScore(bool(target)), batch, penultimate_layer=target_layer, seek_penultimate_conv_layer=False
            )
            cam = np.asarray(cam[0], dtype=np.float32)
        cam = np.nan_to_num(np.asarray(cam, dtype=np.float32))
        cam = place_map(cam, film.shape, box)
        span = float(cam.max() - cam.min())
        maps[method] = (cam - cam.min()) / span if span > 1e-8 else np.zeros_like(cam)
    return maps


def _expand(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Stretch a feature-map CAM to the input and scale it to [0, 1], exactly as tf-keras-vis does."""
    from scipy.ndimage import zoom

    cam = zoom(cam, (shape[0] / cam.shape[0], shape[1] / cam.shape[1]), order=1)
    return (cam - cam.min()) / (cam.max() - cam.min() + EPSILON)


def _compiled_cam(loaded: LoadedModel, method: str, layer: str) -> Any:
    """Grad-CAM or Grad-CAM++ as one traced TensorFlow graph, kept in the model's cache under
    ("cam", method, layer)."""

    def trace() -> Any:
        import_tensorflow_quietly()  # the first TensorFlow import when ONNX Runtime serves predictions
        import tensorflow as tf

        size = loaded.input_size
        return tf.function(
            cam_function(loaded.model, method, layer),
            input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32), tf.TensorSpec([None], tf.float32)],
        )

    return loaded.cache.get(("cam", method, layer), trace)


def cam_functions(model: Any, layer: str) -> dict[str, Any]:
    """{method: fn(x, sign)} for every method, to export (engine.export_onnx); {} when the layer is not in
    the model (the card's Grad-CAM layer is checked where maps are drawn)."""
    try:
        return {m: cam_function(model, m, layer) for m in METHODS}
    except ValueError:
        return {}


def cam_function(model: Any, method: str, layer: str) -> Any:
    """(images, ±1 per image) → raw Grad-CAM or Grad-CAM++ maps at the layer's resolution, written with
    TensorFlow operations (the formulas of tf-keras-vis 0.8) so it can be traced or exported."""
    import keras
    import tensorflow as tf

    target_model, target_layer = reachable_model(explained_network(model, layer), layer)
    grad_model = keras.Model(target_model.input, [target_model.output, target_model.get_layer(target_layer).output])

    def cam(x: Any, sign: Any) -> Any:
        with tf.GradientTape() as tape:
            output, features = grad_model(x, training=False)
            tape.watch(features)
            score = sign * tf.reshape(tf.cast(output, tf.float32), [-1])
        features = tf.cast(features, tf.float32)
        grads = tf.cast(tape.gradient(score, features), tf.float32)
        if method == "gradcam":
            weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
            return tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))
        first = tf.reshape(tf.exp(score), [-1, 1, 1, 1]) * grads
        second, third = first * grads, first * grads * grads
        total = tf.reduce_sum(features, axis=[1, 2], keepdims=True)
        denom = second * 2.0 + third * total
        alphas = second / (denom + tf.cast(second == 0.0, second.dtype))
        norm = tf.reduce_sum(alphas, axis=[1, 2], keepdims=True)
        alphas = alphas / (norm + tf.cast(norm == 0.0, norm.dtype))
        weights = tf.reduce_sum(tf.nn.relu(first) * alphas, axis=[1, 2], keepdims=True)
        return tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))

    return cam


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """The heatmap blended on the gray X-ray as an RGB uint8 picture; alpha is the heatmap's opacity."""
    gray = cv2.cvtColor(to_uint8(image), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(_colored(image, heatmap, colormap), float(alpha), gray, 1.0 - float(alpha), 0.0)


def _colored(image: np.ndarray, heatmap: np.ndarray, colormap: int) -> np.ndarray:
    """The heatmap stretched onto the film's pixels and coloured (RGB uint8)."""
    if heatmap.shape != image.shape:
        heatmap = cv2.resize(heatmap, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(cv2.applyColorMap(to_uint8(heatmap), colormap), cv2.COLOR_BGR2RGB)


def _bar_geometry(width: int) -> tuple[int, int, int]:
    """The colour bar's panel beside a picture `width` wide: (gap, bar, numbers) in pixels."""
    return max(4, width // 100), max(12, width // 28), max(40, width // 7)


def colorbar_panel(
    height: int, width: int, colormap: int = cv2.COLORMAP_JET, transparent: bool = False, panel_width: int | None = None
) -> np.ndarray:
    """The panel beside a picture height × width: a vertical colour bar numbered 0 to 1, the map's share of
    this film's own peak (every map is scaled to its film's peak, so colours are comparable within a film,
    not between films).

    transparent: RGBA, the background and the numbers' surround see-through (mid-gray numbers read on a
    light and a dark page alike); otherwise RGB on white, for print. panel_width: the panel's width
    in the proportions of the one beside a 224 px film; by default as wide as the numbers need.
    """
    if panel_width is None:
        pad, bar_w, label_w = _bar_geometry(width)
    else:  # the proportions of the panel beside a 224 px film (4, 12 and 40 px), at any width
        pad, bar_w = panel_width // 14, max(1, 3 * panel_width // 14)
        label_w = max(0, panel_width - pad - bar_w)
    ramp = np.linspace(255, 0, height, dtype=np.float32)[:, None].repeat(bar_w, axis=1).astype(np.uint8)
    panel = np.full((height, pad + bar_w + label_w, 4), (255, 255, 255, 0 if transparent else 255), np.uint8)
    panel[:, pad : pad + bar_w, :3] = cv2.cvtColor(cv2.applyColorMap(ramp, colormap), cv2.COLOR_BGR2RGB)
    panel[:, pad : pad + bar_w, 3] = 255
    scale = max(0.35, height / 700)
    wide = cv2.getTextSize("1.0", cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, int(round(scale * 1.5))))[0][0]
    if wide > label_w - 4:  # the numbers shrink to their area rather than run off the panel
        scale *= max(label_w - 4, 1) / wide
    thick = max(1, int(round(scale * 1.5)))
    ink = (128, 128, 128, 255) if transparent else (30, 30, 30, 255)
    for text, y in (
        ("1.0", int(14 * scale * 2)),
        ("0.5", height // 2 + int(5 * scale * 2)),
        ("0", height - int(6 * scale * 2)),
    ):
        cv2.putText(panel, text, (pad + bar_w + 3, y), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, thick, cv2.LINE_AA)
    return panel if transparent else panel[..., :3]


def with_colorbar(rgb: np.ndarray, colormap: int = cv2.COLORMAP_JET, transparent: bool = False) -> np.ndarray:
    """The overlay with its colour bar panel (colorbar_panel) on its right."""
    h, w = rgb.shape[:2]
    image = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2) if transparent else rgb
    return np.concatenate([image, colorbar_panel(h, w, colormap, transparent)], axis=1)


# On screen a map is three pictures the browser puts together, so that a change of opacity re-encodes
# nothing: the film (the card's own X-ray picture), the coloured map over it at the chosen opacity
# (map_layer), and the colour bar beside them (screen_colorbar), a quarter of the film's width.
SCREEN_BAR_SHARE = 4  # the film is this many times as wide as its colour bar panel on screen
_SCREEN_MIN_WIDTH = 224  # a smaller film's panel is drawn at this width, in its proportions, to stay legible
_SCREEN_MAX_HEIGHT = 2048


def map_layer(image: np.ndarray, heatmap: np.ndarray, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """The coloured map at the film's size (RGB): drawn at opacity alpha over the gray film it gives
    overlay(image, heatmap, alpha) (on screen, up to the JPEG encoding of both)."""
    return _colored(image, heatmap, colormap)


def screen_colorbar(height: int, width: int, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """The colour bar panel (RGBA, see-through background) for a film height × width on screen: in the
    proportions of a panel 1/SCREEN_BAR_SHARE of the film's width and its full height. It is drawn at
    least _SCREEN_MIN_WIDTH / SCREEN_BAR_SHARE px wide to stay legible, and at most _SCREEN_MAX_HEIGHT
    px tall (a film of a few pixels' width would otherwise give a bar of megapixels)."""
    k = min(max(1.0, _SCREEN_MIN_WIDTH / width), _SCREEN_MAX_HEIGHT / height)
    panel = max(1, round(width * k / SCREEN_BAR_SHARE))  # a whole number of pixels, the height to match
    h = max(1, round(height * panel * SCREEN_BAR_SHARE / width))
    return colorbar_panel(h, panel * SCREEN_BAR_SHARE, colormap, transparent=True, panel_width=panel)


def _opencv_order(picture: np.ndarray) -> np.ndarray:
    """A gray, RGB or RGBA picture in the channel order OpenCV's encoders take (BGR, BGRA)."""
    code = {3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}.get(picture.shape[2] if picture.ndim == 3 else 0)
    return cv2.cvtColor(picture, code) if code is not None else picture


def jpeg_bytes(picture: np.ndarray, quality: int = 90) -> bytes:
    """A [0, 1] gray film, or an RGB uint8 picture, as JPEG for the screen."""
    ok, buf = cv2.imencode(".jpg", _opencv_order(to_uint8(picture)), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", _opencv_order(rgb))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def warm_up(loaded: LoadedModel) -> None:
    """Trace the forward pass, both explainers and the input check once, so the first real X-ray is as fast
    as the rest."""
    ramp = np.linspace(0.0, 1.0, loaded.input_size, dtype=np.float32)
    image = np.outer(ramp, ramp[::-1])
    loaded.predict(image)
    gradcams(loaded, image, METHODS, target=1)
    if loaded.density is not None:
        check(loaded, image, loaded.density)


def peak_in_lungs(film: np.ndarray, heat: np.ndarray) -> bool:
    """Whether a map's hottest point lies inside the film's lung field (pneumo.data.anatomy's estimate): a map
    peaking on the neck, a side marker or the film's edge shows something other than the lungs drove the score."""
    from pneumo.data.anatomy import lung_field, peak_inside

    return peak_inside(heat, lung_field(film).mask)
