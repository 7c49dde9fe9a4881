"""Reading user files: images come upright, label PNGs must have the mode their format needs."""

import numpy as np
import pytest
from PIL import Image

from model.data.files import read_image_size, read_label_png, read_rgb, verify_image
from model.errors import UserError


@pytest.mark.parametrize("name", ["portrait.jpg", "portrait.png"])
def test_an_exif_rotated_photo_is_read_upright_and_its_header_size_agrees(tmp_path, name):
    path = tmp_path / name
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (60, 20), (200, 0, 0)).save(path, exif=exif)
    assert read_rgb(path).shape == (60, 20, 3)
    assert read_image_size(path) == (60, 20)


def test_a_png_size_is_read_from_its_header_alone(tmp_path):
    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 48, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:2000])  # pixels cut short: a decode would fail
    assert read_image_size(path) == (64, 48)
    with pytest.raises(UserError, match="image is truncated or corrupt"):
        verify_image(path)


def test_grey_and_rgba_images_become_rgb(tmp_path):
    Image.new("L", (10, 12), 9).save(tmp_path / "grey.png")
    Image.new("RGBA", (10, 12)).save(tmp_path / "alpha.png")
    assert read_rgb(tmp_path / "grey.png").shape == (12, 10, 3)
    assert read_rgb(tmp_path / "alpha.png").shape == (12, 10, 3)


def test_label_pngs_must_have_the_mode_of_their_format(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    Image.fromarray(np.full((4, 4), 300, np.uint16)).save(tmp_path / "wide.png")
    Image.new("L", (4, 4)).save(tmp_path / "grey.png")
    assert read_label_png(tmp_path / "wide.png", expect_rgb=False).max() == 300
    with pytest.raises(UserError, match=r"rgb\.png: expected a single-channel mask PNG"):
        read_label_png(tmp_path / "rgb.png", expect_rgb=False)
    with pytest.raises(UserError, match=r"grey\.png: expected an RGB panoptic PNG"):
        read_label_png(tmp_path / "grey.png", expect_rgb=True)


def test_a_missing_image_names_the_file(tmp_path):
    with pytest.raises(UserError, match=r"nothing\.png: image file not found"):
        read_rgb(tmp_path / "nothing.png")
