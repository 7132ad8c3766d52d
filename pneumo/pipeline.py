"""The training input pipeline: parallel decode, cache, shuffle, augmentation, mixup, class weights, prefetch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from .data import DatasetError, read_item



@dataclass(frozen=True)
class Augmentation:
    """Changes an X-ray survives without changing its label: geometry, exposure, sharpness and noise.

    Every field is a range bound; 0 turns that change off. The photometric ones imitate what differs
    between acquisition sites and periods (exposure, detector gamma, processing sharpness, noise).
    """

    rotation_deg: float = 7.0
    shift: float = 0.06  # fraction of the side
    zoom: float = 0.10  # scale in [1 - zoom, 1 + zoom]
    aspect: float = 0.0  # log aspect-ratio jitter: the film's width and height scaled apart
    brightness: float = 0.10
    contrast: float = 0.15
    gamma: float = 0.0  # gamma in [1 / (1 + g), 1 + g], log-uniform
    blur: float = 0.0  # blend towards a Gaussian blur (t ∈ (0, blur]) or away from it, sharpening (t ∈ [-blur/2, 0))
    noise: float = 0.0  # std of additive Gaussian noise, drawn per image in [0, noise]

    @classmethod
    def preset(cls, name: str) -> "Augmentation | None":
        """Named recipes: 'none', 'basic' (small geometry and exposure) and 'shift' (acquisition shift)."""
        presets = {
            "none": None,
            "basic": cls(),
            "shift": cls(rotation_deg=10.0, shift=0.08, zoom=0.15, aspect=0.10, brightness=0.12, contrast=0.25,
                         gamma=0.5, blur=0.8, noise=0.03),
        }
        try:
            return presets[name]
        except KeyError:
            raise ValueError(f"unknown augmentation '{name}'; choose one of: {', '.join(presets)}") from None

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def make_dataset(
    frame: pd.DataFrame,
    image_size: int,
    batch_size: int = 32,
    training: bool = False,
    augmentation: Augmentation | None = None,
    seed: int = 0,
    cache: bool = True,
    class_weights: dict[int, float] | None = None,
    mixup: float = 0.0,
    augment_size: int | None = None,
) -> Any:
    """A tf.data pipeline of (image, label[, weight]) batches: parallel decode and resize, cached,
    augmented, mixed, prefetched.

    Class weights travel as per-sample weights (a third element) rather than Keras' class_weight, so
    that mixup can blend them with the labels.

    augment_size: for a network whose first step mean-pools its input by an integer factor, training
    images are decoded, cached and augmented at the pooled side and enlarged by pixel repetition; the
    pooling then returns exactly the augmented image. The augmentation costs 1/factor² as much, which
    on a CPU is most of a training step's input cost. (The network's per-image standardisation, taken
    before its pooling, then sees the pooled image's variance: within a few per cent of the full one
    for films, far inside the contrast augmentation's range.)
    """
    import tensorflow as tf

    factor = 1
    if training and augmentation is not None and augment_size and augment_size < image_size:
        if image_size % augment_size:
            raise ValueError(f"augment_size {augment_size} must divide image_size {image_size}")
        factor, image_size = image_size // augment_size, augment_size

    paths = frame["path"].astype(str).tolist()
    labels = frame["label"].astype("float32").to_numpy()
    if not paths:
        raise DatasetError("no images to build a dataset from")
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    # One decoder for training, checks and serving (read_item → imaging.resize): TensorFlow's own JPEG
    # decode and area resize differed from it by up to 3/255 a pixel, enough to move a film across a
    # threshold. The cache below makes it a first-epoch cost only.
    def decode_python(path: Any, label: Any) -> tuple[Any, Any]:
        def load(p: bytes) -> np.ndarray:
            from .imaging import resize

            return resize(read_item(p.decode()), image_size)[..., None].astype(np.float32)

        img = tf.numpy_function(load, [path], tf.float32)
        return tf.ensure_shape(img, (image_size, image_size, 1)), label

    ds = ds.map(decode_python, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors()  # unreadable files are reported by summarize(); training skips them
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(min(len(paths), 8192), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=False)
    if class_weights:
        table = tf.constant([class_weights.get(0, 1.0), class_weights.get(1, 1.0)], tf.float32)
        ds = ds.map(lambda x, y: (x, y, tf.gather(table, tf.cast(y, tf.int32))))
    if training and augmentation is not None:
        def augment(x: Any, *rest: Any) -> tuple[Any, ...]:
            x = augment_batch(x, augmentation, pooled=factor)
            if factor > 1:
                x = tf.repeat(tf.repeat(x, factor, axis=1), factor, axis=2)
            return (x, *rest)

        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    if training and mixup > 0:
        ds = ds.map(lambda *batch: mix_batch(batch, mixup), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def mix_batch(batch: tuple[Any, ...], alpha: float) -> tuple[Any, ...]:
    """Mixup: each image, its label and weight blended with another of the batch by λ ~ Beta(α, α)."""
    import tensorflow as tf

    n = tf.shape(batch[0])[0]
    a = tf.random.gamma([n], alpha)
    b = tf.random.gamma([n], alpha)
    lam = a / (a + b)
    lam = tf.maximum(lam, 1.0 - lam)  # the first image dominates: its label stays the main one
    perm = tf.random.shuffle(tf.range(n))

    def mix(t: Any) -> Any:
        shape = tf.concat([[n], tf.ones([tf.rank(t) - 1], tf.int32)], 0)
        w = tf.reshape(lam, shape)
        return w * t + (1.0 - w) * tf.gather(t, perm)

    return tuple(mix(t) for t in batch)


def _gaussian_blur(images: Any, sigma: float) -> Any:
    import tensorflow as tf

    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-(x**2) / (2 * sigma**2))
    k /= k.sum()
    kx = tf.constant(k.reshape(1, -1, 1, 1))
    ky = tf.constant(k.reshape(-1, 1, 1, 1))
    padded = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    return tf.nn.conv2d(tf.nn.conv2d(padded, kx, 1, "VALID"), ky, 1, "VALID")


def augment_batch(images: Any, aug: Augmentation, pooled: int = 1) -> Any:
    """Rotation, shift, zoom and aspect as one affine warp per image, then gamma, blur or sharpening,
    brightness and contrast, and noise.

    pooled: how many input pixels along a side one pixel of `images` stands for (mean-pooled by it); the
    blur width and the noise level are given per input pixel and are converted.

    One fused resampling pass per batch instead of one per geometric layer (Keras' RandomRotation,
    RandomTranslation and RandomZoom each resample the whole batch).
    """
    import tensorflow as tf

    n = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]

    def uniform(bound: float, shape: list[Any] | None = None) -> Any:
        return tf.random.uniform(shape or [n], -bound, bound)

    angle = uniform(aug.rotation_deg) * (math.pi / 180.0)
    scale = tf.random.uniform([n], 1.0 - aug.zoom, 1.0 + aug.zoom)
    log_aspect = uniform(aug.aspect) if aug.aspect else tf.zeros([n])
    sx, sy = scale * tf.exp(log_aspect / 2), scale * tf.exp(-log_aspect / 2)
    tx, ty = uniform(aug.shift) * float(w), uniform(aug.shift) * float(h)
    # The transform maps each output pixel to the input pixel it samples: rotate and scale about the centre.
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    a0, a1 = tf.cos(angle) / sx, -tf.sin(angle) / sx
    b0, b1 = tf.sin(angle) / sy, tf.cos(angle) / sy
    a2 = cx - a0 * cx - a1 * cy - tx
    b2 = cy - b0 * cx - b1 * cy - ty
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.constant([h, w], tf.int32),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT",
    )
    per_image = [n, 1, 1, 1]
    if aug.gamma:
        bound = math.log1p(aug.gamma)
        out = tf.pow(tf.clip_by_value(out, 1e-4, 1.0), tf.exp(uniform(bound, per_image)))
    if aug.blur:
        t = tf.random.uniform(per_image, -aug.blur / 2, aug.blur)
        out = out + t * (_gaussian_blur(out, sigma=max(1.0, h * pooled / 150) / pooled) - out)
    delta = uniform(aug.brightness, per_image)
    factor = 1.0 + uniform(aug.contrast, per_image)
    mean = tf.reduce_mean(out, axis=[1, 2, 3], keepdims=True)
    out = (out - mean) * factor + mean + delta
    if aug.noise:
        # Mean-pooling n × n pixels of independent noise divides its standard deviation by n.
        out = out + tf.random.normal(tf.shape(out)) * tf.random.uniform(per_image, 0.0, aug.noise / pooled)
    return tf.clip_by_value(out, 0.0, 1.0)
