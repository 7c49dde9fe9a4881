"""`automl inference` on a tiny untrained network over synthetic images: the files it writes, their agreement
with each other and with the COCO formats, archives, and clear errors."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from pycocotools import mask as mask_utils

from automl.actions.evaluate import evaluate_predictions
from automl.actions.inference import OVERLAY_MIN_SIDE, PredictionWriter, distinct_colours, draw_overlay, run_inference, segment_boxes
from automl.spec.load import load_spec
from automl.training import build_label_map, build_module
from model.data import LabelMap, collate, write_synthetic_dataset
from model.data.files import read_label_png
from model.data.image_folder import ImageFolderDataset
from model.data.transforms import ResizeShortestEdge
from model.errors import UserError
from model.metrics.panoptic import rgb_to_id

IMAGE_SIZE = (64, 80)  # (H0, W0) of the synthetic images; inference resizes them to 32 x 40
LABEL_MAP_IDS = [1, 2, 3, 5, 6, 7]  # with dataset.contiguous_id: train ids 0..5
THING_IDS = {1, 2, 3}
TINY_MODEL = [  # a tiny Swin network
    "model.backbone.swin.type=custom", "model.backbone.swin.embed_dim=32", "model.backbone.swin.depths=[1,1,1,1]",
    "model.backbone.swin.num_heads=[1,2,2,4]", "model.backbone.swin.window_size=4", "model.sem_seg_head.num_classes=6",
    "model.sem_seg_head.transformer_enc_layers=1", "model.sem_seg_head.convs_dim=32", "model.sem_seg_head.mask_dim=16",
    "model.mask_former.nheads=4", "model.mask_former.hidden_dim=64", "model.mask_former.dim_feedforward=64",
    "model.mask_former.dec_layers=2", "model.mask_former.num_object_queries=8",
]
# An untrained network is never confident: keep every query so that segments appear.
KEEP_ALL_QUERIES = ["model.object_mask_threshold=0.0", "model.overlap_threshold=0.0"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), num_images=6, size=IMAGE_SIZE, val_fraction=0.5, archives=True)


def make_spec(synthetic, results_dir, *overrides):
    """A spec with the synthetic data (val split as the test images too) and small test sizes; no model section."""
    val = synthetic["val"]
    return load_spec(None, [
        f"results_dir={results_dir}", f"dataset.label_map={synthetic['label_map']}",
        "dataset.contiguous_id=true", "dataset.augmentation.test_min_size=32", "dataset.augmentation.test_max_size=64",
        "dataset.val.type=coco_panoptic", f"dataset.val.img_dir={val['img_dir']}", f"dataset.val.panoptic_dir={val['panoptic_dir']}",
        f"dataset.val.panoptic_json={val['panoptic_json']}", f"dataset.val.instance_json={val['instance_json']}",
        "dataset.val.num_workers=0", f"dataset.test.img_dir={val['img_dir']}", "dataset.test.batch_size=2", "dataset.test.num_workers=0",
        *overrides,
    ])


def save_checkpoint(spec, path, class_bias=None):
    """A checkpoint saved as training saves it (Lightning's 'model.'-prefixed state dict and the resolved spec),
    of an untrained network whose class logits get `class_bias` (K+1,) added."""
    torch.manual_seed(0)
    module = build_module(spec, build_label_map(spec))
    if class_bias is not None:
        with torch.no_grad():
            module.model.transformer_decoder.class_embed.bias += class_bias
    torch.save({"state_dict": module.state_dict(), "spec": OmegaConf.to_container(spec, resolve=True)}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(synthetic, tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint")
    return save_checkpoint(make_spec(synthetic, folder, *TINY_MODEL), folder / "model.pth")


@pytest.fixture(scope="module")
def panoptic_run(synthetic, checkpoint, tmp_path_factory):
    """Panoptic inference with a spec that has no model section: the architecture comes from the checkpoint."""
    spec = make_spec(synthetic, tmp_path_factory.mktemp("run"), *KEEP_ALL_QUERIES)
    return spec, run_inference(spec, str(checkpoint))


def image_stems(synthetic):
    return sorted(p.stem for p in Path(synthetic["val"]["img_dir"]).iterdir())


def test_every_panoptic_png_holds_exactly_the_segments_of_panoptic_json(synthetic, panoptic_run):
    _, out = panoptic_run
    predictions = json.loads((out / "panoptic.json").read_text())
    annotations = {a["file_name"]: a for a in predictions["annotations"]}
    assert sorted(annotations) == [f"{stem}.png" for stem in image_stems(synthetic)]
    assert [c["id"] for c in predictions["categories"]] == LABEL_MAP_IDS
    assert sum(len(a["segments_info"]) for a in annotations.values()) > 0
    for file_name, annotation in annotations.items():
        assert annotation["image_id"] == int(Path(file_name).stem)  # digit names give COCO's integer ids
        ids = rgb_to_id(np.array(Image.open(out / "panoptic" / file_name)))
        assert ids.shape == IMAGE_SIZE
        segments = annotation["segments_info"]
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in segments}
        for segment in segments:
            mask = ids == segment["id"]
            assert segment["category_id"] in LABEL_MAP_IDS and segment["isthing"] == (segment["category_id"] in THING_IDS)
            assert segment["area"] == mask.sum() and 0 <= segment["score"] <= 1
            ys, xs = np.nonzero(mask)
            assert segment["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_semantic_pngs_hold_only_label_map_ids(synthetic, panoptic_run):
    _, out = panoptic_run
    for stem in image_stems(synthetic):
        semantic = np.array(Image.open(out / "semantic" / f"{stem}.png"))
        assert semantic.shape == IMAGE_SIZE and semantic.dtype == np.uint8
        assert set(np.unique(semantic).tolist()) <= set(LABEL_MAP_IDS)


def test_instances_json_decodes_to_masks_of_the_original_size(synthetic, panoptic_run):
    _, out = panoptic_run
    results = json.loads((out / "instances.json").read_text())
    assert results, "an untrained network still returns its top-k instances"
    image_ids = {int(stem) for stem in image_stems(synthetic)}
    for result in results:
        mask = mask_utils.decode(result["segmentation"])
        assert mask.shape == IMAGE_SIZE
        assert result["image_id"] in image_ids and result["category_id"] in THING_IDS  # things only in panoptic mode
        assert result["bbox"] == mask_utils.toBbox(result["segmentation"]).tolist() and 0 <= result["score"] <= 1


def test_overlays_show_the_image_upscaled_to_a_readable_size_with_a_legend(synthetic, panoptic_run):
    _, out = panoptic_run
    scale = math.ceil(OVERLAY_MIN_SIDE / min(IMAGE_SIZE))  # 64 x 80 images are drawn 8 times larger
    for stem in image_stems(synthetic):
        with Image.open(out / "overlays" / f"{stem}.jpg") as overlay:
            width, height = overlay.size
            assert height == IMAGE_SIZE[0] * scale and width > IMAGE_SIZE[1] * scale  # the legend is a panel on the right
            legend = np.asarray(overlay)[:, IMAGE_SIZE[1] * scale + 4 :]
            assert (legend > 200).mean() > 0.5  # a white panel with swatches and names


def test_overlay_gives_each_instance_its_own_colour_an_outline_and_a_label():
    image = np.full((40, 60, 3), 128, np.uint8)
    regions = np.full((40, 60), -1)
    regions[5:20, 5:25], regions[20:35, 30:55] = 0, 1  # two instances of one class
    colours = distinct_colours(2)
    drawn = draw_overlay(image, regions, colours, ["cat 0.91", "cat 0.75"])
    scale = math.ceil(OVERLAY_MIN_SIDE / 40)
    assert drawn.shape[0] == 40 * scale
    inside = [drawn[(5 + 2) * scale, (5 + 2) * scale], drawn[(20 + 2) * scale, (30 + 2) * scale]]
    assert np.abs(inside[0].astype(int) - inside[1].astype(int)).sum() > 60  # visibly different colours
    edge = drawn[12 * scale, 25 * scale - 1]  # on the right border of the first instance: its darker outline
    assert np.abs(edge.astype(int) - (colours[0] * 0.6).astype(int)).max() <= 2
    assert (drawn[:, : 60 * scale] == 255).all(-1).sum() > 0  # white label text was drawn on the image


def test_written_predictions_score_through_evaluate(synthetic, panoptic_run):
    _, out = panoptic_run
    spec = make_spec(synthetic, out.parent, "model.sem_seg_head.num_classes=6")  # semantic scores need the class count
    assert 0 <= evaluate_predictions(spec, out / "panoptic.json")["PQ"] <= 100
    assert "mIoU" in evaluate_predictions(spec, out / "semantic")
    assert "AP" in evaluate_predictions(spec, out / "instances.json")


def test_semantic_png_is_the_checkpoint_networks_prediction(synthetic, checkpoint, panoptic_run):
    spec, out = panoptic_run
    trained_spec = make_spec(synthetic, spec.results_dir, *TINY_MODEL)
    module = build_module(trained_spec, build_label_map(trained_spec)).eval()
    module.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    dataset = ImageFolderDataset(synthetic["val"]["img_dir"], ResizeShortestEdge(32, 64))
    batch = collate([dataset[0]])
    with torch.no_grad():
        outputs = module(batch["images"])
    prediction = module.postprocess(outputs["pred_logits"][0], outputs["pred_masks"][0], batch["image_sizes"][0], batch["orig_sizes"][0])
    expected = np.array(LABEL_MAP_IDS)[prediction["sem_seg"].argmax(0).numpy()]
    written = np.array(Image.open(out / "semantic" / Path(dataset.file_names[0]).with_suffix(".png")))
    np.testing.assert_array_equal(written, expected)


@pytest.mark.parametrize("mode", ["instance", "semantic"])
def test_other_modes_write_their_files_only(synthetic, checkpoint, tmp_path, mode):
    out = run_inference(make_spec(synthetic, tmp_path, f"model.mode={mode}"), str(checkpoint), batch_size=3)
    assert out == tmp_path / "inference"
    assert not (out / "panoptic.json").exists()
    assert (out / "instances.json").exists() == (mode == "instance")
    stems = image_stems(synthetic)
    assert sorted(p.stem for p in (out / "semantic").iterdir()) == stems
    assert sorted(p.stem for p in (out / "overlays").iterdir()) == stems
    if mode == "instance":
        categories = {r["category_id"] for r in json.loads((out / "instances.json").read_text())}
        assert categories and categories <= set(LABEL_MAP_IDS)


def test_images_without_detection_still_get_every_file(synthetic, checkpoint, tmp_path):
    out_dir = tmp_path / "elsewhere"
    spec = make_spec(synthetic, tmp_path, "model.object_mask_threshold=1.0", f"inference.results_dir={out_dir}")
    assert run_inference(spec, str(checkpoint)) == out_dir
    annotations = json.loads((out_dir / "panoptic.json").read_text())["annotations"]
    assert len(annotations) == len(image_stems(synthetic)) and all(a["segments_info"] == [] for a in annotations)
    for stem in image_stems(synthetic):
        assert not np.array(Image.open(out_dir / "panoptic" / f"{stem}.png")).any()
        assert (out_dir / "semantic" / f"{stem}.png").exists() and (out_dir / "overlays" / f"{stem}.jpg").exists()


def test_classes_without_a_category_are_never_written(synthetic, tmp_path):
    # Without contiguous ids the label map's ids are the class indices: 0 and 4 have no category.
    data = ["dataset.contiguous_id=false", "model.sem_seg_head.num_classes=8"]
    spec = make_spec(synthetic, tmp_path, *TINY_MODEL, *data, *KEEP_ALL_QUERIES)
    favour_class_0 = torch.zeros(9)
    favour_class_0[0] = 10.0
    checkpoint = str(save_checkpoint(spec, tmp_path / "model.pth", favour_class_0))
    out = run_inference(spec, checkpoint)
    assert all(a["segments_info"] == [] for a in json.loads((out / "panoptic.json").read_text())["annotations"])
    for stem in image_stems(synthetic):
        assert not np.array(Image.open(out / "panoptic" / f"{stem}.png")).any()
        assert set(np.unique(np.array(Image.open(out / "semantic" / f"{stem}.png"))).tolist()) <= set(LABEL_MAP_IDS)
    out = run_inference(make_spec(synthetic, tmp_path / "instance", *data, "model.mode=instance"), checkpoint)
    categories = {r["category_id"] for r in json.loads((out / "instances.json").read_text())}
    assert categories and categories <= set(LABEL_MAP_IDS)


def test_an_archive_of_images_works_like_the_folder(synthetic, checkpoint, panoptic_run, tmp_path):
    _, folder_out = panoptic_run
    spec = make_spec(synthetic, tmp_path, *KEEP_ALL_QUERIES, f"dataset.test.img_dir={synthetic['val']['images_archive']}")
    out = run_inference(spec, str(checkpoint))
    assert json.loads((out / "panoptic.json").read_text()) == json.loads((folder_out / "panoptic.json").read_text())
    for stem in image_stems(synthetic):
        assert (out / "semantic" / f"{stem}.png").read_bytes() == (folder_out / "semantic" / f"{stem}.png").read_bytes()


def test_an_empty_image_folder_is_a_user_error_naming_it(synthetic, checkpoint, tmp_path):
    empty = tmp_path / "no_images"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match=re.escape(f"{empty}: no image found")):
        run_inference(make_spec(synthetic, tmp_path, f"dataset.test.img_dir={empty}"), str(checkpoint))


def test_a_missing_checkpoint_is_a_user_error_naming_it(synthetic, tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(UserError, match=re.escape(f"{missing} does not exist")):
        run_inference(make_spec(synthetic, tmp_path), str(missing))


def test_image_folder_takes_images_of_sub_folders_sorted_and_skips_hidden_files(tmp_path):
    pixels = Image.fromarray(np.zeros((4, 6, 3), np.uint8))
    for name in ("b/2.JPG", "a.png", "10.webp", ".hidden/c.png", "._a.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        pixels.save(tmp_path / name, format="PNG" if name.endswith("png") else "JPEG" if name.lower().endswith("jpg") else "WEBP")
    (tmp_path / "labels.json").write_text("{}")
    dataset = ImageFolderDataset(tmp_path, ResizeShortestEdge(8, 12))
    assert dataset.file_names == ["10.webp", "a.png", "b/2.JPG"]
    assert dataset.image_ids == [10, "a", "b/2"]
    item = dataset[2]
    assert item["image"].shape == (3, 8, 12) and item["image"].dtype == torch.uint8
    assert item["orig_size"] == (4, 6) and item["size"] == (8, 12)
    assert item["masks"].shape == (0, 8, 12) and item["labels"].shape == (0,)


def test_two_images_that_would_share_output_files_are_refused(tmp_path):
    for name in ("a.png", "a.jpg"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / name)
    with pytest.raises(UserError, match="a.jpg and a.png would share the image id 'a'"):
        ImageFolderDataset(tmp_path, ResizeShortestEdge(4, 4))


def test_semantic_pngs_are_uint16_when_an_id_exceeds_255(tmp_path):
    label_map = LabelMap([{"id": 1, "name": "low"}, {"id": 300, "name": "high"}], contiguous_id=True)
    writer = PredictionWriter(tmp_path, label_map, "semantic", num_classes=2)
    sem_seg = torch.zeros(2, 3, 4)
    sem_seg[1, :, 2:] = 1.0
    writer.add(np.zeros((3, 4, 3), np.uint8), "sub/x.jpg", "sub/x", {"sem_seg": sem_seg})
    semantic = read_label_png(tmp_path / "semantic" / "sub" / "x.png", expect_rgb=False)
    assert semantic.tolist() == [[1, 1, 300, 300]] * 3
    assert (tmp_path / "overlays" / "sub" / "x.jpg").exists()


def test_segment_boxes_are_coco_boxes_of_each_id():
    ids = np.zeros((5, 6), np.int32)
    ids[1:3, 2:5] = 1
    ids[4, 0] = 3
    boxes = segment_boxes(ids, 4)
    assert boxes.tolist() == [[0, 0, 6, 5], [2, 1, 3, 2], [0, 0, 0, 0], [0, 4, 1, 1]]
