"""The training step and the epoch loop: optimiser, loss and metrics, the learning-rate schedule, and fitting in
one process (Keras' fit) or over TF_CONFIG workers (the same step by hand), with the same callbacks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from pneumo.training import runs
from pneumo.training.callbacks import CHECKPOINT_FILE
from pneumo.training.config import TrainConfig


def training_loss(config: TrainConfig, reduction: str = "sum_over_batch_size") -> keras.losses.Loss:
    """The loss every run minimises; reduction="none" gives the per-image losses a distributed step averages."""
    return keras.losses.BinaryCrossentropy(label_smoothing=config.label_smoothing, reduction=reduction)


def training_metrics() -> list[keras.metrics.Metric]:
    """The figures logged for the training images each epoch (fresh objects: metrics hold state)."""
    return [
        keras.metrics.BinaryAccuracy(name="accuracy"),
        keras.metrics.AUC(name="auc", num_thresholds=500),
        keras.metrics.Recall(name="recall"),
        keras.metrics.Precision(name="precision"),
    ]


def compile_for_training(model: Any, config: TrainConfig, learning_rate: Any, jit_compile: bool | str = "auto") -> None:
    """The optimiser, loss and metrics every run trains with (the benchmark times this same step).

    jit_compile "auto" is Keras' choice, XLA off on a CPU: bench/ measures XLA beside it on each run.
    """
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=config.weight_decay),
        loss=training_loss(config),
        metrics=training_metrics(),
        jit_compile=jit_compile,
    )


def learning_rate_schedule(config: TrainConfig, steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up then cosine decay over config.epochs × steps optimiser steps."""
    warmup = min(config.warmup_epochs * steps, max(config.epochs * steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate * (0.1 if warmup else 1.0),
        decay_steps=max(config.epochs * steps - warmup, 1),
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
        alpha=0.02,
    )


def fit(
    model: Any,
    strategy: Any,
    train_ds: Any,
    epochs: int,
    steps: int,
    callbacks: list[Any],
    loss: keras.losses.Loss,
    run_dir: Path,
) -> None:
    """Train `model` (compiled with compile_for_training) for `epochs`, `steps` optimiser steps each.

    In one process Keras' fit() runs the loop; under MultiWorkerMirroredStrategy the loop below runs the
    same step (same loss, loss scaling, metrics) and drives the same callbacks. `loss` is the per-image
    (reduction="none") form of the compiled loss, for that loop."""
    try:
        if _multi_worker(strategy):
            _fit_multi_worker(
                model,
                strategy,
                train_ds,
                epochs,
                steps,
                keras.callbacks.CallbackList(callbacks, model=model),
                loss,
                run_dir,
            )
        else:
            # Exactly `steps` steps an epoch over the repeated images, as the multi-worker loop takes: on a
            # dataset of unknown length Keras counts one optimiser iteration more per epoch (the call that
            # finds it exhausted), which moved the learning-rate schedule ahead of the steps really taken.
            model.fit(train_ds.repeat(), epochs=epochs, steps_per_epoch=steps, callbacks=callbacks, verbose=0)
    finally:
        (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)  # a save that failed half-way leaves nothing behind


def _multi_worker(strategy: Any) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def wait_for_all(strategy: Any) -> None:
    """Return once every TF_CONFIG worker has called this; at once in one process.

    The workers end the run here together, after the chief has checked the model: a worker that left
    while the chief was still at work stopped sending heartbeats, so the chief's coordination service
    reported it crashed (tensorflow/tensorflow#58434) and aborted the collectives of a healthy run.
    Waiting in a collective keeps the heartbeats going; a worker that really dies still ends the wait."""
    if not _multi_worker(strategy):
        return

    @tf.function
    def arrive() -> Any:
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.ones([])), axis=None)

    arrive()


def _fit_multi_worker(
    model: Any,
    strategy: Any,
    train_ds: Any,
    epochs: int,
    steps: int,
    callbacks: Any,
    per_image_loss: keras.losses.Loss,
    run_dir: Path,
) -> None:
    """Keras 3's fit() cannot run under MultiWorkerMirroredStrategy (keras-team/keras#20585), but its layers,
    optimiser, metrics and callbacks can. A Stop on any worker stops all of them after the same step (a
    worker left alone would wait for the others forever)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF  # sharded by hand
    batches = iter(strategy.experimental_distribute_dataset(train_ds.repeat().with_options(options)))
    optimizer = model.optimizer  # a LossScaleOptimizer under mixed precision: compile() wraps it
    replicas = strategy.num_replicas_in_sync
    total = tf.distribute.ReduceOp.SUM

    # Under mixed precision the LossScaleOptimizer skips a step whose gradients overflowed, judging from the
    # gradients it is given: each worker's own, so one worker could skip while another applies and waits in
    # the gradient all-reduce for ever. Handing it every worker's mean gradient makes them all judge alike;
    # its own all-reduce then sums those means back to fit()'s sum.
    scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_ctx_sum(n: Any) -> Any:
        return tf.distribute.get_replica_context().all_reduce(total, n)

    def agreed(grads: list[Any]) -> list[Any]:
        present = [g for g in grads if g is not None]
        means = iter(tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.MEAN, present))
        return [None if g is None else next(means) for g in grads]

    @tf.function
    def step(stop: Any) -> tuple[Any, ...]:
        def replica(batch: Any, stop: Any) -> tuple[Any, ...]:
            x, y, *w = batch
            y = tf.reshape(tf.cast(y, tf.float32), [-1, 1])
            weight = tf.reshape(tf.cast(w[0], tf.float32), [-1]) if w else tf.ones_like(y[:, 0])
            with tf.GradientTape() as tape:
                prob = model(x, training=True)
                # fit()'s loss: sum of weighted per-image losses over the global batch (here over every
                # worker's images, which the gradient all-reduce sums), plus any layer losses.
                per_image = per_image_loss(y, prob) * weight
                global_images = tf.cast(replica_ctx_sum(tf.shape(x)[0]), tf.float32)
                loss = tf.reduce_sum(per_image) / global_images
                if model.losses:
                    loss += tf.add_n(model.losses) / replicas
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, model.trainable_variables)
            if scaling:
                grads = agreed(grads)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss, stop, y, tf.cast(prob, tf.float32), weight

        loss, stops, y, prob, weight = strategy.run(replica, args=(next(batches), stop))
        # Every worker's labels and probabilities: the training metrics cover all images of the step.
        return (
            strategy.reduce(total, loss, axis=None),
            strategy.reduce(total, stops, axis=None),
            strategy.gather(y, axis=0),
            strategy.gather(prob, axis=0),
            strategy.gather(weight, axis=0),
        )

    metrics = training_metrics()  # outside the strategy's scope: updated on the host with the gathered values
    model.stop_training = False
    callbacks.on_train_begin()
    for epoch in range(epochs):
        callbacks.on_epoch_begin(epoch)
        for m in metrics:
            m.reset_state()
        loss_sum, images = 0.0, 0
        for i in range(steps):
            loss, stops, y, prob, weight = step(tf.constant(float(runs.stop_requested(run_dir))))
            n = int(y.shape[0])
            # fit()'s running loss: the batch losses averaged by images.
            loss_sum, images = loss_sum + float(loss) * n, images + n
            for m in metrics:
                m.update_state(y, prob, sample_weight=weight)
            callbacks.on_train_batch_end(i, {"loss": loss_sum / images})
            # The run logger may have seen this worker's stop file already; only the request all workers
            # agreed on in the step counts, or this one would leave the others waiting in the next step.
            model.stop_training = float(stops) > 0
            if model.stop_training:
                break
        logs = {"loss": loss_sum / max(images, 1), **{m.name: float(m.result()) for m in metrics}}
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callbacks.on_train_end()


def steps_per_epoch(train_images: int, batch_size: int) -> int:
    """Optimiser steps in one pass over the training images, whatever the number of workers sharing a step."""
    return math.ceil(train_images / batch_size)


def per_worker_batch(batch_size: int, workers: int) -> int:
    """Each worker's share of a step's images: config.batch_size is the whole step's, so that a run over
    several workers takes the steps, and follows the learning-rate schedule, of the same run in one process."""
    if batch_size % workers:
        raise ValueError(
            f"batch_size ({batch_size}) must be a multiple of the {workers} TF_CONFIG workers, "
            "which share each step's images"
        )
    return batch_size // workers
