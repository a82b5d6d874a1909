"""Configuration -> Keras model, and the same architecture counted on paper.

``build_model`` is pure: concrete values in, an untrained ``keras.Model`` out. It imports
nothing from training or from any search engine. The model takes raw uint8 RGB images of
any size: resizing and normalisation are its first layers, so an exported model needs no
preprocessing code beside it, and it uses only built-in layers, so it loads in Keras'
safe mode without custom objects.

A network is: preprocessing, an optional whitening stem, ``stages`` conv stages (each with
one 2x2 pooling, after its first or its last conv, and optionally a two-conv residual unit
after the pooling), a head (global pooling or flatten, optional dense layer) and the
classifier. ``architecture_stats`` walks the same structure with numbers instead of
layers, so ``cnnbench check`` can report a space's sizes and the deadline forecast can
price a trial without building anything; a test holds it equal to Keras' own count.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cnnbench.knobs import unspell

CHANNELS = 3
WHITEN_KERNEL = 2                                   # the whitening stem's patch side, pixels
WHITEN_FILTERS = 2 * CHANNELS * WHITEN_KERNEL ** 2  # each eigenvector of the patches, + and -


class ArchitectureError(ValueError):
    """The configuration cannot be built for the input size (e.g. too many poolings)."""


def stage_widths(config: dict) -> list[int]:
    """Filters of each conv stage: ``widths`` when given, else base * growth**stage capped."""
    if config.get("widths"):
        widths = [int(w) for w in config["widths"].split("-")]
        if len(widths) != config["stages"]:
            raise ArchitectureError(f"widths {config['widths']!r} names {len(widths)} stage(s), "
                                    f"but stages is {config['stages']}")
        return widths
    return [
        max(1, min(config["max_filters"], round(config["base_filters"] * config["filter_growth"] ** s)))
        for s in range(config["stages"])
    ]


@dataclass(frozen=True)
class ArchitectureStats:
    params: int        # all weights, trainable or not, as keras' count_params() counts them
    flops: int         # per image, forward pass: 2 x multiply-adds of conv and dense layers
    feature_size: int  # side of the last feature map, pixels


class _Counter:
    """Parameters and FLOPs of a conv network, one layer at a time (the paper twin of build_model)."""

    def __init__(self, size: int, channels: int, batch_norm: bool, bn_scale: bool):
        self.size, self.channels, self.bn, self.bn_scale = size, channels, batch_norm, bn_scale
        self.params = self.flops = 0

    def conv(self, filters: int, kernel: int, padding: str, where: str, bias: bool | None = None) -> None:
        if padding == "valid":
            if self.size < kernel:
                raise ArchitectureError(f"{where} sees a {self.size}x{self.size} map, smaller than its "
                                        f"{kernel}x{kernel} kernel with padding 'valid'")
            self.size = self.size - kernel + 1
        with_bias = (not self.bn) if bias is None else bias
        # [gamma,] beta, moving mean and moving variance
        norm = (3 + self.bn_scale) * filters if (self.bn and bias is None) else 0
        self.params += kernel * kernel * self.channels * filters + (filters if with_bias else 0) + norm
        self.flops += 2 * kernel * kernel * self.channels * filters * self.size * self.size
        self.channels = filters

    def pool(self, where: str) -> None:
        if self.size < 2:
            raise ArchitectureError(f"too many poolings: {where} would pool a {self.size}x{self.size} map")
        self.size //= 2

    def dense(self, units: int) -> None:
        self.params += self.channels * units + units
        self.flops += 2 * self.channels * units
        self.channels = units


def _pools(config: dict, stage: int) -> bool:
    return stage < config["stages"] - 1 or config["pool_last_stage"]


def architecture_stats(config: dict, image_size: int = 32, num_classes: int = 10) -> ArchitectureStats:
    """Parameters and FLOPs of ``build_model(config)``, computed without Keras.

    Raises ArchitectureError when a conv or pooling would see a map smaller than itself.
    """
    net = _Counter(image_size, CHANNELS, config["batch_norm"], config["bn_scale"])
    k = config["kernel_size"]
    try:
        if config["stem"] == "whiten":
            net.conv(WHITEN_FILTERS, WHITEN_KERNEL, "valid", "the whitening stem", bias=True)
        for stage, width in enumerate(stage_widths(config)):
            for conv in range(config["convs_per_stage"]):
                net.conv(width, k, config["padding"], f"stage {stage + 1} conv {conv + 1}")
                if conv == 0 and config["pool_after"] == "first_conv" and _pools(config, stage):
                    net.pool(f"stage {stage + 1}")
            if config["pool_after"] == "last_conv" and _pools(config, stage):
                net.pool(f"stage {stage + 1}")
            if config["residual"]:
                net.conv(width, 3, "same", f"stage {stage + 1} residual conv 1")
                net.conv(width, 3, "same", f"stage {stage + 1} residual conv 2")
    except ArchitectureError as e:
        raise ArchitectureError(f"{e} ({config['stages']} stages on {image_size}x{image_size} input)") from None
    if config["head"] == "flatten":
        net.channels *= net.size * net.size
    for units in ([config["dense_units"]] if config["dense_units"] else []) + [num_classes]:
        net.dense(units)
    return ArchitectureStats(params=net.params, flops=net.flops, feature_size=net.size)


def build_model(config: dict, num_classes: int = 10, image_size: int = 32,
                mean: Sequence[float] = (0.5, 0.5, 0.5), variance: Sequence[float] = (0.25, 0.25, 0.25),
                dtype_policy: str | None = None, fused: bool = False):
    """An untrained, uncompiled ``keras.Model`` for ``config``.

    Input: uint8 RGB, any height and width. Output: class probabilities (softmax, float32).
    ``mean`` and ``variance`` are per-channel statistics of the training images in [0, 1].
    ``dtype_policy`` is the resolved precision (``config['precision']`` may say ``auto``).
    ``fused`` swaps in faster training kernels (batch norm, GELU), for the network being trained
    only (``cnnbench.model.fused``); saved models are built without it. The whitening stem's
    filters need training images: ``set_whitening`` fills them.

    Longer than most functions here on purpose: the network reads top to bottom in one
    place (input, stem, stages, head), as airbench's does, rather than across helpers.
    """
    import keras
    from keras import layers

    architecture_stats(config, image_size, num_classes)  # fail with a clear message, not a shape error
    policy = dtype_policy or config["precision"]
    # Mixed precision: layers compute in bf16 and keep float32 weights; the preprocessing
    # and the classifier stay float32 so probabilities are exact enough to compare.
    dtype = policy if policy not in ("float32", "auto") else None
    bn, act, k = config["batch_norm"], config["activation"], config["kernel_size"]
    pool_layer = layers.MaxPooling2D if config["pooling"] == "max" else layers.AveragePooling2D
    norm_layer = layers.BatchNormalization

    def activation_layer(name):
        return layers.Activation(act, dtype=dtype, name=name)

    if fused and keras.backend.backend() == "tensorflow":  # the network being trained
        from cnnbench.model.fused import FusedBatchNormalization as norm_layer
        from cnnbench.model.fused import FusedGELU

        if act == "gelu":
            def activation_layer(name):
                return FusedGELU(dtype=dtype, name=name)

    def conv_unit(x, filters, kernel, padding, name, pool=False):
        """conv, [pool], [batch norm], activation: pooling before the norm (airbench) halves its cost."""
        x = layers.Conv2D(filters, kernel, padding=padding, use_bias=not bn, dtype=dtype, name=name)(x)
        if pool:
            x = pool_layer(2, dtype=dtype, name=name.split("_")[0] + "_pool")(x)
        if bn:
            x = norm_layer(momentum=config["bn_momentum"], scale=config["bn_scale"], dtype=dtype, name=f"{name}_bn")(x)
        return activation_layer(f"{name}_act")(x)

    inputs = keras.Input(shape=(None, None, CHANNELS), dtype="uint8", name="image")
    # antialias: the same resize the data loader applies (images.resize), for raw inputs of any size
    x = layers.Resizing(image_size, image_size, antialias=True, name="resize")(inputs)
    x = layers.Rescaling(1 / 255, name="to_unit_range")(x)
    x = layers.Normalization(mean=list(mean), variance=list(variance), name="standardize")(x)
    if config["stem"] == "whiten":
        x = layers.Conv2D(WHITEN_FILTERS, WHITEN_KERNEL, padding="valid", dtype=dtype, name="whiten")(x)
        x = activation_layer("whiten_act")(x)
    for stage, filters in enumerate(stage_widths(config)):
        s = f"stage{stage + 1}"
        pool_first = config["pool_after"] == "first_conv" and _pools(config, stage)
        for conv in range(config["convs_per_stage"]):
            x = conv_unit(x, filters, k, config["padding"], f"{s}_conv{conv + 1}", pool=pool_first and conv == 0)
        if config["pool_after"] == "last_conv" and _pools(config, stage):
            x = pool_layer(2, dtype=dtype, name=f"{s}_pool")(x)
        if config["residual"]:
            branch = conv_unit(x, filters, 3, "same", f"{s}_res1")
            branch = conv_unit(branch, filters, 3, "same", f"{s}_res2")
            x = layers.Add(dtype=dtype, name=f"{s}_residual")([x, branch])
        if config["conv_dropout"]:
            x = layers.Dropout(config["conv_dropout"], name=f"{s}_dropout")(x)
    if config["head"] == "flatten":
        x = layers.Flatten(name="flatten")(x)
    elif config["head"] == "global_max":
        x = layers.GlobalMaxPooling2D(dtype=dtype, name="global_max")(x)
    else:
        x = layers.GlobalAveragePooling2D(dtype=dtype, name="global_avg")(x)
    if config["dense_units"]:
        x = layers.Dense(config["dense_units"], activation=act, dtype=dtype, name="dense")(x)
    if config["dropout"]:
        x = layers.Dropout(config["dropout"], name="dropout")(x)
    x = layers.Dense(num_classes, dtype="float32", name="classifier")(x)
    if config["logit_scale"] != 1.0:
        x = layers.Rescaling(config["logit_scale"], dtype="float32", name="logit_scale")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="cnnbench")
    if config["dirac_init"]:
        _dirac_init(model)
    return model


def with_tta(model, tta: str):
    """``model`` wrapped to average its predictions over the views ``tta`` names (the knob):
    'mirror': each image and its mirror; 'mirror_translate': that pair weighted 1/2, plus
    the pair shifted by one pixel up-left and the pair shifted one pixel down-right (edges
    reflected), 1/4 each: airbench's six views. Probabilities are averaged (airbench
    averages logits). The shift is one pixel of the input image, which is one pixel of the
    model's own resolution for images at its training size (all of CIFAR-10).

    Built from a nested model, ``keras.ops`` and ``Average``: it still loads in safe mode.
    """
    import keras
    from keras import layers

    tta = unspell("tta", tta)  # true/false, as spaces and records before the six views said
    if tta == "off":
        return model
    inputs = keras.Input(shape=(None, None, CHANNELS), dtype="uint8", name="image")

    def mirror_pair(images, name):
        mirrored = keras.ops.flip(images, axis=2)  # (batch, height, width, channels): width is axis 2
        return layers.Average(name=name)([model(images), model(mirrored)])

    outputs = mirror_pair(inputs, "mirror_average")
    if tta == "mirror_translate":
        padded = keras.ops.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="reflect")
        down_right = layers.Cropping2D(((0, 2), (0, 2)), name="shift_down_right")(padded)
        up_left = layers.Cropping2D(((2, 0), (2, 0)), name="shift_up_left")(padded)
        shifted = layers.Average(name="shifted_average")([mirror_pair(down_right, "down_right_average"),
                                                          mirror_pair(up_left, "up_left_average")])
        outputs = layers.Average(name="six_view_average")([outputs, shifted])
    return keras.Model(inputs, outputs, name=f"{model.name}_tta")


def with_mirror_tta(model):
    """``model`` averaging each image and its mirror image (``with_tta(model, 'mirror')``)."""
    return with_tta(model, "mirror")


def _dirac_init(model) -> None:
    """In each 'same' conv, output filter c < min(in, out) starts as the identity of input
    channel c (the rest keep their random start): signals pass through at first."""
    for layer in model.layers:
        if layer.__class__.__name__ != "Conv2D" or layer.name == "whiten" or layer.padding != "same":
            continue
        kernel = np.array(layer.kernel.numpy())
        kh, kw, cin, cout = kernel.shape
        for c in range(min(cin, cout)):
            kernel[:, :, :, c] = 0.0
            kernel[kh // 2, kw // 2, c, c] = 1.0
        layer.kernel.assign(kernel)


def whitening_filters(images: np.ndarray, eps: float = 5e-4) -> np.ndarray:
    """The whitening stem's kernel (2, 2, 3, 24) from standardized float images (n, h, w, 3):
    the eigenvectors of the 2x2 patches' covariance, scaled by 1/sqrt(eigenvalue), + and -."""
    patches = np.lib.stride_tricks.sliding_window_view(images, (WHITEN_KERNEL, WHITEN_KERNEL), axis=(1, 2))
    patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(-1, WHITEN_KERNEL * WHITEN_KERNEL * CHANNELS)
    patches = patches.astype(np.float64)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]  # strongest direction first
    filters = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + eps)
    kernel = np.concatenate([filters, -filters], axis=1)
    return kernel.reshape(WHITEN_KERNEL, WHITEN_KERNEL, CHANNELS, WHITEN_FILTERS).astype(np.float32)


def set_whitening(model, images: np.ndarray) -> None:
    """Fill the whitening stem from training images (uint8) and freeze its kernel; its bias
    stays trainable. Standardized exactly as the model's own first layers do."""
    layer = model.get_layer("whiten")
    norm = model.get_layer("standardize")
    mean = np.asarray(norm.mean, np.float32).reshape(1, 1, 1, -1)
    std = np.sqrt(np.asarray(norm.variance, np.float32).reshape(1, 1, 1, -1))
    standardized = (images.astype(np.float32) / 255.0 - mean) / std
    layer.kernel.assign(whitening_filters(standardized))
    layer.bias.assign(np.zeros(WHITEN_FILTERS, np.float32))
    layer.kernel.trainable = False
