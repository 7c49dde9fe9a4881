"""A sweep's decoded data, made once by the driver and reused by every trial.

Reading a split's annotation file (COCO JSON, the ADE listing), checking every entry and mapping
its categories through the label map is the same work for every trial and takes seconds on a
large dataset. The sweep decodes it once; `tune.with_parameters` puts it in Ray's object store
and each trial builds its datasets from it with its own augmentation values. A trial whose
values change what was decoded (a space that samples a dataset path) decodes its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from automl.spec.model_args import SPLIT_ARGUMENTS, build_split_dataset
from model.data import LabelMap
from model.data.dataset import AnnotationReader

SPLITS = {"train": True, "val": False}  # the splits a trial trains and validates on: is_train


def data_source(spec: DictConfig) -> dict[str, Any]:
    """The spec values that decide the decoded data: label map and each split's files."""
    dataset = spec.dataset
    splits = {split: {name: dataset[split].get(name) for name in ("type", *SPLIT_ARGUMENTS)} for split in SPLITS}
    return OmegaConf.to_container(
        OmegaConf.create({"label_map": dataset.label_map, "contiguous_id": dataset.contiguous_id, "num_classes": spec.model.sem_seg_head.num_classes, **splits}),
        resolve=True,
    )


@dataclass(frozen=True)
class SharedData:
    """The label map and each split's annotation reader (its decoded, checked index), with the values they came from."""

    source: dict[str, Any]
    label_map: LabelMap
    readers: dict[str, AnnotationReader]

    def fits(self, spec: DictConfig) -> bool:
        """Whether `spec` (a trial's) names the data this was decoded from."""
        return data_source(spec) == self.source


def decode_data(spec: DictConfig, label_map: LabelMap) -> SharedData:
    """Decode the training and validation annotations of `spec` once (raises UserError on bad data)."""
    readers = {split: build_split_dataset(spec, split, label_map, is_train=is_train).reader for split, is_train in SPLITS.items()}
    return SharedData(data_source(spec), label_map, readers)
