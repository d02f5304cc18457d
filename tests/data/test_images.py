"""Defined image behaviour: how 16-bit, CMYK, palette, EXIF-rotated and tiny images map to the model's pixels,
and what is refused (float pixels, decompression bombs), each against numpy or Pillow's own conversion."""

import numpy as np
import pytest
from PIL import Image

from tests.conftest import png_claiming
from tfcompress.data.images import MAX_PIXELS, Preprocessing, load_pixels
from tfcompress.errors import TfcError

GRAY = Preprocessing(height=4, width=6, channels=1)
RGB = Preprocessing(height=4, width=6, channels=3)


def test_16_bit_png_maps_its_full_range_to_8_bits(tmp_path):
    values = np.array([[0, 257, 32768, 65535, 1000, 65280]] * 4, np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    got = load_pixels(str(path), GRAY)[..., 0]
    np.testing.assert_array_equal(got, np.round(values * (255.0 / 65535.0)).astype(np.uint8))


def test_cmyk_and_palette_images_become_rgb_as_pillow_converts_them(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    cmyk.save(tmp_path / "cmyk.tif")
    np.testing.assert_array_equal(load_pixels(str(tmp_path / "cmyk.tif"), RGB), np.asarray(cmyk.convert("RGB")))
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(load_pixels(str(tmp_path / "palette.png"), RGB),
                                  np.asarray(palette.convert("RGB")))


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.arange(24, dtype=np.uint8).reshape(6, 4) * 10  # Stored 6 high, 4 wide.
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # "Rotate 90 CW to display."
    image.save(tmp_path / "rotated.png", exif=exif)
    got = load_pixels(str(tmp_path / "rotated.png"), GRAY)[..., 0]  # GRAY is 4 high, 6 wide: no resize.
    np.testing.assert_array_equal(got, np.rot90(pixels, k=-1))


def test_a_tiny_image_is_resized_up(tmp_path):
    Image.new("L", (1, 1), 77).save(tmp_path / "dot.png")
    np.testing.assert_array_equal(load_pixels(str(tmp_path / "dot.png"), GRAY), np.full((4, 6, 1), 77, np.uint8))


def test_float_pixels_are_refused_by_name(tmp_path):
    Image.fromarray(np.zeros((4, 6), np.float32), "F").save(tmp_path / "float.tif")
    with pytest.raises(TfcError, match="has mode F"):
        load_pixels(str(tmp_path / "float.tif"), GRAY)


@pytest.mark.parametrize("side, message", [(9000, "9000x9000: more than 64,000,000 pixels"),
                                           (14000, "larger than 64,000,000 pixels")])  # Pillow's own bomb check.
def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path, side, message):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(side, side))
    assert side * side > MAX_PIXELS
    with pytest.raises(TfcError, match=message):
        load_pixels(str(path), GRAY)


if __name__ == "__main__":
    import sys
    sys.exit(pytest.main([__file__, "-q"]))
