"""Checkpoints that do not fit: a class head of another size, a pickled or corrupt file to resume from."""

import logging
import re

import pytest
import torch

from automl.actions.evaluate import evaluate_checkpoint
from automl.actions.inference import run_inference
from automl.spec.model_args import build_network
from automl.training import run_training
from model.checkpoint import save_weights
from model.errors import UserError


class Pickled:
    """Any object of a class: a weights-only load refuses it (unpickling it could run code)."""


@pytest.fixture
def nine_class_checkpoint(smoke_spec, tmp_path):
    """A checkpoint of the smoke network with a 9-class head and no spec (as an import without one would be)."""
    spec = smoke_spec("model.sem_seg_head.num_classes=9", "dataset.contiguous_id=false")
    path = tmp_path / "nine_classes.pth"
    save_weights(path, build_network(spec.model).state_dict(), spec={})
    return path


def test_evaluate_refuses_a_class_head_of_another_size_naming_both(smoke_spec, nine_class_checkpoint):
    spec = smoke_spec(action=None)  # num_classes 6
    with pytest.raises(UserError, match=r"^model\.sem_seg_head\.num_classes: 6, but .*nine_classes\.pth was trained with 9 classes"):
        evaluate_checkpoint(spec, str(nine_class_checkpoint))


def test_inference_refuses_a_class_head_of_another_size_naming_both(smoke_spec, nine_class_checkpoint):
    spec = smoke_spec(action=None)
    with pytest.raises(UserError, match=r"num_classes: 6, but .* trained with 9 classes"):
        run_inference(spec, str(nine_class_checkpoint))


def test_fine_tuning_skips_a_class_head_of_another_size_with_a_warning(smoke_spec, nine_class_checkpoint, caplog):
    spec = smoke_spec("train.num_epochs=1", "train.iters_per_epoch=1", f"train.pretrained_model_path={nine_class_checkpoint}")
    with caplog.at_level(logging.WARNING, logger="model.checkpoint"):
        run_training(spec, progress=False, keep_checkpoints=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipped for shape" in m and "transformer_decoder.class_embed.weight" in m for m in warnings)


@pytest.mark.parametrize("content", ["pickle", "corrupt"])
def test_resuming_from_a_pickled_or_corrupt_checkpoint_is_a_one_line_error_naming_it(smoke_spec, tmp_path, content):
    path = tmp_path / f"{content}.pth"
    if content == "pickle":
        torch.save({"state_dict": {}, "callback": Pickled()}, path)
    else:
        path.write_bytes(b"PK\x03\x04 half a zip file")
    spec = smoke_spec(f"train.resume_training_checkpoint_path={path}")
    with pytest.raises(UserError, match=re.escape(str(path))) as caught:
        run_training(spec, progress=False)
    assert "\n" not in str(caught.value)
