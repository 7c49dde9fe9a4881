"""The data pre-flight of `automl launch`: the data a training reads is checked before anything trains.

A missing, corrupt or mismatched file is then one error naming it, instead of a sweep whose every trial
fails or a run that stops mid-epoch. It builds the datasets exactly as training does and runs the checks
of `automl data check` on them, reading image headers rather than decoding pixels.
"""

from __future__ import annotations

import time

from omegaconf import DictConfig
from rich.console import Console

from automl.training import build_datamodule, build_label_map
from model.data import check_dataset


def check_training_data(spec: DictConfig, console: Console | None = None) -> None:
    """Raise the first UserError of the train and val splits (label map, annotations, every file); print a summary line."""
    start = time.perf_counter()
    datamodule = build_datamodule(spec, build_label_map(spec))
    counts = {split: check_dataset(dataset, decode_images=False)["images"] for split, dataset in (("train", datamodule.train_set), ("val", datamodule.val_set))}
    elapsed = time.perf_counter() - start
    (console or Console()).print(f"data pre-flight: {counts['train']} train and {counts['val']} val images checked in {elapsed:.1f} s", highlight=False)
