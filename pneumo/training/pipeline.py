"""The training input pipeline: parallel decode, cache, shuffle, augmentation, mixup, class weights, prefetch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import pandas as pd

from pneumo.data import transforms as T
from pneumo.data.anatomy import framed_input
from pneumo.data.collection import DatasetError, read_item

# TensorFlow is imported where used: only training builds tf.data pipelines, and this module's NumPy helpers must
# not load it.


@dataclass(frozen=True)
class Augmentation:
    """Changes an X-ray survives without changing its label: geometry, exposure, sharpness and noise.

    Every field is a range bound; 0 turns that change off. The photometric ones imitate what differs
    between acquisition sites and periods (exposure, detector gamma, processing sharpness, noise).
    Each bounds the draws (``Draw``) of one family of ``pneumo.data.transforms``, the functions the stress
    suite applies at fixed values.
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
    # A wide zoom range, log-uniform in [zoom_min, zoom_max] (a random resized crop: > 1 zooms in); both 0 keeps
    # the symmetric `zoom` above. Log-uniform, so that zooming in by s and out by 1/s are equally likely.
    zoom_min: float = 0.0
    zoom_max: float = 0.0
    # The share of draws whose geometry meets black at the film's edge (a collimated or padded film) instead of
    # the mirrored edge: both classes see black borders equally often, so a border tells the network nothing.
    black_border: float = 0.0

    def __post_init__(self) -> None:
        if bool(self.zoom_min) != bool(self.zoom_max) or not 0 <= self.zoom_min <= self.zoom_max:
            raise ValueError(
                f"zoom_min and zoom_max are set together, 0 < zoom_min <= zoom_max; got "
                f"{self.zoom_min} and {self.zoom_max}"
            )
        if not 0 <= self.black_border <= 1:
            raise ValueError(f"black_border is a share of draws in [0, 1]; got {self.black_border}")

    @classmethod
    def preset(cls, name: str) -> Augmentation | None:
        """Named recipes: 'none', 'basic' (small geometry and exposure), 'shift' (acquisition shift) and 'frame'
        (acquisition shift with framing from 0.7× to 1.6×, aspect and translation, and black borders on 30 % of films:
        the decision must not depend on how tightly the film is framed, see pneumo.evaluation.framing)."""
        frame = cls(
            black_border=0.3,
            rotation_deg=10.0,
            shift=0.10,
            zoom=0.0,
            aspect=0.20,
            brightness=0.12,
            contrast=0.25,
            gamma=0.5,
            blur=0.8,
            noise=0.03,
            zoom_min=0.7,
            zoom_max=1.6,
        )
        # frame_mirror: the frame recipe with the film's edge always mirrored, the alternative the black-border
        # draws replaced (models/EXPERIMENTS.md), kept so that its figures can be reproduced.
        presets = {
            "none": None,
            "basic": cls(),
            "shift": cls(
                rotation_deg=10.0,
                shift=0.08,
                zoom=0.15,
                aspect=0.10,
                brightness=0.12,
                contrast=0.25,
                gamma=0.5,
                blur=0.8,
                noise=0.03,
            ),
            "frame": frame,
            "frame_mirror": replace(frame, black_border=0.0),
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
    framing: str = "none",
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

    framing: the model's canonical framing (pneumo.data.anatomy.FRAMINGS), applied to every film before
    augmentation, exactly as LoadedModel.prepare applies it when the model serves.
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
            # Framed as LoadedModel.prepare frames a film it serves: at the film's own resolution.
            return framed_input(read_item(p.decode()), framing, image_size)[..., None].astype(np.float32)

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
        # One seed per batch from a seeded stream (a new stream each epoch): the draws depend on the seed
        # and the batch's position only, not on which parallel call runs first.
        batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

        def augment(batch: tuple[Any, ...], batch_seed: Any) -> tuple[Any, ...]:
            x, *rest = batch
            x = augment_batch(x, augmentation, pooled=factor, seed=batch_seed)
            if factor > 1:
                x = tf.repeat(tf.repeat(x, factor, axis=1), factor, axis=2)
            return (x, *rest)

        ds = tf.data.Dataset.zip((ds, batch_seeds)).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
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


# ------------------------------------------------------------------ augmentation: random draws of the transforms

# The blur family's width in training: about 1.5 px on a 224 px film (2 px at 300), never under one input pixel.
_BLUR_SIDE_PER_SIGMA = 150.0
# Noise patterns are numbered by integers drawn below 2**24, which a float32 parameter row holds exactly.
_NOISE_SEEDS = 2**24


@dataclass(frozen=True)
class Draw:
    """One image's augmentation: a parameter value of each family in ``transforms``. The defaults change nothing."""

    rotate_deg: float = 0.0  # transforms.affine: counter-clockwise as displayed
    scale: float = 1.0  # transforms.affine: > 1 zooms in
    aspect: float = 0.0  # transforms.affine: log width-to-height stretch
    shift_x: float = 0.0  # transforms.affine: fraction of the width, positive moves the content right
    shift_y: float = 0.0  # transforms.affine: fraction of the height, positive moves it down
    gamma: float = 1.0  # transforms.gamma exponent
    blur: float = 0.0  # transforms.blur amount: > 0 towards the blur, < 0 sharpening
    contrast: float = 1.0  # transforms.contrast factor
    brightness: float = 0.0  # transforms.brightness delta
    noise: float = 0.0  # transforms.noise standard deviation
    black_border: float = 0.0  # 1: the geometry meets black at the border, 0: the mirrored edge
    noise_seed: int = 0  # transforms.noise pattern

    @classmethod
    def from_row(cls, row: Any) -> Draw:
        """From one row of ``draw_parameters`` (the fields in order)."""
        values = [float(v) for v in row]
        floats = dict(zip(DRAW_FIELDS[:-1], values[:-1], strict=True))  # every field but noise_seed, the last
        return cls(**floats, noise_seed=int(values[-1]))


DRAW_FIELDS = tuple(f.name for f in fields(Draw))


def blur_sigma(side: int, pooled: int = 1) -> float:
    """The blur width, in pixels of an image of `side` pixels that stands for `pooled` × `pooled` input
    pixels per pixel: fixed relative to the film (so a pooled copy gets the blur the full one would)."""
    return max(1.0, side * pooled / _BLUR_SIDE_PER_SIGMA) / pooled


def augment_image(img: np.ndarray, draw: Draw, sigma: float) -> np.ndarray:
    """One 2-D [0, 1] image changed by `draw`: the geometry as one warp (border mirrored, or black), then gamma,
    blur or sharpening of width `sigma`, contrast about the mean, brightness, noise; clipped to [0, 1] once.

    The functions are the stress suite's (validate.STRESS): a draw with a stress condition's value gives
    its pixels, apart from the border rule of the geometry.
    """
    border: T.Border = "constant" if draw.black_border >= 0.5 else "reflect"
    out = T.affine(img, draw.rotate_deg, draw.scale, draw.aspect, (draw.shift_x, draw.shift_y), border=border)
    if draw.gamma != 1.0:
        out = T.gamma(out, draw.gamma)
    if draw.blur:
        out = T.blur(out, sigma, draw.blur)
    out = T.brightness(T.contrast(out, draw.contrast), draw.brightness)
    if draw.noise > 0:
        out = T.noise(out, draw.noise, draw.noise_seed)
    return np.clip(out, 0.0, 1.0)


def draw_parameters(aug: Augmentation, n: Any, seed: Any, pooled: int = 1) -> Any:
    """An [n, len(DRAW_FIELDS)] float32 tensor: a random Draw per image within `aug`'s ranges.

    Stateless in `seed` (a [2] integer tensor): the same seed gives the same draws whatever order
    tf.data's parallel calls run in. pooled: noise is given per input pixel, and mean-pooling
    pooled × pooled pixels of independent noise divides its standard deviation by pooled.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=len(DRAW_FIELDS))

    def uniform(k: int, low: float, high: float) -> Any:
        return tf.random.stateless_uniform([n], seeds[k], low, high)

    zeros = tf.zeros([n])
    log_aspect = uniform(2, -aug.aspect, aug.aspect) if aug.aspect else zeros
    columns = {
        "rotate_deg": uniform(0, -aug.rotation_deg, aug.rotation_deg),
        "scale": (
            tf.exp(uniform(1, math.log(aug.zoom_min), math.log(aug.zoom_max)))
            if aug.zoom_min and aug.zoom_max
            else uniform(1, 1.0 - aug.zoom, 1.0 + aug.zoom)
        ),
        "aspect": log_aspect,
        "shift_x": uniform(3, -aug.shift, aug.shift),
        "shift_y": uniform(4, -aug.shift, aug.shift),
        # Log-uniform, so that a gamma and its inverse are equally likely.
        "gamma": tf.exp(uniform(5, -math.log1p(aug.gamma), math.log1p(aug.gamma))) if aug.gamma else zeros + 1.0,
        # Twice as far towards blur as towards sharpening: consoles sharpen less often than films arrive soft.
        "blur": uniform(6, -aug.blur / 2, aug.blur) if aug.blur else zeros,
        "contrast": 1.0 + uniform(7, -aug.contrast, aug.contrast),
        "brightness": uniform(8, -aug.brightness, aug.brightness),
        "noise": uniform(9, 0.0, aug.noise / pooled) if aug.noise else zeros,
        "black_border": tf.cast(uniform(11, 0.0, 1.0) < aug.black_border, tf.float32) if aug.black_border else zeros,
        "noise_seed": tf.floor(uniform(10, 0.0, float(_NOISE_SEEDS))),
    }
    return tf.stack([columns[name] for name in DRAW_FIELDS], axis=1)


def augment_batch(images: Any, aug: Augmentation, pooled: int = 1, seed: Any = None) -> Any:
    """A batch [n, h, w, 1] with every image changed by its own random Draw (``augment_image``).

    pooled: how many input pixels along a side one pixel of `images` stands for (mean-pooled by it); the
    blur width and the noise level are given per input pixel and are converted. seed: a [2] integer
    tensor fixing the draws; without one, a seed is drawn from TensorFlow's global generator.

    The pixels are computed by the numpy/OpenCV functions the stress suite uses (one definition of each
    change), through tf.numpy_function: OpenCV's warp and blur release the GIL, so tf.data's parallel
    calls still spread the work over the cores.
    """
    import tensorflow as tf

    if seed is None:
        seed = tf.random.uniform([2], 0, 2**31 - 1, dtype=tf.int64)
    n, h, w = tf.shape(images)[0], images.shape[1], images.shape[2]
    params = draw_parameters(aug, n, seed, pooled)
    sigma = blur_sigma(int(h), pooled)

    def apply(batch: np.ndarray, rows: np.ndarray) -> np.ndarray:
        out = np.empty_like(batch)
        for i, row in enumerate(rows):
            out[i, ..., 0] = augment_image(batch[i, ..., 0], Draw.from_row(row), sigma)
        return out

    out = tf.numpy_function(apply, [tf.cast(images, tf.float32), params], tf.float32, stateful=False)
    return tf.ensure_shape(out, [None, h, w, 1])
