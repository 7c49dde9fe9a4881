"""`automl inference`: run a checkpoint or a deployed model on every image of dataset.test.img_dir and write its predictions as files.

Under `<inference.results_dir or results_dir/inference>` (<name>: the image's path relative to img_dir,
see `model.data.image_folder`, with its suffix replaced):
    panoptic.json + panoptic/<name>.png  panoptic mode: COCO panoptic predictions, as the COCO panoptic API
                                         and `automl evaluate --predictions` take them (PNG id = R + 256 G + 256^2 B)
    instances.json                       instance and panoptic modes: COCO results list (RLE masks, every
                                         instance the model returns, things only in panoptic mode)
    semantic/<name>.png                  every mode: the label-map category id of each pixel (uint8, uint16 when
                                         an id exceeds 255)
    overlays/<name>.jpg                  every mode: the image at its original size (upscaled when its shortest side
                                         is under OVERLAY_MIN_SIDE), each panoptic segment / instance scoring >=
                                         OVERLAY_MIN_SCORE / class in a colour of its own with its outline and its
                                         class name (and score, for things), and a legend on the right
Category ids in every file are the label map's (raw) ids. A class index no label-map category has (possible
with dataset.contiguous_id false) is never written: the semantic map takes the best class that has a
category, and segments or instances of such a class are dropped (their pixels become void).
"""

from __future__ import annotations

import colorsys
import json
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_utils
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress

from automl.actions.evaluate import resolve_checkpoint, spec_for_checkpoint
from automl.actions.predictors import check_task, is_deployed, load_predictor, predict_dataset
from automl.actions.quantize import prepare_for_checkpoint
from automl.spec.model_args import data_cache_dir, spec_keys_in_errors
from automl.training import build_label_map, build_module
from model.checkpoint import load_weights, read_checkpoint
from model.cuda_graph import GraphedInference
from model.data import LabelMap, build_dataloader, resolve_dir
from model.data.image_folder import ImageFolderDataset
from model.data.transforms import ResizeShortestEdge
from model.lit import Mask2FormerModule
from model.metrics.instance import encode_rle
from model.metrics.panoptic import id_to_rgb

console = Console()
OVERLAY_MIN_SCORE = 0.5  # instances drawn in the overlays (instances.json keeps every one)
OVERLAY_MIN_SIDE = 512  # overlays of smaller images are upscaled so that their labels stay readable


def inference_dir(spec: DictConfig) -> Path:
    """Where inference writes: inference.results_dir, else <results_dir>/inference."""
    return Path(spec.inference.results_dir or Path(spec.results_dir) / "inference")


def segment_boxes(ids: np.ndarray, count: int) -> np.ndarray:
    """COCO boxes [x, y, w, h] (count, 4) int64 of the ids 0..count-1 in an id map (H, W); zeros for an absent id."""
    height, width = ids.shape
    ids = ids.astype(np.int64)
    rows = np.bincount((np.arange(height)[:, None] * count + ids).ravel(), minlength=height * count).reshape(height, count) > 0
    cols = np.bincount((np.arange(width)[None, :] * count + ids).ravel(), minlength=width * count).reshape(width, count) > 0
    y0, y1 = rows.argmax(0), height - 1 - rows[::-1].argmax(0)
    x0, x1 = cols.argmax(0), width - 1 - cols[::-1].argmax(0)
    boxes = np.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], 1)
    return np.where(rows.any(0)[:, None], boxes, 0)


def distinct_colours(count: int) -> np.ndarray:
    """(count, 3) uint8 saturated colours whose hues step by the golden angle, so neighbours never look alike."""
    hues = (np.arange(count) * 0.618033988749895 + 0.1) % 1.0
    return (np.array([colorsys.hsv_to_rgb(h, 0.85, 0.95) for h in hues], np.float64).reshape(count, 3) * 255).astype(np.uint8)


def draw_overlay(image: np.ndarray, regions: np.ndarray, colours: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """The image (H, W, 3) uint8 with each region painted, outlined and labelled, and a legend panel on the right.

    regions (H, W): the index of the region on each pixel, -1 for none; colours (R, 3) uint8 and labels (R,)
    per region. Images whose shortest side is under OVERLAY_MIN_SIDE are upscaled by a whole factor first.
    """
    scale = max(1, math.ceil(OVERLAY_MIN_SIDE / min(image.shape[:2])))
    if scale > 1:
        image = np.asarray(Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.BILINEAR))
        regions = regions.repeat(scale, 0).repeat(scale, 1)
    colours = np.asarray(colours, np.float64).reshape(-1, 3)
    painted = regions >= 0
    canvas = image.astype(np.float64)
    canvas[painted] = 0.45 * canvas[painted] + 0.55 * colours[regions[painted]]
    edge = np.zeros_like(painted)  # pixels whose right or lower neighbour is another region
    edge[:, :-1] |= regions[:, :-1] != regions[:, 1:]
    edge[:-1, :] |= regions[:-1, :] != regions[1:, :]
    edge[:, 1:] |= edge[:, :-1].copy()  # two pixels wide
    outline = edge & painted
    canvas[outline] = colours[regions[outline]] * 0.6  # a darker shade of the region's colour
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(12, min(picture.size) // 32))
    present = np.unique(regions[painted]).tolist()
    for region in present:
        ys, xs = np.nonzero(regions == region)
        nearest = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)  # a pixel of the region near its centre
        box = draw.textbbox((int(xs[nearest]), int(ys[nearest])), labels[region], font=font, anchor="mm")
        draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
        draw.text((int(xs[nearest]), int(ys[nearest])), labels[region], fill=(255, 255, 255), font=font, anchor="mm")
    return np.asarray(_with_legend(picture, [(labels[r], tuple(int(c) for c in colours[r])) for r in present], font))


def _with_legend(picture: Image.Image, entries: Sequence[tuple[str, tuple[int, int, int]]], font: Any) -> Image.Image:
    """The picture with a white panel on its right listing a colour swatch and label per entry (as many as fit)."""
    row = font.size + 8
    width = max([int(font.getlength(text)) for text, _ in entries] + [int(font.getlength("no segment"))]) + row + 24
    panel = Image.new("RGB", (picture.width + width, picture.height), (255, 255, 255))
    panel.paste(picture, (0, 0))
    draw = ImageDraw.Draw(panel)
    fits = max(1, (picture.height - 8) // row)
    shown = entries if len(entries) <= fits else [*entries[: fits - 1], (f"+{len(entries) - fits + 1} more", (255, 255, 255))]
    for i, (text, colour) in enumerate(shown or [("no segment", (255, 255, 255))]):
        top = 6 + i * row
        draw.rectangle((picture.width + 8, top, picture.width + 8 + font.size, top + font.size), fill=colour, outline=(0, 0, 0))
        draw.text((picture.width + 16 + font.size, top), text, fill=(0, 0, 0), font=font)
    return panel


def instance_regions(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(H, W): on each pixel the index of the most confident instance scoring >= OVERLAY_MIN_SCORE, -1 where none.

    scores: (N,); masks: (N, H, W) bool.
    """
    shown = np.flatnonzero(scores >= OVERLAY_MIN_SCORE)
    shown = shown[np.argsort(scores[shown], kind="stable")]  # ascending: the last one covering a pixel wins
    if len(shown) == 0:
        return np.full(masks.shape[1:], -1)
    stacked = masks[shown]
    last = len(shown) - 1 - stacked[::-1].argmax(0)
    return np.where(stacked.any(0), shown[last], -1)


class PredictionWriter:
    """Writes each image's prediction (as `model.postprocess.Postprocessor` returns it) into the layout of the module docstring."""

    def __init__(self, out_dir: Path, label_map: LabelMap, task: str, num_classes: int) -> None:
        self.out_dir, self.label_map, self.task = out_dir, label_map, task
        self.train_ids = np.array(sorted(label_map.train_id_to_id), np.int64)  # the classes that have a category
        self.raw_ids = np.array([label_map.train_id_to_id[t] for t in self.train_ids.tolist()], np.int64)
        self.has_category = np.zeros(num_classes, bool)
        self.has_category[self.train_ids] = True
        self.raw_id_of_class = np.zeros(num_classes, np.int64)  # a class without a category is written as 0
        self.raw_id_of_class[self.train_ids] = self.raw_ids
        self.semantic_dtype = np.uint8 if self.raw_ids.max() < 256 else np.uint16
        self.images: list[dict[str, Any]] = []
        self.panoptic: list[dict[str, Any]] = []
        self.instances: list[dict[str, Any]] = []

    def _save(self, folder: str, file_name: str, suffix: str, pixels: np.ndarray) -> None:
        path = self.out_dir / folder / Path(file_name).with_suffix(suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)

    def add(self, image: np.ndarray, file_name: str, image_id: int | str, prediction: dict[str, Any]) -> None:
        """One image: image (H0, W0, 3) uint8 as read; file_name relative to img_dir; prediction at (H0, W0)."""
        height, width = image.shape[:2]
        self.images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        if "sem_seg" in prediction:  # (K, H0, W0): the best class that has a category
            sem_seg = prediction["sem_seg"]
            best = self.train_ids[sem_seg[torch.from_numpy(self.train_ids).to(sem_seg.device)].argmax(0).cpu().numpy()]
        else:  # a deployed instance or panoptic model gives its class map only
            best = prediction["semantic"].cpu().numpy().astype(np.int64)
        self._save("semantic", file_name, ".png", self.raw_id_of_class[best].astype(self.semantic_dtype))
        if self.task != "semantic":
            labels, scores, masks = self._add_instances(image_id, prediction["instances"])
        if self.task == "panoptic":
            regions, names = self._add_panoptic(image_id, file_name, prediction["panoptic"], prediction["segments"])
        elif self.task == "instance":
            regions = instance_regions(scores, masks)
            names = [f"{self.label_map.names[label]} {score:.2f}" for label, score in zip(labels.tolist(), scores.tolist())]
        else:
            present, regions = np.unique(best, return_inverse=True)
            regions, names = regions.reshape(best.shape), [self.label_map.names.get(c, str(c)) for c in present.tolist()]
        self._save("overlays", file_name, ".jpg", draw_overlay(image, regions, distinct_colours(len(names)), names))

    def _add_instances(self, image_id: int | str, instances: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Records the COCO results of the instances whose class has a category; returns their labels, scores, masks."""
        labels = instances["labels"].cpu().numpy()
        keep = self.has_category[labels]
        labels, scores, masks = labels[keep], instances["scores"].cpu().numpy()[keep], instances["masks"].cpu().numpy()[keep]
        rles = encode_rle(masks)
        boxes = mask_utils.toBbox(rles).tolist() if rles else []
        for label, score, rle, box in zip(labels.tolist(), scores.tolist(), rles, boxes):
            category_id = self.label_map.train_id_to_id[label]
            self.instances.append({"image_id": image_id, "category_id": category_id, "segmentation": rle, "score": score, "bbox": box})
        return labels, scores, masks

    def _add_panoptic(
        self, image_id: int | str, file_name: str, panoptic: torch.Tensor, segments: list[dict[str, Any]]
    ) -> tuple[np.ndarray, list[str]]:
        """Writes the panoptic PNG and records its segments_info; returns the overlay's regions (index of the segment
        on each pixel, -1 for void) and each segment's label (class name, and score for things)."""
        count = len(segments) + 1  # segment ids are 1..len(segments), 0 is void
        kept = [s for s in segments if self.has_category[s["category_id"]]]
        is_kept = np.zeros(count, bool)
        is_kept[[s["id"] for s in kept]] = True
        ids = panoptic.cpu().numpy().astype(np.int64)
        ids = np.where(is_kept[ids], ids, 0)
        areas, boxes = np.bincount(ids.ravel(), minlength=count), segment_boxes(ids, count)
        names = [""] * count
        segments_info = []
        for segment in kept:
            train_id, segment_id = segment["category_id"], segment["id"]
            isthing = bool(self.label_map.isthing[train_id])
            names[segment_id] = f"{self.label_map.names[train_id]} {segment['score']:.2f}" if isthing else self.label_map.names[train_id]
            segments_info.append({
                "id": segment_id,
                "category_id": self.label_map.train_id_to_id[train_id],
                "isthing": isthing,
                "score": float(segment["score"]),
                "area": int(areas[segment_id]),
                "bbox": boxes[segment_id].tolist(),
            })
        png_name = Path(file_name).with_suffix(".png").as_posix()
        self._save("panoptic", file_name, ".png", id_to_rgb(ids))
        self.panoptic.append({"image_id": image_id, "file_name": png_name, "segments_info": segments_info})
        return np.where(ids > 0, ids, -1), names

    def finish(self) -> None:
        """Writes the JSON files of the whole run."""
        if self.task in ("instance", "panoptic"):
            (self.out_dir / "instances.json").write_text(json.dumps(self.instances))
        if self.task == "panoptic":
            categories = [
                {"id": self.label_map.train_id_to_id[t], "name": self.label_map.names[t], "isthing": int(self.label_map.isthing[t]),
                 "color": list(self.label_map.colors[t])}
                for t in self.train_ids.tolist()
            ]
            content = {"images": self.images, "annotations": self.panoptic, "categories": categories}
            (self.out_dir / "panoptic.json").write_text(json.dumps(content))


def run_inference(spec: DictConfig, checkpoint: str, batch_size: int | None = None) -> Path:
    """Predict every image of dataset.test.img_dir (a folder or archive) with `checkpoint` and write the files.

    checkpoint: 'best', 'latest' or a checkpoint file (see `resolve_checkpoint`; the network is rebuilt with the
    architecture it was trained with), or a deployed model (.onnx, .pt2, TensorRT engine; see
    `automl.actions.predictors`). batch_size: default inference.batch_size, else dataset.test.batch_size.
    Runs on the GPU when there is one. Returns the output folder.
    """
    augmentation, test = spec.dataset.augmentation, spec.dataset.test
    img_dir = resolve_dir(test.img_dir, data_cache_dir(spec))
    dataset = ImageFolderDataset(img_dir, ResizeShortestEdge(augmentation.test_min_size, augmentation.test_max_size))
    batch_size = batch_size or (spec.inference.batch_size if spec.inference.batch_size > 0 else test.batch_size)
    if is_deployed(checkpoint):
        predictor = load_predictor(checkpoint)
        check_task(predictor, spec.model.mode, checkpoint)
        label_map = build_label_map(spec)
        is_thing = label_map.is_thing_per_class(spec.model.sem_seg_head.num_classes)
        predictions = predict_dataset(predictor, dataset, batch_size, test.num_workers, is_thing)
    else:
        path = resolve_checkpoint(spec, checkpoint)
        content = read_checkpoint(path)
        spec = spec_for_checkpoint(spec, content)
        label_map = build_label_map(spec)
        module = build_module(spec, label_map)
        prepare_for_checkpoint(module.model, content)
        with spec_keys_in_errors():  # a class head of another size is an error here, not a random classifier
            load_weights(module.model, path)
        predictions = predict_with_module(module, dataset, batch_size, test.num_workers, spec.dataset.pin_memory)
    out_dir = inference_dir(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = PredictionWriter(out_dir, label_map, spec.model.mode, spec.model.sem_seg_head.num_classes)

    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=console) as progress:
        task = progress.add_task("Inference", total=len(dataset))
        for item, prediction in predictions:
            writer.add(dataset.read_image(item["indices"]), item["file_names"], item["image_ids"], prediction)
            progress.advance(task)
    writer.finish()

    written = [f"{len(dataset)} images"]
    if spec.model.mode == "panoptic":
        written.append(f"{sum(len(a['segments_info']) for a in writer.panoptic)} panoptic segments")
    if spec.model.mode != "semantic":
        written.append(f"{len(writer.instances)} instances")
    console.print(f"Inference ({spec.model.mode}): {', '.join(written)} written to {out_dir}")
    return out_dir


def predict_with_module(
    module: Mask2FormerModule, dataset: ImageFolderDataset, batch_size: int, num_workers: int, pin_memory: bool
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(item fields, prediction) of every image, from the PyTorch model (on the GPU when there is one)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device).eval()
    loader = build_dataloader(dataset, batch_size, num_workers, shuffle=False, pin_memory=device.type == "cuda" and pin_memory)
    network = GraphedInference(module)  # a graph per recurring image size on the GPU, eager elsewhere
    with torch.inference_mode():
        for batch in loader:
            outputs = network(batch["images"].to(device, non_blocking=True))
            for i in range(len(batch["indices"])):
                prediction = module.postprocess(outputs["pred_logits"][i], outputs["pred_masks"][i], batch["image_sizes"][i], batch["orig_sizes"][i])
                yield {key: batch[key][i] for key in ("image_ids", "file_names", "indices")}, prediction
