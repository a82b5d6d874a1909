"""Odd image files become the picture a person sees; broken ones are one clear error."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cnnbench.training.images import MAX_PIXELS, ImageError, read_image


def picture(h=40, w=56) -> np.ndarray:
    """An RGB picture with structure in every channel (and not symmetric, so rotations show)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 255 // w), (y * 255 // h), ((x + 2 * y) * 7) % 256], -1).astype(np.uint8)


def png48(rgb8: np.ndarray) -> bytes:
    """A 48-bit (16 bits per channel) RGB PNG of an 8-bit picture (PIL cannot write one)."""
    rgb16 = rgb8.astype(np.uint16) * 257
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def odd_files(folder, rgb: np.ndarray) -> dict[str, tuple]:
    """The same picture in odd formats: name -> (path, lossless?[, the picture it shows])."""
    files = {}
    gray = Image.fromarray(rgb).convert("L")

    def save(name, image, exact=True, **kw):
        path = folder / name
        image.save(path, **kw)
        files[name] = (path, exact)

    (folder / "rgb48.png").write_bytes(png48(rgb))
    files["rgb48.png"] = (folder / "rgb48.png", True)
    save("gray16.png", Image.fromarray(np.asarray(gray).astype(np.uint16) * 257))  # mode I;16
    # stored sideways, as phones do, with the EXIF tag that says how to turn it upright
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    save("rotated.jpg", Image.fromarray(np.rot90(rgb, k=1)), exact=False, quality=95, exif=exif)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    save("rgba.png", Image.fromarray(rgba, "RGBA"))
    palette = Image.fromarray(rgb).quantize(64)  # 64 colours: what a person sees is the quantized picture
    save("palette.png", palette, transparency=255)  # an unused slot: transparency declared, nothing transparent
    files["palette.png"] = (files["palette.png"][0], True, np.asarray(palette.convert("RGB")))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), exact=False, quality=95)
    save("lossless.webp", Image.fromarray(rgb), lossless=True)
    save("progressive.jpg", Image.fromarray(rgb), exact=False, quality=95, progressive=True)
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    save("animated.gif", frames[0], exact=False, save_all=True, append_images=frames[1:], duration=100)
    save("plain.png", Image.fromarray(rgb))
    return files


def test_odd_formats_read_as_the_picture_a_person_sees(tmp_path):
    rgb = picture()
    files = odd_files(tmp_path, rgb)
    plain = read_image(files["plain.png"][0])
    np.testing.assert_array_equal(plain, rgb)
    gray = np.asarray(Image.fromarray(rgb).convert("L").convert("RGB"))
    for name, (path, lossless, *seen) in files.items():
        pixels = read_image(path)
        expected = seen[0] if seen else gray if name == "gray16.png" else rgb
        assert pixels.shape == expected.shape and pixels.dtype == np.uint8, name
        error = np.abs(pixels.astype(int) - expected.astype(int)).mean()
        assert error <= (0.5 if lossless else 12), f"{name}: mean pixel error {error:.1f}"
    white = Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA")  # fully transparent: a viewer shows white
    white.save(tmp_path / "clear.png")
    assert (read_image(tmp_path / "clear.png") == 255).all()


def test_sixteen_bit_pixels_are_scaled_not_clipped(tmp_path):
    ramp = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    pixels = read_image(tmp_path / "ramp.png")[..., 0]
    np.testing.assert_array_equal(pixels, np.arange(256).reshape(16, 16))  # not 99.6% white


def test_resizing_to_the_model_input_is_antialiased_and_matches_the_models_own_layer(tmp_path):
    import keras

    rgb = picture(96, 96)
    Image.fromarray(rgb).save(tmp_path / "big.png")
    small = read_image(tmp_path / "big.png", 32)
    assert small.shape == (32, 32, 3)
    layer = keras.layers.Resizing(32, 32, antialias=True)
    by_model = np.asarray(layer(rgb[None].astype("float32")))[0]
    assert np.abs(small.astype(float) - by_model).max() <= 0.5 + 1e-3  # the same resize, up to rounding


@pytest.mark.parametrize("content,reason", [
    (b"this is text, not a jpeg", "not an image PIL can read"),
    (b"", "not an image PIL can read"),
])
def test_broken_files_are_one_clear_error(tmp_path, content, reason):
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError) as err:
        read_image(path)
    assert str(err.value) == f"{path}: {reason}"


def test_truncated_and_missing_and_bomb_images_name_the_file(tmp_path):
    good = io.BytesIO()
    Image.fromarray(picture()).save(good, format="JPEG", quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    with pytest.raises(ImageError, match=f"{truncated}: broken image data"):
        read_image(truncated)
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.png")
    side = int(MAX_PIXELS ** 0.5) + 10
    Image.new("1", (side, side)).save(tmp_path / "bomb.png")  # a small file of very many pixels
    with pytest.raises(ImageError, match="over the limit"):
        read_image(tmp_path / "bomb.png")
