"""Named architectures: how each network is built, what it expects, and where Grad-CAM looks."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: see below
    import keras

# Keras is imported inside the builders: the dashboard reads ARCHITECTURES and serves through ONNX Runtime,
# so importing this module must not load Keras or TensorFlow (~600 MB resident).

# Keras is imported inside the builders, not here: the registry (names, input sizes, Grad-CAM layers) is
# read by the Train form and the CLI's flags, and importing Keras starts TensorFlow, which costs a process
# about 600 MB resident for good. The dashboard serves through ONNX Runtime and never needs it.


@dataclass(frozen=True)
class Architecture:
    """How to build a network, what it expects, and where Grad-CAM looks."""

    name: str
    input_size: int
    preprocessing: str
    gradcam_layer: str
    builder: Callable[[int, str | None, float], keras.Model]
    description: str
    working_resolution: int = 0  # the side the network mean-pools its input to first (0: none)

    def augmentation_size(self, size: int) -> int:
        """The side training augments at: the working resolution when the network starts by mean-pooling
        to it, so the pipeline never computes detail the first layer averages away (4× fewer pixels)."""
        factor = max(1, size // self.working_resolution) if self.working_resolution else 1
        return size // factor if size % factor == 0 else size


def _gray_input(size: int) -> keras.KerasTensor:
    import keras

    return keras.Input(shape=(size, size, 1), name="xray")


def _head(x: keras.KerasTensor, dropout: float) -> keras.KerasTensor:
    from keras import layers

    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    # float32 output keeps the sigmoid stable under mixed precision
    return layers.Dense(1, activation="sigmoid", dtype="float32", name="pneumonia")(x)


def build_compact_cnn(size: int, weights: str | None = None, dropout: float = 0.3) -> keras.Model:
    """A small residual CNN trained from scratch; fast enough for a 2-core CPU."""
    import keras
    from keras import layers

    if weights not in (None, "none"):
        raise ValueError("compact_cnn has no pretrained weights; use weights=None")
    inp = _gray_input(size)
    # Per-image standardisation: removes exposure and contrast differences between sites and devices.
    x = layers.LayerNormalization(axis=(1, 2, 3), center=False, scale=False, name="standardize")(inp)
    x = layers.Conv2D(24, 5, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for i, filters in enumerate((32, 64, 96, 128, 160)):
        x = _residual_block(x, filters, f"block{i + 1}")
    return keras.Model(inp, _head(x, dropout), name="compact_cnn")


def build_shift_cnn(
    size: int,
    weights: str | None = None,
    dropout: float = 0.3,
    work: int = 112,
    widths: tuple[int, ...] = (32, 64, 128),
) -> keras.Model:
    """A residual CNN that reads the film at a working resolution and keeps a 7×7 final map at 224 px.

    Pooling to `work` pixels inside the model drops the fine texture (detector noise, compression,
    processing) that differs between sites more than the lung opacities do, and makes each step cheap
    on a CPU. Plain 3×3 convolutions: they run near the machine's FLOP limit where depthwise ones do not.
    """
    import keras
    from keras import layers

    if weights not in (None, "none"):
        raise ValueError("shift_cnn has no pretrained weights; use weights=None")
    inp = _gray_input(size)
    x = layers.LayerNormalization(axis=(1, 2, 3), center=False, scale=False, name="standardize")(inp)
    factor = max(1, size // work)
    if factor > 1:
        x = layers.AveragePooling2D(factor, name="to_working_resolution")(x)
    x = layers.Conv2D(24, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for i, filters in enumerate(widths):
        x = _plain_residual_block(x, filters, f"stage{i + 1}")
    return keras.Model(inp, _head(x, dropout), name="shift_cnn")


def _plain_residual_block(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    from keras import layers

    shortcut = layers.Conv2D(filters, 1, strides=2, use_bias=False, name=f"{name}_proj")(x)
    shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def _residual_block(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    from keras import layers

    shortcut = layers.Conv2D(filters, 1, strides=2, use_bias=False, name=f"{name}_proj")(x)
    shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.SeparableConv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def _backbone_builder(
    app_name: str, scale: float, offset: Any, mean: Any = None, variance: Any = None
) -> Callable[[int, str | None, float], keras.Model]:
    """Wrap a keras.applications backbone (by name) so it takes a [0, 1] grayscale image.

    The backbone is built on our own input tensor (input_tensor=...) so its layers sit in the outer
    graph: Grad-CAM can then reach any of them by name.
    """

    def build(size: int, weights: str | None = None, dropout: float = 0.3) -> keras.Model:
        import keras
        from keras import layers

        app = getattr(keras.applications, app_name)
        inp = _gray_input(size)
        x = layers.Concatenate(name="gray_to_rgb")([inp, inp, inp])
        x = layers.Rescaling(scale, offset=offset, name="app_scale")(x)
        if mean is not None:
            x = layers.Normalization(mean=mean, variance=variance, name="app_normalize")(x)
        try:
            base = app(include_top=False, weights=_weights_arg(weights), input_tensor=x)
        except Exception as exc:  # network or cache failure while fetching weights
            if weights in (None, "none"):
                raise
            raise WeightsUnavailableError(app_name, exc) from exc
        model = keras.Model(inp, _head(base.output, dropout), name=app_name.lower())
        return model

    return build


def _weights_arg(weights: str | None) -> str | None:
    return None if weights in (None, "none") else weights


class WeightsUnavailableError(RuntimeError, ValueError):
    """ImageNet weights could not be obtained (no network and nothing in the Keras cache)."""

    def __init__(self, app_name: str, cause: Exception):
        cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
        super().__init__(
            f"Could not obtain ImageNet weights for {app_name} ({cause}). Keras downloads them on first use; "
            f"without network access, copy the '*_notop.h5' weights file for {app_name} into {cache} "
            "or train with weights=None (--weights none)."
        )


def _registry() -> dict[str, Architecture]:
    imagenet_mean = [0.485, 0.456, 0.406]
    imagenet_var = [0.229**2, 0.224**2, 0.225**2]
    caffe_mean = [103.939, 116.779, 123.68]
    return {
        a.name: a
        for a in (
            Architecture(
                "compact_cnn",
                224,
                "gray [0,1] → per-image standardisation (inside the model)",
                "block5_out",
                build_compact_cnn,
                "Residual separable CNN, ~0.2 M parameters, trained from scratch (the previous default).",
            ),
            Architecture(
                "shift_cnn",
                224,
                "gray [0,1] → per-image standardisation → 2×2 mean pooling (inside the model)",
                "stage3_out",
                build_shift_cnn,
                "Residual CNN at 112 px working resolution, ~0.3 M parameters, 7×7 Grad-CAM map, from scratch.",
                working_resolution=112,
            ),
            Architecture(
                "shift_cnn_wide",
                224,
                "gray [0,1] → per-image standardisation → 2×2 mean pooling (inside the model)",
                "stage3_out",
                functools.partial(build_shift_cnn, widths=(48, 96, 192)),
                "Wider shift_cnn (48/96/192 channels), ~0.7 M parameters, 7×7 Grad-CAM map, from scratch.",
                working_resolution=112,
            ),
            Architecture(
                "shift_cnn_64",
                224,
                "gray [0,1] → per-image standardisation → mean pooling to 56 px (inside the model)",
                "stage3_out",
                functools.partial(build_shift_cnn, work=56, widths=(48, 96, 192)),
                "shift_cnn reading the film at 56 px with 48/96/192 channels; 4×4 Grad-CAM map.",
                working_resolution=56,
            ),
            Architecture(
                "efficientnet_b0",
                224,
                "gray [0,1] → RGB ×255 (EfficientNet rescales internally)",
                "top_activation",
                _backbone_builder("EfficientNetB0", 255.0, 0.0),
                "EfficientNet-B0 backbone (ImageNet weights when available).",
            ),
            Architecture(
                "densenet121",
                224,
                "gray [0,1] → RGB, ImageNet mean/std normalisation",
                "relu",
                _backbone_builder("DenseNet121", 1.0, 0.0, imagenet_mean, imagenet_var),
                "DenseNet-121 backbone (CheXNet's architecture).",
            ),
            Architecture(
                "resnet50",
                224,
                "gray [0,1] → RGB ×255, Caffe mean subtraction",
                "conv5_block3_out",
                _backbone_builder("ResNet50", 255.0, 0.0, caffe_mean, [1.0, 1.0, 1.0]),
                "ResNet-50 backbone.",
            ),
            Architecture(
                "mobilenet_v2",
                224,
                "gray [0,1] → RGB scaled to [-1, 1]",
                "out_relu",
                _backbone_builder("MobileNetV2", 2.0, -1.0),
                "MobileNet-V2 backbone; the lightest ImageNet option.",
            ),
        )
    }


ARCHITECTURES: dict[str, Architecture] = _registry()
DEFAULT_ARCHITECTURE = "shift_cnn"


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}'; choose one of: {', '.join(ARCHITECTURES)}") from None


def build_model(
    name: str,
    image_size: int | None = None,
    weights: str | None = None,
    dropout: float = 0.3,
    synchronized: bool = False,
) -> keras.Model:
    """The named network; synchronized=True makes its batch norms pool their batch statistics over every
    replica of a distribution strategy (several workers then normalise, and learn, as one process would)."""
    arch = get_architecture(name)
    model = arch.builder(image_size or arch.input_size, weights, dropout)
    return _synchronize_batch_norm(model) if synchronized else model


def _synchronize_batch_norm(model: keras.Model) -> keras.Model:
    """The same network with every BatchNormalization synchronized, its weights (ImageNet ones included) kept.

    Done by cloning rather than in each builder, so the keras.applications backbones, whose layers we do not
    construct, are covered too."""
    import keras
    from keras import layers

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if isinstance(layer, layers.BatchNormalization):
            config["synchronized"] = True
        return layer.__class__.from_config(config)

    synced = keras.models.clone_model(model, clone_function=clone)
    synced.set_weights(model.get_weights())
    return synced
