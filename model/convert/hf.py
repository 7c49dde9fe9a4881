"""Hugging Face `Mask2FormerForUniversalSegmentation` checkpoints -> our Mask2Former.

A checkpoint directory (config.json + model.safetensors, sharded safetensors or
pytorch_model.bin, as `save_pretrained` writes it or the hub serves it) becomes our state dict
plus the `build_mask2former` arguments of the matching network. Both the Swin key names that
checkpoints are saved with (`attention.self.query`, `intermediate.dense`) and those of
transformers 5 in memory (`attention.q_proj`, `mlp.fc1`) are read. Nothing is downloaded and
transformers is not needed.

HF's Mask2Former follows the original architecture, so the import is a renaming, with two
reshapes: Swin's separate query/key/value become one qkv matrix, and the decoder's fused
cross-attention in-projection is split into q/k/v.
"""

import json
import os
import re
from typing import Any

import torch

from model.checkpoint import read_checkpoint
from model.errors import UserError
from model.mask2former import ENCODER_FFN_DIM, Mask2Former, build_mask2former
from model.presets import SWIN_PRESETS

_BACKBONE = "model.pixel_level_module.encoder."
_PIXEL_DECODER = "model.pixel_level_module.decoder."
_TRANSFORMER = "model.transformer_module."
# The loss's class weights, Swin's unused final norm, and buffers older checkpoints saved.
_IGNORED = re.compile(r"^(criterion\.|model\.pixel_level_module\.encoder\.(swin\.)?layernorm\.)|\.relative_position_index$")

# (HF key pattern, our key) after the prefixes above are replaced; applied with re.fullmatch.
_RENAMES = [
    # Swin backbone (the `swin.` level exists in transformers 5 only).
    (r"backbone\.(?:swin\.)?embeddings\.patch_embeddings\.projection\.(\w+)", r"backbone.patch_embed.proj.\1"),
    (r"backbone\.(?:swin\.)?embeddings\.norm\.(\w+)", r"backbone.patch_embed.norm.\1"),
    (r"backbone\.(?:swin\.)?encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.(\w+)", r"backbone.layers.\1.blocks.\2.norm1.\3"),
    (r"backbone\.(?:swin\.)?encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after\.(\w+)", r"backbone.layers.\1.blocks.\2.norm2.\3"),
    (
        r"backbone\.(?:swin\.)?encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.(?:self\.|relative_position_bias\.)relative_position_bias_table",
        r"backbone.layers.\1.blocks.\2.attn.relative_position_bias_table",
    ),
    (r"backbone\.(?:swin\.)?encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.(?:output\.dense|o_proj)\.(\w+)", r"backbone.layers.\1.blocks.\2.attn.proj.\3"),
    (r"backbone\.(?:swin\.)?encoder\.layers\.(\d+)\.blocks\.(\d+)\.(?:intermediate\.dense|mlp\.fc1)\.(\w+)", r"backbone.layers.\1.blocks.\2.mlp.fc1.\3"),
    (r"backbone\.(?:swin\.)?encoder\.layers\.(\d+)\.blocks\.(\d+)\.(?:output\.dense|mlp\.fc2)\.(\w+)", r"backbone.layers.\1.blocks.\2.mlp.fc2.\3"),
    (r"backbone\.(?:swin\.)?encoder\.layers\.(\d+)\.downsample\.(\w+)\.(\w+)", r"backbone.layers.\1.downsample.\2.\3"),
    # Pixel decoder.
    (r"pixel_decoder\.level_embed", r"pixel_decoder.transformer.level_embed"),
    (r"pixel_decoder\.input_projections\.(\d+)\.(\d+)\.(\w+)", r"pixel_decoder.input_proj.\1.\2.\3"),
    (r"pixel_decoder\.encoder\.layers\.(\d+)\.self_attn\.(\w+)\.(\w+)", r"pixel_decoder.transformer.layers.\1.self_attn.\2.\3"),
    (r"pixel_decoder\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.(\w+)", r"pixel_decoder.transformer.layers.\1.norm1.\2"),
    (r"pixel_decoder\.encoder\.layers\.(\d+)\.fc1\.(\w+)", r"pixel_decoder.transformer.layers.\1.linear1.\2"),
    (r"pixel_decoder\.encoder\.layers\.(\d+)\.fc2\.(\w+)", r"pixel_decoder.transformer.layers.\1.linear2.\2"),
    (r"pixel_decoder\.encoder\.layers\.(\d+)\.final_layer_norm\.(\w+)", r"pixel_decoder.transformer.layers.\1.norm2.\2"),
    (r"pixel_decoder\.mask_projection\.(\w+)", r"pixel_decoder.mask_features.\1"),
    # Transformer decoder.
    (r"transformer_decoder\.queries_features\.weight", r"transformer_decoder.query_feat.weight"),
    (r"transformer_decoder\.queries_embedder\.weight", r"transformer_decoder.query_embed.weight"),
    (r"transformer_decoder\.level_embed\.weight", r"transformer_decoder.level_embed.weight"),
    (r"transformer_decoder\.input_projections\.(\d+)\.(\w+)", r"transformer_decoder.input_proj.\1.\2"),
    (r"transformer_decoder\.decoder\.layers\.(\d+)\.cross_attn\.out_proj\.(\w+)", r"transformer_decoder.layers.\1.cross_attn.out_proj.\2"),
    (r"transformer_decoder\.decoder\.layers\.(\d+)\.cross_attn_layer_norm\.(\w+)", r"transformer_decoder.layers.\1.cross_norm.\2"),
    (r"transformer_decoder\.decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(\w+)", r"transformer_decoder.layers.\1.self_attn.\2_proj.\3"),
    (r"transformer_decoder\.decoder\.layers\.(\d+)\.self_attn\.(?:out_proj|o_proj)\.(\w+)", r"transformer_decoder.layers.\1.self_attn.out_proj.\2"),
    (r"transformer_decoder\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.(\w+)", r"transformer_decoder.layers.\1.self_norm.\2"),
    (r"transformer_decoder\.decoder\.layers\.(\d+)\.(?:mlp\.)?fc1\.(\w+)", r"transformer_decoder.layers.\1.linear1.\2"),
    (r"transformer_decoder\.decoder\.layers\.(\d+)\.(?:mlp\.)?fc2\.(\w+)", r"transformer_decoder.layers.\1.linear2.\2"),
    (r"transformer_decoder\.decoder\.layers\.(\d+)\.final_layer_norm\.(\w+)", r"transformer_decoder.layers.\1.ffn_norm.\2"),
    (r"transformer_decoder\.decoder\.layernorm\.(\w+)", r"transformer_decoder.decoder_norm.\1"),
    (r"transformer_decoder\.decoder\.mask_predictor\.mask_embedder\.(\d+)\.0\.(\w+)", r"transformer_decoder.mask_embed.layers.\1.\2"),
    (r"class_predictor\.(\w+)", r"transformer_decoder.class_embed.\1"),
]
# Tensors that are reshaped rather than renamed.
_SWIN_QKV = re.compile(r"backbone\.(?:swin\.)?encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.(?:self\.(query|key|value)|([qkv])_proj)\.(\w+)")
_CROSS_IN_PROJ = re.compile(r"transformer_decoder\.decoder\.layers\.(\d+)\.cross_attn\.in_proj_(weight|bias)")
_OUT_NORM = re.compile(r"backbone\.hidden_states_norms\.stage(\d)\.(\w+)")
_FPN = re.compile(r"pixel_decoder\.(adapter|layer)_(\d+)\.(\d+)\.(\w+)")


def _read_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{hf_dir!r} is not a Hugging Face checkpoint directory: {path!r} not found")
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path!r} as JSON ({exc})") from exc
    if config.get("model_type") != "mask2former":
        raise UserError(f"{path!r}: model_type is {config.get('model_type')!r}, expected 'mask2former'")
    return config


def _read_weights(hf_dir: str) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors, its shards, or pytorch_model.bin."""
    single = os.path.join(hf_dir, "model.safetensors")
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    legacy = os.path.join(hf_dir, "pytorch_model.bin")
    if os.path.isfile(index) and not os.path.isfile(single):
        try:
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise UserError(f"{index}: not a safetensors shard index ({exc})") from None
        return {k: v for shard in shards for k, v in read_checkpoint(os.path.join(hf_dir, shard)).items()}
    for path in (single, legacy):
        if os.path.isfile(path):
            return read_checkpoint(path)
    raise UserError(f"{hf_dir!r} has no weights: expected model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def mask2former_kwargs(config: dict, source: str) -> dict[str, Any]:
    """The `build_mask2former` arguments of the network a Hugging Face Mask2Former config describes."""
    swin = config.get("backbone_config") or {}
    if swin.get("model_type") != "swin" or config.get("use_timm_backbone") or config.get("backbone"):
        raise UserError(f"{source}: only Swin backbones (backbone_config.model_type 'swin') can be imported, got {swin.get('model_type') or config.get('backbone')!r}")
    expected = {
        ("backbone_config", "use_absolute_embeddings"): (swin.get("use_absolute_embeddings", False), False),
        ("backbone_config", "hidden_act"): (swin.get("hidden_act", "gelu"), "gelu"),
        ("backbone_config", "layer_norm_eps"): (swin.get("layer_norm_eps", 1e-5), 1e-5),
        ("backbone_config", "num_channels"): (swin.get("num_channels", 3), 3),
        ("backbone_config", "out_features"): (swin.get("out_features"), ["stage1", "stage2", "stage3", "stage4"]),
        ("encoder_feedforward_dim",): (config.get("encoder_feedforward_dim", ENCODER_FFN_DIM), ENCODER_FFN_DIM),
        ("activation_function",): (config.get("activation_function", "relu"), "relu"),
        ("feature_strides",): (config.get("feature_strides", [4, 8, 16, 32]), [4, 8, 16, 32]),
    }
    for key, (value, wanted) in expected.items():
        if value != wanted:
            raise UserError(f"{source}: {'.'.join(key)} is {value!r}; only {wanted!r} matches the Mask2Former architecture built here")
    hidden_dim, feature_size = config.get("hidden_dim", 256), config.get("feature_size", 256)
    if config.get("enforce_input_projection") and hidden_dim == feature_size:
        raise UserError(f"{source}: enforce_input_projection with feature_size == hidden_dim is not supported (the decoder projects only when they differ)")
    id2label = config.get("id2label") or {}
    if not id2label:
        raise UserError(f"{source}: id2label is empty; the number of classes cannot be known")

    shape = (swin["embed_dim"], tuple(swin["depths"]), tuple(swin["num_heads"]))
    size = next((name for name, preset in SWIN_PRESETS.items() if preset == shape), None)
    backbone_kwargs = dict(
        patch_size=swin.get("patch_size", 4),
        window_size=swin.get("window_size", 7),
        mlp_ratio=swin.get("mlp_ratio", 4.0),
        qkv_bias=swin.get("qkv_bias", True),
        drop_rate=swin.get("hidden_dropout_prob", 0.0),
        attn_drop_rate=swin.get("attention_probs_dropout_prob", 0.0),
        drop_path_rate=swin.get("drop_path_rate", 0.1),
        pretrain_img_size=swin.get("image_size", 224),
    )
    if size is None:
        backbone_kwargs.update(embed_dim=shape[0], depths=list(shape[1]), num_heads=list(shape[2]))
    return dict(
        backbone=f"swin_{size}" if size else "swin",
        backbone_kwargs=backbone_kwargs,
        num_classes=len(id2label),
        num_queries=config.get("num_queries", 100),
        hidden_dim=hidden_dim,
        nheads=config.get("num_attention_heads", 8),
        dim_feedforward=config.get("dim_feedforward", 2048),
        dec_layers=config.get("decoder_layers", 10),
        pre_norm=config.get("pre_norm", False),
        conv_dim=feature_size,
        mask_dim=config.get("mask_feature_size", 256),
        num_encoder_layers=config.get("encoder_layers", 6),
        common_stride=config.get("common_stride", 4),
        dropout=config.get("dropout", 0.0),
    )


def _rename(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """HF keys -> ours; raises on a key it does not know so nothing is dropped silently."""
    state = {
        key.replace(_BACKBONE, "backbone.", 1).replace(_PIXEL_DECODER, "pixel_decoder.", 1).replace(_TRANSFORMER, "transformer_decoder.", 1): value
        for key, value in state.items()
        if not _IGNORED.search(key)
    }
    num_fpn_levels = len({m.group(2) for key in state if (m := _FPN.fullmatch(key)) and m.group(1) == "adapter"})
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in state.items():
        if m := _SWIN_QKV.fullmatch(key):
            stage, block, long_name, short_name, kind = m.groups()
            qkv.setdefault((stage, block, kind), {})[(long_name or short_name)[0]] = value
        elif m := _CROSS_IN_PROJ.fullmatch(key):
            layer, kind = m.groups()
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"transformer_decoder.layers.{layer}.cross_attn.{name}_proj.{kind}"] = part
        elif m := _OUT_NORM.fullmatch(key):
            out[f"backbone.out_norms.{int(m.group(1)) - 1}.{m.group(2)}"] = value
        elif m := _FPN.fullmatch(key):
            # HF numbers the FPN levels finest first from 1; ours are listed coarsest first.
            which, number, index, kind = m.groups()
            convs = "lateral_convs" if which == "adapter" else "output_convs"
            out[f"pixel_decoder.{convs}.{num_fpn_levels - int(number)}.{index}.{kind}"] = value
        else:
            for pattern, target in _RENAMES:
                if re.fullmatch(pattern, key):
                    out[re.sub(pattern, target, key)] = value
                    break
            else:
                unknown.append(key)
    for (stage, block, kind), parts in qkv.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise UserError(f"{source}: Swin stage {stage} block {block} lacks some of query/key/value {kind}")
        out[f"backbone.layers.{stage}.blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if unknown:
        raise UserError(f"{source}: {len(unknown)} weights of unknown role, e.g. {unknown[:3]}")
    return out


def convert_hf_checkpoint(hf_dir: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a Hugging Face Mask2FormerForUniversalSegmentation directory.

    Returns:
        state_dict: tensors keyed as in our Mask2Former.
        kwargs: the `build_mask2former` arguments of the matching network, which the state dict
            fits. The task is not stored in HF checkpoints.

    Raises:
        UserError: not a Mask2Former directory, unreadable weights, or an architecture this
            network cannot express (non-Swin backbone, absolute position embeddings, ...).
    """
    config = _read_config(hf_dir)
    kwargs = mask2former_kwargs(config, os.path.join(hf_dir, "config.json"))
    state = _rename(_read_weights(hf_dir), hf_dir)
    return state, kwargs


def load_hf_checkpoint(hf_dir: str) -> Mask2Former:
    """Our Mask2Former with the weights of a Hugging Face checkpoint directory, in eval mode.

    Usage::

        from model.convert import load_hf_checkpoint
        model = load_hf_checkpoint("checkpoints/mask2former-swin-tiny-coco-panoptic")
        outputs = model(images)  # images: (B, 3, H, W) normalised with ImageNet mean/std
        outputs["pred_logits"], outputs["pred_masks"]  # (B, Q, K+1), (B, Q, H/4, W/4)

    To fine-tune from it instead, build `build_mask2former(**convert_hf_checkpoint(hf_dir)[1])`
    and load the state dict into it.
    """
    state, kwargs = convert_hf_checkpoint(hf_dir)
    model = build_mask2former(**kwargs)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape than the config implies
        raise UserError(f"{hf_dir!r} does not fit the network its config describes ({exc})") from exc
    if result.missing_keys or result.unexpected_keys:
        raise UserError(
            f"{hf_dir!r} does not fit the network its config describes: missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return model.eval()
