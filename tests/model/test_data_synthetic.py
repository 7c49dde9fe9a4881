"""The synthetic dataset: fast, reproducible to the byte, non-trivial, and readable in all three formats;
`check_dataset` counts its classes."""

import json
import time
from pathlib import Path

import numpy as np
import pytest

from model.data import LabelMap, build_dataset, build_transform, check_dataset, write_synthetic_dataset
from model.data.synthetic import CATEGORIES
from model.errors import UserError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_same_seed_writes_byte_identical_files_quickly(tmp_path):
    start = time.perf_counter()
    write_synthetic_dataset(tmp_path / "a", seed=4, archives=True)
    elapsed = time.perf_counter() - start
    write_synthetic_dataset(tmp_path / "b", seed=4, archives=True)
    write_synthetic_dataset(tmp_path / "c", seed=5, archives=True)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys() and a["train/images/000001.png"] != c["train/images/000001.png"]
    assert elapsed < 5.0, f"24 images of 128x128 took {elapsed:.2f} s"


def test_the_splits_and_paths_follow_the_arguments(tmp_path):
    paths = write_synthetic_dataset(tmp_path, num_images=10, size=(64, 96), val_fraction=0.3, archives=True)
    assert json.loads(Path(paths["label_map"]).read_text()) == CATEGORIES
    assert len(list(Path(paths["train"]["img_dir"]).iterdir())) == 7
    assert len(list(Path(paths["val"]["img_dir"]).iterdir())) == 3
    assert Path(paths["val"]["images_archive"]).name == "images.tar.gz"
    assert Path(paths["val"]["panoptic_archive"]).name == "images_panoptic.tar.gz"
    assert (Path(paths["val"]["root_dir"]) / paths["val"]["annot_file"]).is_file()
    instances = json.loads(Path(paths["train"]["instance_json"]).read_text())
    assert instances["images"][0] == {"id": 1, "file_name": "000001.png", "height": 64, "width": 96}
    assert "val" not in write_synthetic_dataset(tmp_path / "no_val", num_images=3, val_fraction=0.0)


@pytest.mark.parametrize("arguments", [{"val_fraction": 1.0}, {"num_images": 1}, {"size": (8, 8)}])
def test_impossible_arguments_are_user_errors(tmp_path, arguments):
    with pytest.raises(UserError):
        write_synthetic_dataset(tmp_path, **arguments)


def _dataset(paths, dataset_type):
    split = paths["train"]
    files = {key: split[key] for key in ("img_dir", "panoptic_dir", "panoptic_json", "instance_json", "root_dir", "annot_file")}
    label_map = LabelMap.from_file(paths["label_map"], contiguous_id=True)
    transform = build_transform(False, test_min_size=128, test_max_size=128)
    return build_dataset(dataset_type, task="panoptic", label_map=label_map, transform=transform, cache_root="unused-cache", **files)


def _touching_pairs(masks):
    """How many pairs of the disjoint masks (N, H, W) share a border: for drawn shapes, one lies on the other."""
    grown = masks.copy()
    grown[:, 1:] |= masks[:, :-1]
    grown[:, :-1] |= masks[:, 1:]
    grown[:, :, 1:] |= masks[:, :, :-1]
    grown[:, :, :-1] |= masks[:, :, 1:]
    contact = (grown[:, None] & masks[None]).any((2, 3))
    np.fill_diagonal(contact, False)
    return int(contact.sum()) // 2


def test_scenes_have_several_occluding_things_over_several_stuff_regions_and_some_crowd(tmp_path):
    dataset = _dataset(write_synthetic_dataset(tmp_path, seed=0), "coco_panoptic")
    things_per_image, stuff_per_image, crowd, occlusions = [], [], 0, 0
    for index in range(len(dataset)):
        truth = dataset.ground_truth(index)
        segments = truth["segments"]
        things_per_image.append(sum(s["isthing"] for s in segments))
        stuff_per_image.append(sum(not s["isthing"] for s in segments))
        crowd += sum(s["iscrowd"] for s in segments)
        occlusions += _touching_pairs(truth["instances"]["masks"])
    assert min(things_per_image) >= 2 and np.mean(things_per_image) >= 3.5
    assert min(stuff_per_image) >= 1 and max(stuff_per_image) == 3
    assert crowd >= 2 and occlusions >= 5


def test_check_dataset_counts_images_and_instances_per_class_alike_in_every_format(tmp_path):
    paths = write_synthetic_dataset(tmp_path, num_images=12, seed=1)
    panoptic, coco, ade = (check_dataset(_dataset(paths, t)) for t in ("coco_panoptic", "coco", "ade"))
    assert panoptic["images"] == coco["images"] == ade["images"] == 9
    names = [c["name"] for c in panoptic["classes"]]
    assert names == ["circle", "square", "triangle", "sky", "grass", "wall"]
    for from_panoptic, from_coco, from_ade in zip(panoptic["classes"], coco["classes"], ade["classes"]):
        if from_panoptic["isthing"]:
            assert from_panoptic == from_coco
            assert from_panoptic["instances"] > 0
        else:
            assert from_coco["images"] == 0
            assert from_ade["images"] == from_panoptic["images"] == from_panoptic["instances"]
