"""The training data's path into the model: each epoch's order, its batches and their
augmentation (flip, translation), built as one fixed tf.data pipeline.

Every epoch's order and every batch's augmentation are functions of (seed, epoch, batch)
alone, so a training resumed at epoch k (training/checkpoint.py) sees exactly the batches
an uninterrupted one saw from there on, and a re-sized one (train.py) only adds or drops
whole epochs at its end.
"""
from __future__ import annotations

import math

import numpy as np

from cnnbench.knobs import unspell
from cnnbench.training import runtime


def augment_batch(images, flip, pad: int, mirrored=None, seed=None):
    """Horizontal flip and random translation by up to ``pad`` pixels in each direction
    (edges reflected), for a whole uint8 batch at once: ops per batch, not per image.
    ``mirrored`` (a boolean per image) says which to flip; without it a truthy ``flip``
    flips each image at random. ``seed`` (a pair of integers) makes the draws a function of
    it alone (stateless), so a resumed training draws what an uninterrupted one did."""
    import tensorflow as tf

    n, size = tf.shape(images)[0], tf.shape(images)[1]

    def uniform(shape, part: int, **kwargs):
        if seed is None:
            return tf.random.uniform(shape, **kwargs)
        return tf.random.stateless_uniform(shape, seed=tf.random.experimental.stateless_fold_in(seed, part), **kwargs)

    if mirrored is None and flip and flip != "off":
        mirrored = uniform([n], 0) < 0.5
    if mirrored is not None:
        images = tf.where(tf.reshape(mirrored, [-1, 1, 1, 1]), tf.reverse(images, axis=[2]), images)
    if pad:  # integer shifts, edges reflected: one projective-transform kernel for the batch
        shift = tf.cast(uniform([n, 2], 1, minval=-pad, maxval=pad + 1, dtype=tf.int32), tf.float32)
        ones, zeros = tf.ones([n, 1]), tf.zeros([n, 1])
        transforms = tf.concat([ones, zeros, shift[:, :1], zeros, ones, shift[:, 1:], zeros, zeros], axis=1)
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms, output_shape=[size, size], fill_value=0.0,
            interpolation="NEAREST", fill_mode="REFLECT")
    return images


EPOCH_SEED_STRIDE = 1_000_003  # the data order of epoch e is seeded with seed x this + e


def steps_per_epoch(images: int, config: dict) -> int:
    """Steps in one epoch of ``images``: the last partial batch is one more step unless
    ``drop_last`` drops it (never the only batch: a split smaller than a batch still trains)."""
    batch = config["batch_size"]
    return images // batch if config.get("drop_last") and images >= batch else math.ceil(images / batch)


def images_per_epoch(images: int, config: dict) -> int:
    """Images one epoch trains on (its steps' batches), for throughput figures."""
    return min(images, steps_per_epoch(images, config) * config["batch_size"])


def train_dataset(x: np.ndarray, y: np.ndarray, config: dict, num_classes: int, seed: int,
                  first_epoch: int = 0, epochs: int | None = None):
    """Shuffled, augmented, one-hot batches of epochs ``first_epoch`` .. ``epochs`` - 1
    (the config's epochs by default), one after the other. Each epoch's order and every
    batch's augmentation are functions of (seed, epoch, batch) alone, so a training resumed
    at epoch k sees exactly the batches an uninterrupted one saw from epoch k on. With
    ``flip: alternating`` each image has a fixed coin (seeded) and every image is mirrored
    the other way in odd epochs, as airbench does."""
    import tensorflow as tf

    epochs = config["epochs"] if epochs is None else epochs
    flip, pad, batch = unspell("flip", config["flip"]), config["translate"], config["batch_size"]
    alternating = flip == "alternating"
    steps = steps_per_epoch(len(x), config)
    drop = steps * batch < len(x)
    coins = np.random.default_rng(seed).random(len(x)) < 0.5
    # Each epoch shuffles image *numbers* and a batch gathers its images from one copy of
    # the arrays: shuffling (image, label, coin) slices instead put the whole training set
    # into every epoch's branch of the pipeline, and memory grew with the epochs (12 GB at
    # 67 epochs of 50,000 images). A shuffle's order depends only on its seed and the
    # element count, so the batches are the very ones the slices gave.
    xs, ys, cs = tf.constant(x), tf.constant(y), tf.constant(coins)
    numbers = tf.data.Dataset.range(len(x))

    def one_epoch(epoch: int):  # seeded by a plain integer: tf.data takes no tensor seed
        shuffled = numbers.shuffle(len(x), seed=seed * EPOCH_SEED_STRIDE + epoch, reshuffle_each_iteration=False)
        return shuffled.batch(batch, drop_remainder=drop).enumerate().map(
            lambda i, b: (tf.constant(epoch * steps, tf.int64) + i, tf.constant(epoch, tf.int64), b))

    def prepare(step, epoch, picked):
        images, labels, coin = tf.gather(xs, picked), tf.gather(ys, picked), tf.gather(cs, picked)
        draws = tf.stack([tf.constant(seed, tf.int64), step])
        if alternating:
            mirrored = tf.not_equal(coin, tf.equal(tf.math.floormod(epoch, 2), 1))
            images = augment_batch(images, False, pad, mirrored, seed=draws)
        elif flip != "off" or pad:
            images = augment_batch(images, flip, pad, seed=draws)
        return images, tf.one_hot(labels, num_classes)

    # A fixed pipeline, not tf.data's autotuner: with it, about half the epochs began with a
    # stall of ~10 s with both cores idle (ref-net fp32 on the 2-core AMD EPYC VM: 463 and
    # 532 images/s with it, 784 and 778 without; benchmarks/input_stall.py). The
    # augmentation is cheap next to a training step, so a map over the cores and two
    # batches in hand keep the step fed (benchmarks/data_path.py).
    options = tf.data.Options()
    options.autotune.enabled = False
    every = one_epoch(first_epoch)
    for epoch in range(first_epoch + 1, epochs):
        every = every.concatenate(one_epoch(epoch))
    return every.map(prepare, num_parallel_calls=runtime.usable_cores()).prefetch(2).with_options(options)
