"""Deployed models of a briefly trained tiny Mask2Former: ONNX evaluate and inference agree with the checkpoint;
quantised variants (torchao, ONNX Runtime static QDQ) are written, loadable and reported against the float model."""

import json

import onnx
import pytest
import torch

from automl.actions.evaluate import evaluate_checkpoint
from automl.actions.export import run_export
from automl.actions.inference import run_inference
from automl.actions.quantize import run_quantize
from automl.spec import load_spec
from model.errors import UserError
from tests.conftest import SMOKE_SPEC, data_overrides

EXPORT_SIZE = ["export.input_height=128", "export.input_width=128"]  # the synthetic images are 128 x 128


@pytest.fixture(scope="module")
def trained(trained_smoke, synthetic_data, tmp_path_factory):
    """(spec, checkpoint, onnx file) of the session's trained smoke model (validated on its training images: a PQ
    worth comparing), exported under a results_dir of this module's own."""
    _, result, _ = trained_smoke
    checkpoint = str(result.best_checkpoint)
    overrides = [*data_overrides(synthetic_data, val_split="train"), f"results_dir={tmp_path_factory.mktemp('deployed')}"]
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


@pytest.mark.parametrize("mode", ["weight_only_ptq", "dynamic_ptq"])
def test_torchao_quantization_writes_a_checkpoint_evaluate_loads_and_a_report(trained, tmp_path, mode):
    spec, checkpoint, _ = trained
    spec = spec.copy()
    spec.quantize.update({"backend": "torchao", "mode": mode, "model_path": checkpoint, "results_dir": str(tmp_path), "skip_names": ["*class_embed*"]})
    report = json.loads(run_quantize(spec).read_text())
    quantized = report["quantized"]["path"]
    assert report["quantized"]["size_mb"] < 0.5 * report["float"]["size_mb"]  # int8 linear weights
    assert abs(report["metric_deltas"]["PQ"]) < 10.0 and report["float"]["metrics"]["PQ"] > 20.0
    assert report["float"]["latency_ms"] > 0 and report["quantized"]["latency_ms"] > 0
    state = torch.load(quantized, weights_only=True)["state_dict"]
    assert type(state["model.transformer_decoder.class_embed.weight"]) is torch.Tensor  # skipped: float
    assert type(state["model.transformer_decoder.mask_embed.layers.0.weight"]) is not torch.Tensor  # quantised
    assert evaluate_checkpoint(spec, quantized)["PQ"] == pytest.approx(report["quantized"]["metrics"]["PQ"])


def test_onnx_static_quantization_is_calibrated_on_the_calibration_images_and_reported(trained, synthetic_data, tmp_path):
    spec, _, onnx_file = trained
    spec = spec.copy()
    spec.quantize.update({"backend": "onnx", "mode": "static_ptq", "model_path": str(onnx_file), "results_dir": str(tmp_path), "skip_names": ["*class_embed*"]})
    spec.dataset.quant_calibration_dataset.images_dir = str(synthetic_data / "train" / "images")
    report = json.loads(run_quantize(spec).read_text())
    quantized = onnx.load(report["quantized"]["path"])
    dequantized = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    int8_weights = {n.name for n in quantized.graph.node if n.op_type in ("Conv", "MatMul", "Gemm") and n.input[1] in dequantized}
    assert any("mask_embed" in name for name in int8_weights) and not any("class_embed" in name for name in int8_weights)
    assert report["quantized"]["size_mb"] < 0.6 * report["float"]["size_mb"]
    assert set(report["metric_deltas"]) == {"PQ", "SQ", "RQ", "mIoU", "AP"}


def test_modelopt_backend_without_the_package_names_it(trained, tmp_path):
    spec, checkpoint, _ = trained
    spec = spec.copy()
    spec.quantize.update({"backend": "modelopt.pytorch", "model_path": checkpoint, "results_dir": str(tmp_path)})
    with pytest.raises(UserError, match="pip install nvidia-modelopt"):
        run_quantize(spec)
