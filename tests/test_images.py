"""read_image: every Pillow mode a user meets, written to a file here and read back by its stated rule."""
import pickle

import numpy as np
import pytest
from PIL import Image

from minissd.data.annotations import load_image
from minissd.imageio import DataError, _to_rgb, image_size, read_image


def gray3(values):
    """(H, W) -> (H, W, 3) uint8, the gray value in R, G and B."""
    return np.repeat(np.asarray(values, np.uint8)[..., None], 3, axis=2)


def over_white(rgb, alpha):
    """The module's compositing rule written in floats: c * a / 255 + 255 * (1 - a / 255), rounded."""
    a = np.asarray(alpha, np.float64)[..., None] / 255.0
    return np.floor(np.asarray(rgb, np.float64) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)


def save(img, tmp_path, name, expect_mode=None):
    path = tmp_path / name
    img.save(path)
    with Image.open(path) as back:  # the file really holds the mode under test
        assert back.mode == (expect_mode or img.mode), (name, back.mode)
    return path


def test_rgb_is_read_as_stored(tmp_path, rng):
    pixels = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = read_image(save(Image.fromarray(pixels), tmp_path, "a.png"))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3) and out.flags.writeable and out.flags.c_contiguous
    np.testing.assert_array_equal(out, pixels)


def test_gray_and_bilevel(tmp_path, rng):
    gray = rng.integers(0, 256, (4, 6), dtype=np.uint8)
    np.testing.assert_array_equal(read_image(save(Image.fromarray(gray), tmp_path, "l.png")), gray3(gray))
    bits = np.array([[1, 0, 1], [0, 0, 1]], bool)
    out = read_image(save(Image.fromarray(bits), tmp_path, "one.png"))
    np.testing.assert_array_equal(out, gray3(bits * 255))


def test_palette_without_and_with_transparency(tmp_path):
    palette = [10, 20, 30, 200, 100, 50, 0, 0, 0] + [0] * (256 * 3 - 9)
    index = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    img = Image.fromarray(index, mode="P")
    img.putpalette(palette)
    colours = np.array(palette[:9], np.uint8).reshape(3, 3)
    np.testing.assert_array_equal(read_image(save(img, tmp_path, "p.png")), colours[index])
    # Index 2 (black) transparent: shown as the white background, the others as they are.
    img.info["transparency"] = 2
    path = tmp_path / "pt.png"
    img.save(path, transparency=2)
    with Image.open(path) as back:
        assert back.mode == "P" and back.info.get("transparency") == 2
    expected = colours[index].copy()
    expected[index == 2] = 255
    np.testing.assert_array_equal(read_image(path), expected)


def test_alpha_is_composited_over_white(tmp_path, rng):
    rgba = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255  # fully transparent: white; opaque: the colour itself
    out = read_image(save(Image.fromarray(rgba, mode="RGBA"), tmp_path, "rgba.png"))
    np.testing.assert_array_equal(out, over_white(rgba[..., :3], rgba[..., 3]))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == rgba[0, 1, :3].tolist()
    la = rng.integers(0, 256, (3, 4, 2), dtype=np.uint8)
    out = read_image(save(Image.fromarray(la, mode="LA"), tmp_path, "la.png"))
    np.testing.assert_array_equal(out, over_white(gray3(la[..., 0]), la[..., 1]))


def test_premultiplied_and_hsv_modes_in_memory():
    # RGBa / La / HSV never come out of a file Pillow writes; Pillow makes them from other modes.
    straight = Image.new("RGBA", (1, 1), (200, 100, 50, 128))
    np.testing.assert_array_equal(_to_rgb(straight.convert("RGBa"), "x"),
                                  over_white(np.asarray(straight)[..., :3], 128))
    la = Image.new("LA", (1, 1), (200, 128))
    np.testing.assert_array_equal(_to_rgb(la.convert("La"), "x"), over_white(gray3([[200]]), 128))
    rgb = Image.new("RGB", (1, 1), (200, 100, 50))
    np.testing.assert_allclose(_to_rgb(rgb.convert("HSV"), "x").astype(int), [[[200, 100, 50]]], atol=2)


def test_cmyk_and_ycbcr(tmp_path):
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))  # no ink: white
    cmyk.putpixel((1, 0), (255, 0, 0, 0))  # full cyan: no red
    out = read_image(save(cmyk, tmp_path, "cmyk.tif"))
    assert out.tolist() == [[[255, 255, 255], [0, 255, 255]]]
    ycc = Image.new("RGB", (3, 2), (30, 160, 90)).convert("YCbCr")
    out = read_image(save(ycc, tmp_path, "ycc.tif"))
    np.testing.assert_allclose(out.astype(int), np.full((2, 3, 3), [30, 160, 90]), atol=2)


@pytest.mark.parametrize("mode, name, expect_mode", [("I;16", "a.png", "I;16"), ("I;16", "a.tif", "I;16"),
                                                      ("I;16B", "b.tif", "I;16B"), ("I;16", "c.pgm", "I")])
def test_16_bit_gray_is_scaled_not_saturated(tmp_path, mode, name, expect_mode):
    values = np.array([[0, 1, 128, 129], [257, 1000, 32768, 65535]], np.uint16)
    raw = values.astype(">u2" if mode == "I;16B" else "<u2").tobytes()
    img = Image.frombytes(mode, (4, 2), raw)
    out = read_image(save(img, tmp_path, name, expect_mode))
    # round(v / 257): 0, 0, 0 (128 / 257 < 0.5), 1 (129 / 257 > 0.5), 1, 4 (1000 / 257 = 3.89), 128, 255
    np.testing.assert_array_equal(out, gray3([[0, 0, 0, 1], [1, 4, 128, 255]]))
    assert not (out == 255).all()  # issue 16: convert("RGB") made it all white


def test_32_bit_integer_gray_in_16_bit_range_or_refused(tmp_path):
    values = np.array([[0, 257, 65535]], np.int32)
    out = read_image(save(Image.fromarray(values), tmp_path, "i.tif", "I"))
    np.testing.assert_array_equal(out, gray3([[0, 1, 255]]))
    for bad in (np.array([[0, 70000]], np.int32), np.array([[-1, 5]], np.int32)):
        path = save(Image.fromarray(bad), tmp_path, "big.tif", "I")
        with pytest.raises(DataError, match=r"big\.tif: image mode I .*" + f"{bad.min()}..{bad.max()}"):
            read_image(path)


def test_float_gray_in_unit_range_or_refused(tmp_path):
    values = np.array([[0.0, 0.5, 1.0, 0.002]], np.float32)
    out = read_image(save(Image.fromarray(values), tmp_path, "f.tif", "F"))
    np.testing.assert_array_equal(out, gray3([[0, 128, 255, 1]]))  # round(255 v); 127.5 -> 128
    path = save(Image.fromarray(np.array([[0.0, 300.0]], np.float32)), tmp_path, "f255.tif", "F")
    with pytest.raises(DataError, match=r"f255\.tif: image mode F .*0\.\.300"):
        read_image(path)
    path = save(Image.fromarray(np.array([[0.0, np.nan]], np.float32)), tmp_path, "fnan.tif", "F")
    with pytest.raises(DataError, match=r"fnan\.tif: image mode F .*NaN"):
        read_image(path)


def test_unreadable_mode_is_refused_with_file_and_mode(tmp_path):
    path = save(Image.new("LAB", (2, 2)), tmp_path, "lab.tif")
    with pytest.raises(DataError, match=r"lab\.tif: image mode LAB cannot be read"):
        read_image(path)


def test_truncated_corrupt_missing_files_name_the_file(tmp_path, rng):
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for ext in ("jpg", "png"):
        good = tmp_path / f"good.{ext}"
        Image.fromarray(pixels).save(good)
        data = good.read_bytes()
        cut = tmp_path / f"cut.{ext}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(DataError, match=rf"cut\.{ext}: cannot read image") as info:
            read_image(cut)
        assert info.value.path == str(cut)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not an image\n" * 10)
    with pytest.raises(DataError, match=r"junk\.jpg: cannot read image"):
        read_image(junk)
    with pytest.raises(DataError, match=r"gone\.jpg: image file is missing"):
        read_image(tmp_path / "gone.jpg")
    with pytest.raises(DataError, match="is a directory"):
        read_image(tmp_path)
    with pytest.raises(DataError, match=r"junk\.jpg: cannot read image"):
        image_size(junk)


def test_expected_size_and_the_dataset_alias(tmp_path):
    path = save(Image.new("RGB", (5, 3)), tmp_path, "s.png")
    assert image_size(path) == (5, 3)
    assert read_image(path, (5, 3)).shape == (3, 5, 3)
    with pytest.raises(DataError, match=r"s\.png: image is 5x3 but its annotation says 3x5"):
        read_image(path, (3, 5))
    assert load_image is read_image  # the datasets read through the same function


def test_data_error_is_a_value_error_and_pickles():
    err = DataError("/data/x.jpg", "cannot read image (OSError: truncated)")
    assert isinstance(err, ValueError) and str(err) == "/data/x.jpg: cannot read image (OSError: truncated)"
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is DataError and back.path == err.path and back.reason == err.reason
    assert str(back) == str(err)
