"""Deployed models of a briefly trained tiny Mask2Former: ONNX evaluate and inference agree with the checkpoint."""

import json

import pytest

from automl.actions.evaluate import evaluate_checkpoint
from automl.actions.export import run_export
from automl.actions.inference import run_inference
from automl.launch import train_once
from automl.spec import load_spec
from model.errors import UserError
from tests.conftest import SMOKE_SPEC, data_overrides

# Validation on the training images: 30 epochs of the tiny model reach a PQ worth comparing (see test_training.py).
EXPORT_SIZE = ["export.input_height=128", "export.input_width=128"]  # the synthetic images are 128 x 128


@pytest.fixture(scope="module")
def trained(synthetic_data, tmp_path_factory):
    """(spec, checkpoint, onnx file) of the smoke model trained 30 epochs, validated on its training images."""
    results = tmp_path_factory.mktemp("deployed")
    overrides = [*data_overrides(synthetic_data, val_split="train"), f"results_dir={results}", "train.num_epochs=30", "train.validation_interval=30"]
    spec = load_spec(SMOKE_SPEC, overrides, action="train")
    checkpoint = str(train_once(spec, SMOKE_SPEC, progress=False).best_checkpoint)
    spec = load_spec(SMOKE_SPEC, [*overrides, f"export.checkpoint={checkpoint}", *EXPORT_SIZE], action="export")
    return spec, checkpoint, run_export(spec).path


def test_onnx_model_scores_the_pq_of_its_checkpoint_within_half_a_point(trained):
    spec, checkpoint, onnx_file = trained
    reference = evaluate_checkpoint(spec, checkpoint)
    deployed = evaluate_checkpoint(spec, str(onnx_file))
    assert reference["PQ"] > 20.0, "the trained model must segment for the comparison to mean something"
    assert abs(deployed["PQ"] - reference["PQ"]) <= 0.5, (deployed["PQ"], reference["PQ"])
    assert abs(deployed["SQ"] - reference["SQ"]) <= 0.5 and abs(deployed["RQ"] - reference["RQ"]) <= 0.5


def test_onnx_inference_writes_the_files_of_the_checkpoint_with_the_same_segments(trained, tmp_path):
    spec, checkpoint, onnx_file = trained
    outputs = {}
    for name, model in (("checkpoint", checkpoint), ("onnx", str(onnx_file))):
        spec.inference.results_dir = str(tmp_path / name)
        out = run_inference(spec, model)
        outputs[name] = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}, json.loads((out / "panoptic.json").read_text())
    assert outputs["onnx"][0] == outputs["checkpoint"][0]
    segments = {name: [sorted(s["category_id"] for s in a["segments_info"]) for a in content["annotations"]] for name, (_, content) in outputs.items()}
    same = sum(a == b for a, b in zip(segments["onnx"], segments["checkpoint"]))
    assert same >= 0.8 * len(segments["onnx"]), segments  # boundary pixels may differ, the segments found do not


def test_a_deployed_model_of_another_mode_is_refused_naming_model_mode(trained):
    spec, _, onnx_file = trained
    spec = spec.copy()
    spec.model.mode = "semantic"
    with pytest.raises(UserError, match=r"model.mode: 'semantic', but .*model.onnx is a panoptic model"):
        evaluate_checkpoint(spec, str(onnx_file))
