"""A small synthetic segmentation dataset, written in all three formats at once, for smoke runs and tests.

Every image has stuff regions (sky, grass, wall: a wavy horizon and a slanted wall edge split the
background, each region with its own texture) under 3 to 6 things (circles, squares, triangles of
random size, rotation, colour and texture) drawn one over another, so later things occlude earlier
ones; about one thing in ten is marked crowd. All files follow from the seed: the same seed writes
byte-identical files.

Layout under out_dir (per split `train` and `val`):
    label_map.json                      the categories (ids 1-3 things, 5-7 stuff: ids need not be contiguous)
    <split>/images/000001.png ...       the images
    <split>/panoptic/000001.png ...     COCO panoptic PNGs, with <split>/annotations_panoptic.json
    <split>/annotations.json            COCO instances of the things (RLE; crowd ones uncompressed)
    <split>/masks/000001.png ...        ADE masks (pixel = category id, 0 on crowd), listed by
                                        <split>/annotations_ade.jsonl; images/ + masks/ are also the folder layout
    <split>/images.tar.gz, <split>/images_panoptic.tar.gz   with archives=True
"""

from __future__ import annotations

import gzip
import json
import math
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from model.errors import UserError
from model.metrics.panoptic import id_to_rgb

CIRCLE, SQUARE, TRIANGLE, SKY, GRASS, WALL = 1, 2, 3, 5, 6, 7
CATEGORIES = [
    {"id": CIRCLE, "name": "circle", "isthing": 1, "color": [220, 20, 60]},
    {"id": SQUARE, "name": "square", "isthing": 1, "color": [0, 0, 142]},
    {"id": TRIANGLE, "name": "triangle", "isthing": 1, "color": [250, 170, 30]},
    {"id": SKY, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
    {"id": GRASS, "name": "grass", "isthing": 0, "color": [107, 142, 35]},
    {"id": WALL, "name": "wall", "isthing": 0, "color": [102, 102, 156]},
]
_CROWD_PROBABILITY = 0.1
_SEGMENT_ID_STRIDE = 1000  # segment id = category id * stride + thing number (0 for stuff)


def _stuff_layout(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(H, W) stuff category per pixel: sky above a wavy horizon, grass below, maybe a wall on one side."""
    height, width = yy.shape
    wave = height * rng.uniform(0.02, 0.08) * np.sin(xx * rng.uniform(2.0, 6.0) / width * math.pi + rng.uniform(0, 2 * math.pi))
    layout = np.where(yy < height * rng.uniform(0.3, 0.6) + wave, SKY, GRASS)
    if rng.random() < 0.6:
        edge = width * rng.uniform(0.15, 0.4) + (yy - height / 2) * rng.uniform(-0.4, 0.4)
        wall = xx < edge if rng.random() < 0.5 else xx > width - edge
        layout = np.where(wall, WALL, layout)
    return layout


def _stuff_texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> dict[int, np.ndarray]:
    """(H, W, 3) float colours of each stuff class over the whole image: sky gradient, grass stripes, bricks."""
    height = yy.shape[0]
    sky = np.array([120.0, 170.0, 235.0]) - (yy / height)[..., None] * np.array([50.0, 40.0, 10.0])
    stripes = np.sin(xx * rng.uniform(0.6, 1.2) + yy * rng.uniform(0.2, 0.5))[..., None]
    grass = np.array([60.0, 140.0, 50.0]) + stripes * np.array([15.0, 30.0, 10.0])
    row = (yy // 8).astype(np.int64)
    mortar = (yy % 8 < 1) | ((xx + 8 * (row % 2)) % 16 < 1)
    brick = np.array([150.0, 70.0, 50.0]) * rng.uniform(0.8, 1.2)
    wall = np.where(mortar[..., None], np.array([200.0, 200.0, 195.0]), brick)
    return {SKY: sky, GRASS: grass, WALL: wall}


def _thing(rng: np.random.Generator, category: int, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A thing of `category` at a random place: its mask (H, W) bool and its texture (H, W, 3) float."""
    height, width = yy.shape
    radius = rng.uniform(0.06, 0.2) * min(height, width)
    angle = rng.uniform(0, 2 * math.pi)
    dy, dx = yy - rng.uniform(0.1, 0.9) * height, xx - rng.uniform(0.1, 0.9) * width
    u, v = dx * math.cos(angle) + dy * math.sin(angle), -dx * math.sin(angle) + dy * math.cos(angle)
    if category == CIRCLE:
        mask = u**2 + v**2 <= radius**2
    elif category == SQUARE:
        mask = np.maximum(np.abs(u), np.abs(v)) <= radius * 0.8
    else:  # an equilateral triangle: inside its three edges, each at the inradius (radius / 2) from the centre
        normals = [2 * math.pi * k / 3 for k in range(3)]
        mask = np.all([u * math.cos(a) + v * math.sin(a) <= radius / 2 for a in normals], axis=0)
    colour = rng.uniform(30, 255, 3)
    pattern = rng.integers(3)
    if pattern == 0:  # solid
        shade = np.ones_like(u)
    elif pattern == 1:  # stripes along the object's own axis
        shade = 0.65 + 0.35 * (np.sin(u * rng.uniform(0.5, 1.5)) > 0)
    else:  # checker
        cell = rng.uniform(3, 6)
        shade = 0.6 + 0.4 * ((np.floor(u / cell) + np.floor(v / cell)) % 2)
    return mask, shade[..., None] * colour


def _scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, bool]]]:
    """One image (H, W, 3) uint8, its segment-id map (H, W) int64 and its visible segments [(id, category, iscrowd)]."""
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float64)
    layout = _stuff_layout(rng, yy, xx)
    textures = _stuff_texture(rng, yy, xx)
    image = np.zeros((*size, 3))
    for category, texture in textures.items():
        image = np.where((layout == category)[..., None], texture, image)
    segment_map = layout * _SEGMENT_ID_STRIDE
    crowd = {}
    for number in range(1, int(rng.integers(3, 7)) + 1):
        category = int(rng.choice([CIRCLE, SQUARE, TRIANGLE]))
        mask, texture = _thing(rng, category, yy, xx)
        image = np.where(mask[..., None], texture, image)
        segment_id = category * _SEGMENT_ID_STRIDE + number
        segment_map = np.where(mask, segment_id, segment_map)
        crowd[segment_id] = bool(rng.random() < _CROWD_PROBABILITY)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    visible = np.unique(segment_map).tolist()
    segments = [(i, i // _SEGMENT_ID_STRIDE, crowd.get(i, False)) for i in visible]
    return image, segment_map, segments


def _bbox(mask: np.ndarray) -> list[float]:
    """[x, y, width, height] of a non-empty mask."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE (counts list, column-major, starting with a run of zeros) of a mask."""
    flat = mask.flatten(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": ([0] + counts) if flat[0] else counts}


def _compressed_rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _write_json(path: Path, content: Any) -> None:
    path.write_text(json.dumps(content, separators=(",", ":")), encoding="utf-8")


def _write_tar_gz(folder: Path, archive: Path) -> None:
    """Archive `folder` (as its own top folder) reproducibly: sorted members, zero times and owners."""
    with open(archive, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped:
        with tarfile.open(fileobj=zipped, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for path in [folder, *sorted(folder.rglob("*"))]:
                info = tar.gettarinfo(path, arcname=str(path.relative_to(folder.parent)))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                info.mode = 0o755 if path.is_dir() else 0o644
                if path.is_dir():
                    tar.addfile(info)
                else:
                    with open(path, "rb") as f:
                        tar.addfile(info, f)


def _segment_annotations(segment_map: np.ndarray, segments: list[tuple[int, int, bool]]) -> tuple[list[dict], list[dict]]:
    """COCO panoptic `segments_info` of one image, and the COCO instance annotations of its things (no ids yet)."""
    segments_info, things = [], []
    for segment_id, category, crowd in segments:
        mask = segment_map == segment_id
        info = {"id": segment_id, "category_id": category, "iscrowd": int(crowd), "area": int(mask.sum()), "bbox": _bbox(mask)}
        segments_info.append(info)
        if category in (CIRCLE, SQUARE, TRIANGLE):
            things.append({**info, "segmentation": _uncompressed_rle(mask) if crowd else _compressed_rle(mask)})
    return segments_info, things


def _write_split(root: Path, image_ids: list[int], seed: int, size: tuple[int, int], archives: bool) -> dict[str, str]:
    folders = {name: root / name for name in ("images", "panoptic", "masks")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    images, panoptic_annotations, instance_annotations, ade_lines = [], [], [], []
    for image_id in image_ids:
        image, segment_map, segments = _scene(np.random.default_rng([seed, image_id]), size)
        file_name = f"{image_id:06d}.png"
        crowd_pixels = np.isin(segment_map, [i for i, _, crowd in segments if crowd])
        semantic = np.where(crowd_pixels, 0, segment_map // _SEGMENT_ID_STRIDE).astype(np.uint8)
        Image.fromarray(image).save(folders["images"] / file_name)
        Image.fromarray(id_to_rgb(segment_map)).save(folders["panoptic"] / file_name)
        Image.fromarray(semantic).save(folders["masks"] / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": size[0], "width": size[1]})
        ade_lines.append(json.dumps({"img": f"images/{file_name}", "segm": f"masks/{file_name}"}))
        segments_info, things = _segment_annotations(segment_map, segments)
        panoptic_annotations.append({"image_id": image_id, "file_name": file_name, "segments_info": segments_info})
        for thing in things:
            instance_annotations.append({**thing, "id": len(instance_annotations) + 1, "image_id": image_id})
    thing_categories = [c for c in CATEGORIES if c["isthing"]]
    _write_json(root / "annotations_panoptic.json", {"images": images, "annotations": panoptic_annotations, "categories": CATEGORIES})
    _write_json(root / "annotations.json", {"images": images, "annotations": instance_annotations, "categories": thing_categories})
    (root / "annotations_ade.jsonl").write_text("\n".join(ade_lines) + "\n", encoding="utf-8")
    paths = {
        "img_dir": str(folders["images"]),
        "panoptic_dir": str(folders["panoptic"]),
        "panoptic_json": str(root / "annotations_panoptic.json"),
        "instance_json": str(root / "annotations.json"),
        "root_dir": str(root),
        "annot_file": "annotations_ade.jsonl",
    }
    if archives:
        _write_tar_gz(folders["images"], root / "images.tar.gz")
        _write_tar_gz(folders["panoptic"], root / "images_panoptic.tar.gz")
        paths["images_archive"] = str(root / "images.tar.gz")
        paths["panoptic_archive"] = str(root / "images_panoptic.tar.gz")
    return paths


def write_synthetic_dataset(
    out_dir: str | Path,
    num_images: int = 24,
    size: tuple[int, int] = (128, 128),
    seed: int = 0,
    val_fraction: float = 0.25,
    archives: bool = False,
) -> dict[str, Any]:
    """Write the dataset (see the module docstring) and return its paths.

    Returns {"label_map": path, "train": split paths, "val": split paths} (no "val" when it gets no image);
    split paths: img_dir, panoptic_dir, panoptic_json, instance_json, root_dir, annot_file (relative to
    root_dir, as the spec takes it) and, with archives, images_archive and panoptic_archive.
    """
    if not 0 <= val_fraction < 1:
        raise UserError(f"val_fraction is {val_fraction}; expected a fraction in [0, 1)")
    num_val = max(1, round(num_images * val_fraction)) if val_fraction > 0 else 0
    if num_images - num_val < 1:
        raise UserError(f"num_images is {num_images}; expected enough for a train split and {num_val} validation image(s)")
    if min(size) < 16:
        raise UserError(f"size is {tuple(size)}; expected at least 16x16 pixels")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "label_map.json", CATEGORIES)
    image_ids = list(range(1, num_images + 1))
    splits = {"train": image_ids[: num_images - num_val], "val": image_ids[num_images - num_val :]}
    paths: dict[str, Any] = {"label_map": str(out_dir / "label_map.json")}
    for split, ids in splits.items():
        if ids:
            paths[split] = _write_split(out_dir / split, ids, seed, tuple(size), archives)
    return paths
