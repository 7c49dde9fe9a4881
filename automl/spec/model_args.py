"""The spec -> the library's arguments (`build_mask2former`, `build_dataset`, `build_transform`); the one place that maps them.

`build_network(spec.model)` builds the network a spec describes and `build_split_dataset(spec, split, ...)`
one split's dataset; `spec_keys_in_errors()` words the library's argument errors (of building,
reading data or loading weights) with the spec's keys. `spec_model_values(kwargs)` gives the
`model.*` values of a network described by arguments (an imported checkpoint's).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from model.data import LabelMap, SegmentationDataset, build_dataset, build_transform
from model.data.dataset import AnnotationReader
from model.errors import ArgumentError, UserError
from model.mask2former import BACKBONE_OUT_FEATURES, Mask2Former, build_mask2former

# build_mask2former argument -> its key under the spec's `model` section.
ARGUMENT_KEYS = {
    "backbone": "backbone.swin.type",
    "backbone_weights": "backbone.pretrained_weights",
    "num_classes": "sem_seg_head.num_classes",
    "num_queries": "mask_former.num_object_queries",
    "hidden_dim": "mask_former.hidden_dim",
    "nheads": "mask_former.nheads",
    "dim_feedforward": "mask_former.dim_feedforward",
    "dec_layers": "mask_former.dec_layers",
    "pre_norm": "mask_former.pre_norm",
    "dropout": "mask_former.dropout",
    "conv_dim": "sem_seg_head.convs_dim",
    "mask_dim": "sem_seg_head.mask_dim",
    "num_encoder_layers": "sem_seg_head.transformer_enc_layers",
    "encoder_in_features": "sem_seg_head.deformable_transformer_encoder_in_features",
    "common_stride": "sem_seg_head.common_stride",
    "fpn_autocast": "sem_seg_head.fpn_autocast",
}
TASK_KEY = "mode"  # the task (panoptic | instance | semantic) that datasets, post-processing and metrics take
# build_backbone arguments, each read from model.backbone.swin.<same name>.
SWIN_ARGUMENTS = (
    "patch_size", "window_size", "mlp_ratio", "qkv_bias", "drop_rate", "attn_drop_rate", "drop_path_rate", "ape", "patch_norm",
    "pretrain_img_size", "use_checkpoint",
)
CUSTOM_SWIN_ARGUMENTS = ("embed_dim", "depths", "num_heads")  # set by swin.type 'custom' only
# build_dataset arguments, each read from dataset.<split>.<same name> (dataset_type: dataset.<split>.type).
SPLIT_ARGUMENTS = ("img_dir", "panoptic_json", "panoptic_dir", "instance_json", "root_dir", "annot_file")
# build_transform arguments, each read from dataset.augmentation.<same name>.
AUGMENTATION_ARGUMENTS = (
    "train_augmentation", "train_min_size", "train_max_size", "train_crop_size", "test_min_size", "test_max_size", "lsj_min_scale", "lsj_max_scale",
)


def spec_key(argument: str, split: str | None = None) -> str:
    """The spec key of a library argument: of build_mask2former, build_backbone, the task, or (for `split`)
    of build_dataset and build_transform."""
    if argument in SWIN_ARGUMENTS or argument in CUSTOM_SWIN_ARGUMENTS:
        return f"model.backbone.swin.{argument}"
    if argument == "task":
        return f"model.{TASK_KEY}"
    if argument in AUGMENTATION_ARGUMENTS:
        return f"dataset.augmentation.{argument}"
    if split is not None and (argument in SPLIT_ARGUMENTS or argument == "dataset_type"):
        return f"dataset.{split}.{'type' if argument == 'dataset_type' else argument}"
    return f"model.{ARGUMENT_KEYS.get(argument, argument)}"


def _select(section: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        section = getattr(section, part)
    return section


def model_kwargs(model_cfg: Any) -> dict[str, Any]:
    """The build_mask2former arguments of the spec's `model` section (attribute access).

    model.mode, the loss weights and the post-processing thresholds do not change the network.
    model.backbone.swin.use_checkpoint (the spec's backbone checkpointing key) also applies to ResNet-50.
    """
    swin = model_cfg.backbone.swin
    if list(swin.out_indices) != [0, 1, 2, 3] or list(swin.out_features) != list(BACKBONE_OUT_FEATURES):
        raise UserError(
            f"model.backbone.swin.out_indices / out_features: Mask2Former uses all four stages, expected [0, 1, 2, 3] / "
            f"{list(BACKBONE_OUT_FEATURES)}, got {list(swin.out_indices)} / {list(swin.out_features)}"
        )
    kwargs = {argument: _select(model_cfg, key) for argument, key in ARGUMENT_KEYS.items() if argument != "backbone"}
    kwargs["encoder_in_features"] = list(kwargs["encoder_in_features"])
    kwargs["backbone_weights"] = kwargs["backbone_weights"] or None
    if model_cfg.backbone.type == "resnet50":
        return {**kwargs, "backbone": "resnet50", "backbone_kwargs": {"use_checkpoint": bool(swin.use_checkpoint)}}
    backbone_kwargs = {name: getattr(swin, name) for name in SWIN_ARGUMENTS}
    if swin.type == "custom":
        backbone_kwargs.update(embed_dim=swin.embed_dim, depths=list(swin.depths), num_heads=list(swin.num_heads))
        return {**kwargs, "backbone": "swin", "backbone_kwargs": backbone_kwargs}
    return {**kwargs, "backbone": f"swin_{swin.type}", "backbone_kwargs": backbone_kwargs}


@contextmanager
def spec_keys_in_errors(split: str | None = None) -> Iterator[None]:
    """Re-raise the library's ArgumentError as a UserError that names the spec key instead of the argument."""
    try:
        yield
    except ArgumentError as err:
        raise UserError(f"{spec_key(err.argument, split)}: {err.problem}") from None


def build_network(model_cfg: Any) -> Mask2Former:
    """The Mask2Former the spec's `model` section describes; an impossible value is a UserError naming its spec key."""
    with spec_keys_in_errors():
        return build_mask2former(**model_kwargs(model_cfg))


def data_cache_dir(spec: Any) -> Path:
    """Where data archives are extracted and object-storage data downloaded."""
    return Path(spec.results_dir) / "cache"


def build_split_dataset(spec: Any, split: str, label_map: LabelMap, is_train: bool, reader: AnnotationReader | None = None) -> SegmentationDataset:
    """dataset.<split> for the spec's task, with the training or evaluation augmentation of dataset.augmentation.

    reader: the split's annotations when already decoded (a sweep's trials share them), else read from its files.
    """
    augmentation, files = spec.dataset.augmentation, spec.dataset[split]
    with spec_keys_in_errors(split):
        transform = build_transform(is_train, **{name: augmentation[name] for name in AUGMENTATION_ARGUMENTS})
        if reader is not None:
            return SegmentationDataset(reader=reader, transform=transform, task=getattr(spec.model, TASK_KEY))
        return build_dataset(
            files.type,
            task=getattr(spec.model, TASK_KEY),
            label_map=label_map,
            transform=transform,
            cache_root=data_cache_dir(spec),
            **{name: files[name] for name in SPLIT_ARGUMENTS},
        )


def spec_model_values(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Nested `model.*` spec values of the network that build_mask2former(**kwargs) builds (Swin backbones)."""
    backbone, backbone_kwargs = kwargs["backbone"], dict(kwargs.get("backbone_kwargs") or {})
    if not backbone.startswith("swin"):
        raise ValueError(f"only Swin backbones are written as spec values, got {backbone!r}")
    swin = {"type": backbone.removeprefix("swin_") if backbone != "swin" else "custom", **backbone_kwargs}
    values: dict[str, Any] = {"backbone": {"type": "swin", "swin": swin}}
    for argument, key in ARGUMENT_KEYS.items():
        if argument in kwargs and argument != "backbone":
            node = values
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = list(kwargs[argument]) if isinstance(kwargs[argument], tuple) else kwargs[argument]
    return values
