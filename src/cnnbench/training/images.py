"""Image files -> the uint8 RGB pictures a model sees: one path for training, evaluation
and prediction, so the model card's test accuracy describes what ``cnnbench predict`` does.

Every file becomes the RGB picture a person sees: EXIF orientation applied (a phone photo
stored sideways is upright), 16-bit and 32-bit pixels scaled to 8 bits (not clipped to
white), transparency composited on white, CMYK and palettes converted, the first frame of
an animation. Resizing to the model's input is bilinear with antialiasing, the same
operation as the exported model's own ``Resizing`` layer, for images of any other size,
written in NumPy: nothing here imports TensorFlow.
Files over ``MAX_PIXELS`` are refused (decompression bombs), like anything unreadable, with
an ``ImageError`` naming the file.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_PIXELS = 50_000_000  # about 7000 x 7000: far above any photo we classify, far below a bomb


class ImageError(ValueError):
    """An image file cannot be read as a picture; the message names the file and why."""


def _scaled_to_8_bits(im) -> "np.ndarray":
    """A 16-bit, 32-bit integer or float single-channel image as uint8, scaled not clipped."""
    values = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
    elif im.mode.startswith("I;16") or values.max(initial=0) <= 65535:
        top = 65535.0
    else:
        top = float(2**31 - 1)
    return np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)


def to_rgb(im):
    """The RGB picture a person sees in ``im`` (a PIL image)."""
    from PIL import Image, ImageOps

    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)  # an animation: its first frame
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return Image.fromarray(_scaled_to_8_bits(im), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im.convert("RGB")


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """``pixels`` (h, w, 3) uint8 at size x size: bilinear with antialiasing, as the model's
    own Resizing layer does it (TensorFlow's ScaleAndTranslate with a triangle kernel),
    rounded back to uint8. In NumPy, so that classifying with an ONNX or LiteRT file needs no
    TensorFlow; a test holds it to TensorFlow's op."""
    if pixels.shape[:2] == (size, size):
        return pixels
    rows = _resize_weights(pixels.shape[0], size)
    columns = _resize_weights(pixels.shape[1], size)
    out = np.einsum("ih,hwc,jw->ijc", rows, pixels.astype(np.float32), columns, optimize=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _resize_weights(source: int, target: int) -> np.ndarray:
    """(target, source) weights of one axis: TensorFlow's antialiased triangle kernel
    (scale_and_translate_op.cc, ComputeSpansCore). Shrinking widens the kernel by the
    shrink factor, so every source pixel counts (the antialiasing); each row sums to 1."""
    inverse_scale = source / target
    kernel_scale = max(inverse_scale, 1.0)
    centres = (np.arange(target) + 0.5) * inverse_scale  # where each output pixel samples, in source pixels
    offsets = (np.arange(source)[None, :] + 0.5 - centres[:, None]) / kernel_scale
    weights = np.maximum(0.0, 1.0 - np.abs(offsets))
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def read_image(path, size: int | None = None) -> np.ndarray:
    """One image file as uint8 RGB (h, w, 3), at ``size`` x ``size`` when given."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageError(f"{path}: {im.width}x{im.height} pixels is over the limit of {MAX_PIXELS:,}")
                pixels = np.asarray(to_rgb(im), dtype=np.uint8)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: a folder, not an image") from None
    except PermissionError:
        raise ImageError(f"{path}: not readable (permission denied)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image PIL can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{path}: too many pixels (a decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated or corrupt data
        raise ImageError(f"{path}: broken image data ({str(e).strip() or type(e).__name__})") from None
    return resize(pixels, size) if size else pixels
