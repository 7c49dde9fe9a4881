"""Augmentations move image and masks together, produce the sizes they promise, and drop vanished instances."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.data.dataset import ImageRecord, SegmentationDataset
from model.data.label_map import LabelMap
from model.data.targets import Annotation
from model.data.transforms import LargeScaleJitter, ResizeCrop, ResizeShortestEdge, random_flip, shortest_edge_size

RED, BLUE = torch.tensor([255, 0, 0], dtype=torch.uint8), torch.tensor([0, 0, 255], dtype=torch.uint8)


def _scene(height=120, width=160):
    """A blue image with a red disc, an off-centre square and their masks (2, H, W): image and masks agree exactly."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    disc = (yy - 40) ** 2 + (xx - 50) ** 2 <= 25**2
    square = (yy >= 70) & (yy < 110) & (xx >= 110) & (xx < 150)
    image = torch.where((disc | square)[None], RED[:, None, None], BLUE[:, None, None])
    return image, torch.stack([disc, square])


def _assert_aligned(image, masks, size):
    """Inside every mask the image is red, outside all masks (within the content) blue, but for resampled edges."""
    h, w = size
    red = (image[0, :h, :w].int() > image[2, :h, :w].int())
    covered = masks[:, :h, :w].any(0)
    assert (red == covered).float().mean() > 0.97


@pytest.mark.parametrize(
    "transform",
    [
        ResizeCrop([60, 90, 150], max_size=200, crop_size=(64, 80)),
        LargeScaleJitter((96, 96)),
        ResizeShortestEdge(90, 200),
    ],
    ids=["resize_crop", "lsj", "test"],
)
def test_masks_stay_aligned_with_the_image(transform):
    torch.manual_seed(0)
    for _ in range(20):
        image, masks = _scene()
        out_image, out_masks, size = transform(image, masks)
        assert out_image.dtype == torch.uint8 and out_masks.dtype == torch.bool
        assert out_image.shape[1:] == out_masks.shape[1:]
        _assert_aligned(out_image, out_masks, size)


def test_flip_mirrors_image_and_masks_alike():
    image, masks = _scene()
    flipped_image, flipped_masks = random_flip(image, masks, probability=1.0)
    assert torch.equal(flipped_image, image.flip(-1)) and torch.equal(flipped_masks, masks.flip(-1))
    assert flipped_masks[1, 80, 10:50].all()  # the square moved from the right edge to the left
    assert random_flip(image, masks, probability=0.0)[0] is image


def test_shortest_edge_resize_keeps_the_aspect_and_caps_the_longest_edge():
    assert shortest_edge_size(100, 200, 50, 1000) == (50, 100)
    assert shortest_edge_size(100, 200, 50, 80) == (40, 80)
    image, masks, size = ResizeShortestEdge(60, 1000)(*_scene())
    assert size == (60, 80) and image.shape[1:] == masks.shape[1:] == (60, 80)


def test_resize_crop_never_exceeds_the_crop_and_reports_the_content_size():
    torch.manual_seed(1)
    transform = ResizeCrop([40, 200], max_size=1000, crop_size=(64, 80))
    sizes = set()
    for _ in range(20):
        image, _, size = transform(*_scene())
        assert tuple(image.shape[1:]) == size and size[0] <= 64 and size[1] <= 80
        sizes.add(size)
    assert {(40, 53), (64, 80)} <= sizes  # a small choice stays whole, a large one is cropped


def test_large_scale_jitter_pads_to_the_crop_size_with_empty_masks():
    torch.manual_seed(2)
    transform = LargeScaleJitter((96, 128))
    scales = set()
    for _ in range(30):
        image, masks, (h, w) = transform(*_scene())
        assert image.shape == (3, 96, 128) and masks.shape == (2, 96, 128)
        assert (image[:, h:, :] == 0).all() and (image[:, :, w:] == 0).all()
        assert not masks[:, h:, :].any() and not masks[:, :, w:].any()
        scales.add(h < 96)
    assert scales == {True, False}  # both shrunk-and-padded and enlarged-and-cropped happen


class _OneImageReader:
    """A reader of one image file with a fixed annotation: two instances, one in a corner a crop can cut away."""

    def __init__(self, path: Path):
        self.label_map = LabelMap([{"id": 1, "name": "thing"}], contiguous_id=True)
        self.images = [ImageRecord(image_id=7, file_name=path.name, path=path)]

    def read_annotation(self, index, image_size):
        masks = np.zeros((2, *image_size), bool)
        masks[0, 10:90, 10:90] = True
        masks[1, :4, -4:] = True
        return Annotation(masks, np.array([0, 0]), np.zeros(2, bool), np.ones(2, bool), np.array([1, 2]), True)


def test_instances_that_the_crop_removes_are_dropped(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(path)
    dataset = SegmentationDataset(_OneImageReader(path), ResizeCrop([100], 100, crop_size=(50, 50)), "instance")
    torch.manual_seed(0)
    counts = {len(dataset[0]["labels"]) for _ in range(30)}
    assert counts == {1, 2}
    item = dataset[0]
    assert item["masks"].shape[0] == item["labels"].shape[0]
