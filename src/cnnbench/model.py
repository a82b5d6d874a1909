"""Configuration -> Keras model, and the same architecture counted on paper.

``build_model`` is pure: concrete values in, an untrained ``keras.Model`` out. It imports
nothing from training or from any search engine. The model takes raw uint8 RGB images of
any size: resizing and normalisation are its first layers, so an exported model needs no
preprocessing code beside it, and it uses only built-in layers, so it loads in Keras'
safe mode without custom objects.

``architecture_stats`` computes parameters and FLOPs from the configuration alone, so
``cnnbench check`` can report a space's range of sizes without building anything; a test
holds it equal to Keras' own count.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

CHANNELS = 3


class ArchitectureError(ValueError):
    """The configuration cannot be built for the input size (e.g. too many poolings)."""


def stage_widths(config: dict) -> list[int]:
    """Filters of each conv stage: base * growth**stage, capped at max_filters."""
    return [
        max(1, min(config["max_filters"], round(config["base_filters"] * config["filter_growth"] ** s)))
        for s in range(config["stages"])
    ]


@dataclass(frozen=True)
class ArchitectureStats:
    params: int        # all weights, trainable or not, as keras' count_params() counts them
    flops: int         # per image: 2 x multiply-adds of conv and dense layers
    feature_size: int  # side of the last feature map, pixels


def architecture_stats(config: dict, image_size: int = 32, num_classes: int = 10) -> ArchitectureStats:
    """Parameters and FLOPs of ``build_model(config)``, computed without Keras.

    Raises ArchitectureError when a conv or pooling would see a map smaller than itself.
    """
    k, size, cin = config["kernel_size"], image_size, CHANNELS
    params = flops = 0
    for stage, cout in enumerate(stage_widths(config)):
        for conv in range(config["convs_per_stage"]):
            if config["padding"] == "valid":
                if size < k:
                    raise ArchitectureError(
                        f"stage {stage + 1} conv {conv + 1} sees a {size}x{size} map, smaller than its "
                        f"{k}x{k} kernel with padding 'valid', for {image_size}x{image_size} input")
                size = size - k + 1
            params += k * k * cin * cout + (4 * cout if config["batch_norm"] else cout)
            flops += 2 * k * k * cin * cout * size * size
            cin = cout
        if stage < config["stages"] - 1 or config["pool_last_stage"]:
            if size < 2:
                raise ArchitectureError(
                    f"too many poolings: stage {stage + 1} would pool a {size}x{size} map "
                    f"({config['stages']} stages on {image_size}x{image_size} input)")
            size //= 2
    features = cin * size * size if config["head"] == "flatten" else cin
    for units in ([config["dense_units"]] if config["dense_units"] else []) + [num_classes]:
        params += features * units + units
        flops += 2 * features * units
        features = units
    return ArchitectureStats(params=params, flops=flops, feature_size=size)


def build_model(config: dict, num_classes: int = 10, image_size: int = 32,
                mean: Sequence[float] = (0.5, 0.5, 0.5), variance: Sequence[float] = (0.25, 0.25, 0.25)):
    """An untrained, uncompiled ``keras.Model`` for ``config``.

    Input: uint8 RGB, any height and width. Output: class probabilities (softmax, float32).
    ``mean`` and ``variance`` are per-channel statistics of the training images in [0, 1].
    """
    import keras
    from keras import layers

    architecture_stats(config, image_size, num_classes)  # fail with a clear message, not a shape error
    # Mixed precision: layers compute in bf16 and keep float32 weights; the preprocessing
    # and the classifier stay float32 so probabilities are exact enough to compare.
    dtype = config["precision"] if config["precision"] != "float32" else None
    bn = config["batch_norm"]
    pool = layers.MaxPooling2D if config["pooling"] == "max" else layers.AveragePooling2D

    inputs = keras.Input(shape=(None, None, CHANNELS), dtype="uint8", name="image")
    x = layers.Resizing(image_size, image_size, name="resize")(inputs)
    x = layers.Rescaling(1 / 255, name="to_unit_range")(x)
    x = layers.Normalization(mean=list(mean), variance=list(variance), name="standardize")(x)
    for stage, filters in enumerate(stage_widths(config)):
        for conv in range(config["convs_per_stage"]):
            name = f"stage{stage + 1}_conv{conv + 1}"
            x = layers.Conv2D(filters, config["kernel_size"], padding=config["padding"], use_bias=not bn,
                              dtype=dtype, name=name)(x)
            if bn:
                # momentum 0.9 (Keras defaults to 0.99): short CPU runs need the moving statistics
                # to settle within a few hundred steps, or validation accuracy lags training.
                x = layers.BatchNormalization(momentum=0.9, dtype=dtype, name=f"{name}_bn")(x)
            x = layers.Activation(config["activation"], dtype=dtype, name=f"{name}_act")(x)
        if stage < config["stages"] - 1 or config["pool_last_stage"]:
            x = pool(2, dtype=dtype, name=f"stage{stage + 1}_pool")(x)
        if config["conv_dropout"]:
            x = layers.Dropout(config["conv_dropout"], name=f"stage{stage + 1}_dropout")(x)
    if config["head"] == "flatten":
        x = layers.Flatten(name="flatten")(x)
    else:
        x = layers.GlobalAveragePooling2D(dtype=dtype, name="global_avg")(x)
    if config["dense_units"]:
        x = layers.Dense(config["dense_units"], activation=config["activation"], dtype=dtype, name="dense")(x)
    if config["dropout"]:
        x = layers.Dropout(config["dropout"], name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="classifier")(x)
    return keras.Model(inputs, outputs, name="cnnbench")
