"""Importing a Hugging Face Mask2Former checkpoint gives the same predictions as transformers."""

import json

import pytest
import torch
from safetensors.torch import save_file

from model.convert import convert_hf_checkpoint, load_hf_checkpoint, mask2former_kwargs
from model.errors import UserError

transformers = pytest.importorskip("transformers")


def tiny_hf_model(pre_norm=False):
    """A random Mask2Former with a small Swin (two blocks per stage, so shifted windows too)."""
    torch.manual_seed(0)
    swin = transformers.SwinConfig(
        image_size=224, embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=7,
        drop_path_rate=0.0, out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = transformers.Mask2FormerConfig(
        backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32, dim_feedforward=64,
        encoder_layers=2, decoder_layers=4, num_queries=8, num_attention_heads=4, num_labels=5, pre_norm=pre_norm,
    )
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():  # move every weight off its initial value so a swapped tensor cannot go unnoticed
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.mark.parametrize("pre_norm", [False, True])
def test_imported_checkpoint_predicts_what_transformers_predicts(tmp_path, pre_norm):
    hf = tiny_hf_model(pre_norm)
    hf.save_pretrained(tmp_path)
    ours = load_hf_checkpoint(str(tmp_path))

    # 224 x 224: whole windows everywhere; 160 x 288: every Swin stage padded to whole windows.
    for size in [(224, 224), (160, 288)]:
        images = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected = hf(pixel_values=images)
            out = ours(images)
        assert out["pred_masks"].shape == expected.masks_queries_logits.shape == (1, 8, size[0] // 4, size[1] // 4)
        torch.testing.assert_close(out["pred_logits"], expected.class_queries_logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(out["pred_masks"], expected.masks_queries_logits, atol=1e-4, rtol=0)


def test_transformers_5_in_memory_names_convert_like_the_saved_names(tmp_path):
    hf = tiny_hf_model()
    saved, in_memory = tmp_path / "saved", tmp_path / "in_memory"
    hf.save_pretrained(saved)
    in_memory.mkdir()
    (in_memory / "config.json").write_text((saved / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(in_memory / "model.safetensors"))

    from_saved, kwargs = convert_hf_checkpoint(str(saved))
    from_memory, _ = convert_hf_checkpoint(str(in_memory))

    assert from_saved.keys() == from_memory.keys()
    for key in from_saved:
        assert torch.equal(from_saved[key], from_memory[key]), key
    assert kwargs["backbone"] == "swin"
    assert kwargs["num_classes"] == 5
    assert kwargs["dec_layers"] == 4 and kwargs["num_queries"] == 8


def test_published_swin_sizes_are_recognised():
    config = {"backbone_config": {"model_type": "swin", "embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24],
              "out_features": ["stage1", "stage2", "stage3", "stage4"]}, "id2label": {"0": "thing"}}
    assert mask2former_kwargs(config, "config.json")["backbone"] == "swin_tiny"


def test_directories_that_are_not_importable_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="config.json.*not found"):
        convert_hf_checkpoint(str(tmp_path))

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "maskformer"}))
    with pytest.raises(UserError, match="expected 'mask2former'"):
        convert_hf_checkpoint(str(tmp_path))

    tiny_hf_model().config.to_json_file(str(tmp_path / "config.json"))
    with pytest.raises(UserError, match="has no weights"):
        convert_hf_checkpoint(str(tmp_path))

    config = json.loads((tmp_path / "config.json").read_text())
    config["backbone_config"]["use_absolute_embeddings"] = True
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="use_absolute_embeddings"):
        convert_hf_checkpoint(str(tmp_path))
