"""Spec overrides that point an experiment spec at a dataset written by `automl data synth` (used by benchmarks and tests)."""

from __future__ import annotations

from pathlib import Path


def data_overrides(data: Path, val_split: str = "val") -> list[str]:
    """Dotted overrides for the label map, the train and val splits and the test images of the synthetic set in `data`.

    val_split='train' scores (and infers on) the training images instead of the validation ones.
    """
    overrides = [f"dataset.label_map={data / 'label_map.json'}"]
    for split, source in (("train", "train"), ("val", val_split), ("test", val_split)):
        overrides += [f"dataset.{split}.img_dir={data / source / 'images'}"]
        if split != "test":
            overrides += [
                f"dataset.{split}.panoptic_json={data / source / 'annotations_panoptic.json'}",
                f"dataset.{split}.panoptic_dir={data / source / 'panoptic'}",
            ]
    overrides.append(f"dataset.val.instance_json={data / val_split / 'annotations.json'}")
    return overrides
