"""The spec builds the network and datasets it describes; the library's argument errors name spec keys."""

import pytest
import torch

from automl.spec import load_spec
from automl.spec.model_args import ARGUMENT_KEYS, build_network, build_split_dataset, model_kwargs, spec_model_values
from automl.training import build_label_map
from model.errors import UserError

TINY = [
    "model.backbone.swin.type=custom", "model.backbone.swin.embed_dim=32", "model.backbone.swin.depths=[1,1,1,1]",
    "model.backbone.swin.num_heads=[1,2,2,4]", "model.backbone.swin.window_size=4", "model.sem_seg_head.num_classes=6",
    "model.sem_seg_head.transformer_enc_layers=1", "model.sem_seg_head.convs_dim=32", "model.sem_seg_head.mask_dim=16",
    "model.mask_former.nheads=4", "model.mask_former.hidden_dim=64", "model.mask_former.dim_feedforward=64",
    "model.mask_former.dec_layers=3", "model.mask_former.num_object_queries=8",
]


def test_every_spec_value_of_the_network_reaches_it():
    spec = load_spec(None, [*TINY, "model.mask_former.pre_norm=true", "model.sem_seg_head.common_stride=8", "model.sem_seg_head.fpn_autocast=true"])
    network = build_network(spec.model)
    assert network.pixel_decoder.fpn_autocast is True and build_network(load_spec(None, TINY).model).pixel_decoder.fpn_autocast is False
    decoder = network.transformer_decoder
    assert network.backbone.channels == [32, 64, 128, 256] and network.backbone.layers[0].window_size == 4
    assert decoder.class_embed.out_features == 7 and decoder.query_feat.num_embeddings == 8
    assert len(decoder.layers) == 2 and decoder.layers[0].pre_norm
    assert network(torch.randn(1, 3, 64, 64))["pred_masks"].shape == (1, 8, 8, 8)  # common_stride 8


def test_a_named_swin_size_builds_the_published_network_and_resnet50_its_own():
    assert model_kwargs(load_spec(None, ["model.backbone.swin.type=small"]).model)["backbone"] == "swin_small"
    resnet = model_kwargs(load_spec(None, ["model.backbone.type=resnet50", "model.backbone.swin.use_checkpoint=true"]).model)
    assert resnet["backbone"] == "resnet50" and resnet["backbone_kwargs"] == {"use_checkpoint": True}


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.backbone.type=efficientvit", "model.backbone.type"),
        ("model.backbone.swin.type=huge", "model.backbone.swin.type"),
        ("model.backbone.swin.out_indices=[1,2,3]", "out_indices"),
        ("model.sem_seg_head.convs_dim=48", "model.sem_seg_head.convs_dim"),
        ("model.mask_former.nheads=3", "model.mask_former.nheads"),
        ("model.sem_seg_head.deformable_transformer_encoder_in_features=[res2,res5]", "model.sem_seg_head.deformable_transformer_encoder_in_features"),
        ("model.backbone.pretrained_weights=/no/such/swin.pth", "/no/such/swin.pth"),
        ("model.backbone.swin.num_heads=[1,2,2,3]", "model.backbone.swin.num_heads"),
    ],
)
def test_values_the_network_cannot_be_built_with_are_user_errors_naming_the_key(override, key):
    with pytest.raises(UserError, match=key):
        build_network(load_spec(None, [*TINY, override]).model)


def test_spec_values_of_factory_arguments_build_the_same_network():
    kwargs = model_kwargs(load_spec(None, TINY).model)
    values = spec_model_values(kwargs)
    again = model_kwargs(load_spec(None, [f"model.{k}={v}" for k, v in _flat(values).items()]).model)
    assert again == kwargs
    assert set(ARGUMENT_KEYS) <= set(kwargs)


def _flat(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif value is not None:
            out[f"{prefix}{key}"] = str(value).replace("'", "").replace(" ", "") if isinstance(value, list) else value
    return out


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["dataset.augmentation.train_min_size=[]"], r"^dataset\.augmentation\.train_min_size: empty; expected a list of shortest-edge sizes"),
        (["dataset.train.type=coco", "dataset.train.instance_json="], r"^dataset\.train\.instance_json: empty, but dataset type 'coco' needs it"),
    ],
)
def test_data_argument_errors_name_the_spec_key(smoke_spec, overrides, message):
    spec = smoke_spec(*overrides, action=None)
    with pytest.raises(UserError, match=message):
        build_split_dataset(spec, "train", build_label_map(spec), is_train=True)
