"""The data pre-flight of `automl launch`: the data a training reads is checked before anything trains.

A missing, corrupt or mismatched file is then one error naming it, instead of a sweep whose every trial
fails or a run that stops mid-epoch. It builds the datasets exactly as training does (which checks the
label map, the annotation files, ids and categories) and reads every image's and label image's header
and PNG checksums (`model.data.check_files`); `automl data check` decodes every pixel besides.
"""

from __future__ import annotations

import time

from omegaconf import DictConfig
from rich.console import Console

from automl.training import build_datamodule, build_label_map
from model.data import check_files


def check_training_data(spec: DictConfig, console: Console | None = None) -> None:
    """Raise the first UserError of the train and val splits (label map, annotations, every file); print a summary line."""
    start = time.perf_counter()
    datamodule = build_datamodule(spec, build_label_map(spec))
    for dataset in (datamodule.train_set, datamodule.val_set):
        check_files(dataset)
    elapsed = time.perf_counter() - start
    (console or Console()).print(f"data pre-flight: {len(datamodule.train_set)} train and {len(datamodule.val_set)} val images checked in {elapsed:.1f} s", highlight=False)
