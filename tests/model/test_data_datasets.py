"""The three dataset formats over one synthetic dataset: item contract, agreement across formats, archives,
and clear errors for broken data."""

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from model.data import DATASET_TYPES, MODES, build_dataset, write_synthetic_dataset
from model.data.label_map import IGNORE_LABEL
from model.errors import UserError

NUM_CLASSES = 6  # synthetic label map: things 1, 2, 3 and stuff 5, 6, 7 -> train ids 0..5


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), num_images=8, seed=3, archives=True)


def split_cfg(paths, dataset_type, archives=False, **overrides):
    """dataset.<split> as the spec gives it, for one split's paths of the synthetic dataset."""
    keys = {
        "type": dataset_type,
        "name": "",
        "panoptic_json": paths["panoptic_json"],
        "instance_json": paths["instance_json"],
        "img_dir": paths["images_archive"] if archives else paths["img_dir"],
        "panoptic_dir": paths["panoptic_archive"] if archives else paths["panoptic_dir"],
        "root_dir": paths["root_dir"],
        "annot_file": paths["annot_file"],
        "batch_size": 2,
        "num_workers": 0,
        "target_size": [],
    }
    return SimpleNamespace(**{**keys, **overrides})


def dataset_cfg(label_map, contiguous_id=True):
    """dataset as the spec gives it; test sizes of 128 keep the synthetic images at their size."""
    augmentation = SimpleNamespace(
        train_min_size=[96, 128], train_max_size=192, train_crop_size=[96, 112], test_min_size=128, test_max_size=128,
        lsj_min_scale=0.1, lsj_max_scale=2.0,
    )
    return SimpleNamespace(label_map=label_map, contiguous_id=contiguous_id, augmentation=augmentation)


def build(synthetic, dataset_type, mode="panoptic", is_train=False, split="val", archives=False, contiguous_id=True, cache_root=None):
    """The dataset of one synthetic split; archives are extracted beside the synthetic data unless cache_root is given."""
    cache_root = cache_root or str(Path(synthetic["label_map"]).parent / "cache")
    cfg = split_cfg(synthetic[split], dataset_type, archives)
    return build_dataset(cfg, dataset_cfg(synthetic["label_map"], contiguous_id), mode, is_train, cache_root)


@pytest.mark.parametrize("dataset_type", DATASET_TYPES)
@pytest.mark.parametrize("is_train", [True, False])
def test_every_format_yields_items_of_the_contract(synthetic, dataset_type, is_train):
    dataset = build(synthetic, dataset_type, "panoptic", is_train, split="train")
    assert len(dataset) == 6
    item = dataset[1]
    assert set(item) == {"image", "labels", "masks", "image_id", "file_name", "orig_size", "size", "index"}
    image, masks, labels = item["image"], item["masks"], item["labels"]
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    assert masks.dtype == torch.bool and masks.shape == (len(labels), *image.shape[1:])
    assert labels.dtype == torch.int64 and ((labels >= 0) & (labels < NUM_CLASSES)).all()
    assert masks.flatten(1).any(1).all()  # no empty target
    assert item["orig_size"] == (128, 128) and item["index"] == 1
    assert tuple(image.shape[1:]) == item["size"]
    if is_train:
        assert item["size"][0] <= 96 and item["size"][1] <= 112
    else:
        assert item["size"] == (128, 128)


def test_lsj_training_items_are_padded_to_the_crop_size(synthetic):
    cfg = split_cfg(synthetic["train"], "coco_panoptic")
    dataset = build_dataset(cfg, dataset_cfg(synthetic["label_map"]), "panoptic", True, "unused-cache", train_augmentation="lsj")
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["image"].shape == (3, 96, 112) and item["masks"].shape[1:] == (96, 112)
        assert item["size"][0] <= 96 and item["size"][1] <= 112


def test_the_same_image_has_the_same_ground_truth_in_every_format(synthetic):
    panoptic, coco, ade = (build(synthetic, t) for t in ("coco_panoptic", "coco", "ade"))
    assert [r.file_name for r in panoptic.reader.images] == [r.file_name for r in coco.reader.images]
    for index in range(len(panoptic)):
        from_panoptic, from_coco, from_ade = panoptic.ground_truth(index), coco.ground_truth(index), ade.ground_truth(index)
        np.testing.assert_array_equal(from_panoptic["semantic"], from_ade["semantic"])
        things = from_coco["semantic"] != IGNORE_LABEL  # instance data labels only things
        np.testing.assert_array_equal(from_coco["semantic"][things], from_panoptic["semantic"][things])
        for key in ("masks", "labels", "iscrowd"):
            np.testing.assert_array_equal(from_coco["instances"][key], from_panoptic["instances"][key])


def test_semantic_targets_agree_between_panoptic_and_ade_data(synthetic):
    panoptic, ade = build(synthetic, "coco_panoptic", "semantic"), build(synthetic, "ade", "semantic")
    for index in range(len(panoptic)):
        a, b = panoptic[index], ade[index]
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["masks"], b["masks"])


def test_crowd_regions_are_ignored_in_the_ground_truth_and_never_targets(synthetic):
    dataset = build(synthetic, "coco_panoptic", "panoptic", split="train")
    crowd_images = [i for i in range(len(dataset)) if any(s["iscrowd"] for s in dataset.ground_truth(i)["segments"])]
    assert crowd_images, "the synthetic data should hold crowd segments"
    for index in crowd_images:
        truth = dataset.ground_truth(index)
        crowd_ids = [s["id"] for s in truth["segments"] if s["iscrowd"]]
        crowd = np.isin(truth["panoptic"], crowd_ids)
        assert (truth["semantic"][crowd] == IGNORE_LABEL).all()
        targets = dataset[index]["masks"].any(0).numpy()  # test transform at 128: the original pixel grid
        assert not targets[crowd].any()
        assert targets[~crowd].all()  # every other pixel belongs to a target


def test_ground_truth_of_panoptic_data_matches_its_png(synthetic):
    dataset = build(synthetic, "coco_panoptic")
    truth = dataset.ground_truth(0)
    assert truth["semantic"].shape == (128, 128) and truth["semantic"].dtype == np.int64
    assert truth["panoptic"].dtype == np.int32
    png = np.array(Image.open(dataset.reader._segments[0].png)).astype(np.int64)
    np.testing.assert_array_equal(truth["panoptic"], png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2])
    assert {s["id"] for s in truth["segments"]} == set(np.unique(truth["panoptic"]).tolist())
    for segment in truth["segments"]:
        assert set(segment) == {"id", "category_id", "iscrowd", "isthing"}
        assert segment["isthing"] == (segment["category_id"] < 3)


@pytest.mark.parametrize("mode", MODES)
def test_the_mode_decides_the_targets(synthetic, mode):
    labels = torch.cat([item["labels"] for item in build(synthetic, "coco_panoptic", mode)])
    if mode == "instance":
        assert labels.max() < 3  # things only
    else:
        assert labels.max() >= 3
    if mode == "semantic":
        for item in build(synthetic, "coco_panoptic", mode):
            assert len(item["labels"].unique()) == len(item["labels"])


def test_raw_ids_are_the_labels_without_contiguous_ids(synthetic):
    labels = build(synthetic, "ade", "semantic", contiguous_id=False)[0]["labels"].tolist()
    assert set(labels) <= {1, 2, 3, 5, 6, 7} and set(labels) & {5, 6, 7}


@pytest.mark.parametrize("dataset_type", ["coco_panoptic", "coco"])
def test_archives_load_like_folders(synthetic, tmp_path, dataset_type):
    from_folders = build(synthetic, dataset_type, cache_root=str(tmp_path / "cache"))
    from_archives = build(synthetic, dataset_type, archives=True, cache_root=str(tmp_path / "cache"))
    assert from_archives.reader.images[0].path.is_relative_to(tmp_path / "cache")
    for index in range(len(from_folders)):
        a, b = from_folders[index], from_archives[index]
        for key in ("image", "labels", "masks"):
            assert torch.equal(a[key], b[key])


def test_ade_folder_layout_without_annot_file_matches_the_jsonl(synthetic):
    listed = build(synthetic, "ade")
    folders = build_dataset(
        split_cfg(synthetic["val"], "ade", annot_file=""), dataset_cfg(synthetic["label_map"]), "semantic", False, "unused-cache"
    )
    assert [r.path for r in folders.reader.images] == [r.path for r in listed.reader.images]
    np.testing.assert_array_equal(folders.ground_truth(0)["semantic"], listed.ground_truth(0)["semantic"])


def test_coco_polygons_are_rasterised(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "a.png")
    label_map = tmp_path / "label_map.json"
    label_map.write_text(json.dumps([{"id": 4, "name": "box", "isthing": 1}]))
    square = [10, 5, 20, 5, 20, 15, 10, 15]  # x, y corners of a 10x10 square
    (tmp_path / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": 30, "width": 40}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 4, "iscrowd": 0, "segmentation": [square, [1, 1, 2, 2]]}],
        "categories": [{"id": 4, "name": "box"}],
    }))
    cfg = SimpleNamespace(type="coco", img_dir=str(tmp_path / "images"), instance_json=str(tmp_path / "instances.json"))
    truth = build_dataset(cfg, dataset_cfg(str(label_map)), "instance", False, str(tmp_path)).ground_truth(0)
    mask = truth["instances"]["masks"][0]
    rows, cols = np.nonzero(mask)
    assert mask.shape == (30, 40) and truth["instances"]["labels"].tolist() == [0]
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 14, 10, 19)


# ------------------------------------------------------------------------------------------------
# Broken data: each case damages a fresh copy of the synthetic validation split.
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def copy(synthetic, tmp_path):
    """A writable copy of the validation split; returns its paths and the label map."""
    root = tmp_path / "val"
    shutil.copytree(synthetic["val"]["root_dir"], root)
    paths = {k: str(v).replace(synthetic["val"]["root_dir"], str(root)) for k, v in synthetic["val"].items()}
    return paths, synthetic["label_map"]


def _edit_json(path, edit):
    with open(path) as f:
        content = json.load(f)
    edit(content)
    with open(path, "w") as f:
        json.dump(content, f)


def _build(copy, dataset_type, **overrides):
    paths, label_map = copy
    return build_dataset(split_cfg(paths, dataset_type, **overrides), dataset_cfg(label_map), "panoptic", False, "unused-cache")


@pytest.mark.parametrize("dataset_type", DATASET_TYPES)
def test_a_missing_image_is_reported_when_the_dataset_is_built(copy, dataset_type):
    os.remove(copy[0]["img_dir"] + "/000008.png")
    with pytest.raises(UserError, match=r"000008\.png not found"):
        _build(copy, dataset_type)


@pytest.mark.parametrize("dataset_type, key", [("coco_panoptic", "panoptic_json"), ("coco", "instance_json")])
def test_unparseable_json_names_the_file(copy, dataset_type, key):
    with open(copy[0][key], "a") as f:
        f.write("}garbage")
    with pytest.raises(UserError, match="not valid JSON") as error:
        _build(copy, dataset_type)
    assert copy[0][key] in str(error.value)


def test_unparseable_jsonl_names_the_file_and_line(copy):
    with open(copy[0]["root_dir"] + "/annotations_ade.jsonl", "a") as f:
        f.write("{\"img\": \n")
    with pytest.raises(UserError, match=r"annotations_ade\.jsonl, line 3: not valid JSON"):
        _build(copy, "ade")


def test_a_segment_missing_from_its_png_is_reported_when_loaded(copy):
    _edit_json(copy[0]["panoptic_json"], lambda c: c["annotations"][0]["segments_info"].append({"id": 999, "category_id": 1, "iscrowd": 0}))
    dataset = _build(copy, "coco_panoptic")
    dataset[1]  # other images are fine
    with pytest.raises(UserError, match=r"000007\.png: segments_info lists segment ids \[999\] that the PNG does not contain"):
        dataset[0]


@pytest.mark.parametrize("dataset_type, key", [("coco_panoptic", "panoptic_json"), ("coco", "instance_json")])
def test_a_category_not_in_the_label_map_names_the_file_and_the_id(copy, dataset_type, key):
    def set_category_4(content):
        first = content["annotations"][0]
        (first["segments_info"][0] if dataset_type == "coco_panoptic" else first)["category_id"] = 4

    _edit_json(copy[0][key], set_category_4)
    with pytest.raises(UserError, match=r"category ids \[4\] are not in the label map") as error:
        _build(copy, dataset_type)
    assert copy[0][key] in str(error.value)


def test_a_mask_value_not_in_the_label_map_names_the_mask(copy):
    mask_path = copy[0]["root_dir"] + "/masks/000007.png"
    mask = np.array(Image.open(mask_path))
    mask[:4, :4] = 4
    Image.fromarray(mask).save(mask_path)
    with pytest.raises(UserError, match=r"masks/000007\.png: category ids \[4\] are not in the label map"):
        _build(copy, "ade")[0]


@pytest.mark.parametrize("dataset_type, folder", [("coco_panoptic", "panoptic"), ("ade", "masks")])
def test_a_label_png_of_another_size_than_its_image_is_reported(copy, dataset_type, folder):
    path = f"{copy[0]['root_dir']}/{folder}/000007.png"
    Image.open(path).resize((64, 128), Image.NEAREST).save(path)
    dataset = _build(copy, dataset_type)
    with pytest.raises(UserError, match=r"000007\.png: .* is 128x64 \(HxW\) but its image .* is 128x128"):
        dataset[0]
    with pytest.raises(UserError, match="expected the same size"):
        dataset.ground_truth(0)


def test_an_image_of_another_size_than_the_instance_json_declares_is_reported(copy):
    Image.new("RGB", (100, 128)).save(copy[0]["img_dir"] + "/000007.png")
    with pytest.raises(UserError, match=r"000007\.png is 128x100 \(HxW\) but the instance JSON declares height 128, width 128"):
        _build(copy, "coco")[0]


def test_a_corrupt_image_file_is_reported_when_loaded(copy):
    with open(copy[0]["img_dir"] + "/000007.png", "wb") as f:
        f.write(b"\x89PNG garbage")
    with pytest.raises(UserError, match=r"000007\.png: not a readable image"):
        _build(copy, "coco_panoptic")[0]


@pytest.mark.parametrize("dataset_type", DATASET_TYPES)
def test_an_empty_dataset_is_refused(copy, dataset_type):
    _edit_json(copy[0]["panoptic_json"], lambda c: c.update(images=[], annotations=[]))
    _edit_json(copy[0]["instance_json"], lambda c: c.update(images=[], annotations=[]))
    with open(copy[0]["root_dir"] + "/annotations_ade.jsonl", "w") as f:
        f.write("\n")
    with pytest.raises(UserError, match="at least one"):
        _build(copy, dataset_type)


def test_config_mistakes_name_the_key(copy):
    with pytest.raises(UserError, match=r"dataset\.val\.type is 'voc'; expected one of"):
        _build(copy, "voc")
    with pytest.raises(UserError, match=r"dataset\.val\.panoptic_json is empty"):
        _build(copy, "coco_panoptic", panoptic_json="")
    with pytest.raises(UserError, match=r"dataset\.augmentation\.train_augmentation is 'mosaic'"):
        paths, label_map = copy
        build_dataset(split_cfg(paths, "ade"), dataset_cfg(label_map), "panoptic", True, "unused-cache", train_augmentation="mosaic")
