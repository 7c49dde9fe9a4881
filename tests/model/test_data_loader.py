"""Batches: padding to multiples of 32, the batch contract, and loaders that keep every validation image."""

from pathlib import Path

import pytest
import torch

from model.data import LabelMap, SegmentationDataset, build_dataloader, collate, write_synthetic_dataset
from model.data.coco_panoptic import CocoPanopticReader
from model.data.transforms import ResizeCrop, ResizeShortestEdge


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    paths = write_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), num_images=6, val_fraction=0.0, seed=5)
    split = paths["train"]
    label_map = LabelMap.from_file(paths["label_map"], contiguous_id=True)
    return CocoPanopticReader(Path(split["img_dir"]), Path(split["panoptic_json"]), Path(split["panoptic_dir"]), label_map)


def _item(height, width, num_masks, index):
    return {
        "image": torch.full((3, height, width), 7, dtype=torch.uint8),
        "labels": torch.arange(num_masks),
        "masks": torch.ones(num_masks, height, width, dtype=torch.bool),
        "image_id": 100 + index,
        "file_name": f"{index}.png",
        "orig_size": (2 * height, 2 * width),
        "size": (height, width),
        "index": index,
    }


def test_collate_pads_images_and_masks_bottom_right_to_multiples_of_32():
    batch = collate([_item(100, 70, 2, 0), _item(50, 90, 3, 1)])
    assert batch["images"].shape == (2, 3, 128, 96) and batch["images"].dtype == torch.uint8
    assert (batch["images"][0, :, :100, :70] == 7).all() and batch["images"][0, :, 100:].eq(0).all()
    assert batch["images"][1, :, :, 90:].eq(0).all()
    first, second = batch["targets"]
    assert first["masks"].shape == (2, 128, 96) and second["masks"].shape == (3, 128, 96)
    assert first["masks"][:, :100, :70].all() and not first["masks"][:, 100:].any() and not first["masks"][:, :, 70:].any()
    assert second["labels"].tolist() == [0, 1, 2]
    assert batch["image_sizes"] == [(100, 70), (50, 90)]
    assert batch["orig_sizes"] == [(200, 140), (100, 180)]
    assert batch["image_ids"] == [100, 101] and batch["file_names"] == ["0.png", "1.png"] and batch["indices"] == [0, 1]


def test_an_image_already_a_multiple_of_32_is_not_padded():
    assert collate([_item(64, 96, 1, 0)])["images"].shape == (1, 3, 64, 96)


def test_a_validation_loader_keeps_the_last_partial_batch(reader):
    dataset = SegmentationDataset(reader, ResizeShortestEdge(100, 100), "panoptic")
    batches = list(build_dataloader(dataset, batch_size=4, num_workers=0, shuffle=False))
    assert [len(b["indices"]) for b in batches] == [4, 2]
    assert sum((b["indices"] for b in batches), []) == list(range(6))
    assert batches[0]["images"].shape == (4, 3, 128, 128)
    assert batches[0]["image_sizes"] == [(100, 100)] * 4


def test_training_may_drop_the_last_partial_batch_and_shuffles_by_seed(reader):
    dataset = SegmentationDataset(reader, ResizeCrop([64, 96], 128, (64, 64)), "panoptic")

    def order(seed):
        return [b["indices"] for b in build_dataloader(dataset, 4, 0, shuffle=True, drop_last=True, seed=seed)]

    assert len(order(0)) == 1
    assert order(0) == order(0)
    assert {tuple(order(seed)[0]) for seed in range(5)} != {tuple(order(0)[0])}


def test_workers_decode_and_augment_with_reproducible_draws(reader):
    dataset = SegmentationDataset(reader, ResizeCrop([64, 96, 128], 128, (128, 128)), "panoptic")

    def sizes():
        return [b["image_sizes"] for b in build_dataloader(dataset, 3, num_workers=2, shuffle=False, seed=11)]

    first = sizes()
    assert len(first) == 2 and first == sizes()
    assert len(set(sum(first, []))) > 1  # the draws differ from image to image
