"""`automl export` of a tiny untrained Mask2Former: ONNX Runtime agrees with PyTorch in every mode, the batch is
dynamic, every node is a standard ONNX op, a too-small size is refused, and the AOTInductor package round-trips."""

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from omegaconf import OmegaConf

from automl.actions.export import deployable, export_path, load_network, run_export
from automl.spec import load_spec
from automl.training import build_label_map, build_module
from model.errors import UserError
from model.export import DeployableMask2Former, panoptic_queries, prediction_from_outputs
from model.postprocess import panoptic_inference
from tests.conftest import ROOT, SMOKE_SPEC, data_overrides

TINY_MODEL = [
    "model.backbone.swin.depths=[1,1,1,1]", "model.mask_former.dec_layers=2", "model.mask_former.num_object_queries=8",
    "model.mask_former.dim_feedforward=64", "model.sem_seg_head.transformer_enc_layers=1",
]
SIZE = ["export.input_height=64", "export.input_width=64", "dataset.augmentation.test_min_size=64", "dataset.augmentation.test_max_size=64"]
# An untrained network is never confident: keep every query so that panoptic segments appear.
KEEP_ALL_QUERIES = ["model.object_mask_threshold=0.0", "model.overlap_threshold=0.0"]


def tiny_checkpoint(spec, path, seed=0):
    """An untrained network saved as training saves it, its class head biased so that queries differ in class."""
    torch.manual_seed(seed)
    module = build_module(spec, build_label_map(spec))
    with torch.no_grad():
        module.model.transformer_decoder.class_embed.bias.normal_(0, 2)
    torch.save({"state_dict": module.state_dict(), "spec": OmegaConf.to_container(spec, resolve=True)}, path)
    return str(path)


@pytest.fixture
def export_spec(synthetic_data, tmp_path):
    def load(*overrides):
        spec = load_spec(SMOKE_SPEC, [*data_overrides(synthetic_data), f"results_dir={tmp_path / 'results'}", *TINY_MODEL, *SIZE, *overrides])
        checkpoint = tiny_checkpoint(spec, tmp_path / f"{spec.model.mode}.pth")
        return load_spec(SMOKE_SPEC, [*data_overrides(synthetic_data), f"results_dir={tmp_path / 'results'}", *TINY_MODEL, *SIZE, *overrides,
                                      f"export.checkpoint={checkpoint}"], action="export")

    return load


@pytest.mark.parametrize(
    "mode, outputs",
    [
        ("semantic", ["pred_masks"]),
        ("instance", ["pred_masks", "pred_scores", "pred_classes"]),
        ("panoptic", ["prob_masks", "pred_masks", "pred_scores", "pred_classes"]),
    ],
)
def test_onnx_export_of_each_mode_matches_pytorch_in_onnx_runtime(export_spec, mode, outputs):
    result = run_export(export_spec(f"model.mode={mode}", *KEEP_ALL_QUERIES))
    model = onnx.load(str(result.path))
    assert [i.name for i in model.graph.input] == ["inputs"]
    assert [o.name for o in model.graph.output] == outputs
    assert min(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert all(row["difference"] <= row["tolerance"] for row in result.parity.values())
    report = json.loads(result.report.read_text())
    assert report["passed"] and sorted(report["parity"]) == sorted(outputs)


def test_exported_graph_holds_only_standard_onnx_ops_with_grid_sample_for_deformable_attention(export_spec):
    model = onnx.load(str(run_export(export_spec()).path))
    domains = {node.domain for node in model.graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    assert "GridSample" in {node.op_type for node in model.graph.node}
    assert not model.functions


def test_dynamic_batch_runs_one_and_three_images_like_pytorch(export_spec, tmp_path):
    spec = export_spec("model.mode=instance")
    result = run_export(spec)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    _, network = load_network(spec, spec.export.checkpoint)
    graph = deployable(spec, network)
    torch.manual_seed(1)
    for batch in (1, 3):
        images = torch.rand(batch, 3, 64, 64) * 255
        masks, scores, classes = session.run(None, {"inputs": images.numpy()})
        with torch.inference_mode():
            expected = graph(images)
        assert masks.shape[0] == scores.shape[0] == classes.shape[0] == batch
        np.testing.assert_allclose(scores, expected[1].numpy(), atol=1e-4)
        assert (classes == expected[2].numpy()).all()


def test_shifted_windows_export_at_a_size_that_pads_the_windows(export_spec):
    """A stage with a shifted block on a map that is not whole windows (64x96 -> 16x24 at stride 4, Swin-T's window 7),
    as Swin-T at 544x960: the shift mask's window count must export as a ceiling (ONNX integer division truncates)."""
    spec = export_spec("model.backbone.swin.depths=[2,1,1,1]", "model.backbone.swin.window_size=7", "export.input_width=96")
    result = run_export(spec)

    assert all(check["difference"] <= check["tolerance"] for check in result.parity.values()), result.parity


def test_a_fixed_batch_is_written_into_the_graph(export_spec):
    result = run_export(export_spec("export.batch_size=2"))
    assert onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


def test_too_small_size_is_refused_before_export_naming_the_smallest_that_works(export_spec):
    spec = export_spec("export.input_height=32", "export.input_width=32")
    with pytest.raises(UserError, match=r"32x32 is too small for this network; the smallest that works is 64x64"):
        run_export(spec)
    assert not export_path(spec, "onnx").exists()


def test_cli_export_prints_the_parity_table_and_refuses_too_small_sizes_without_traceback(export_spec):
    spec = export_spec()
    overrides = [f"{k}={v}" for k, v in (("export.checkpoint", spec.export.checkpoint),)]
    common = [sys.executable, "-m", "automl.cli", "export", "-e", str(SMOKE_SPEC), *data_overrides_of(spec), *TINY_MODEL, *overrides]
    done = subprocess.run([*common, *SIZE], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "largest difference" in done.stdout and "pred_classes" in done.stdout
    refused = subprocess.run([*common, "export.input_height=32", "export.input_width=32"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr and "smallest that works is 64x64" in refused.stderr


def data_overrides_of(spec):
    """The dataset and results overrides that rebuild `spec` from the smoke spec."""
    keys = ["dataset.label_map", "results_dir", "dataset.augmentation.test_min_size", "dataset.augmentation.test_max_size"]
    for split in ("train", "val"):
        keys += [f"dataset.{split}.img_dir", f"dataset.{split}.panoptic_json", f"dataset.{split}.panoptic_dir"]
    return [f"{key}={OmegaConf.select(spec, key)}" for key in keys]


def test_in_graph_panoptic_rules_give_the_segments_of_the_reference_post_processing():
    """The fixed-shape panoptic rules in the graph, read back by `prediction_from_outputs`, equal
    `model.postprocess.panoptic_inference` on random queries (same resolution, so no resize in between)."""
    torch.manual_seed(3)
    num_queries, num_classes, size = 12, 5, (24, 20)
    is_thing = [True, True, False, False, True]
    for _ in range(5):
        class_logits = torch.randn(num_queries, num_classes + 1) * 3
        mask_logits = torch.randn(num_queries, *size) * 4
        names = ("prob_masks", "pred_masks", "pred_scores", "pred_classes")
        outputs = dict(zip(names, (t[0] for t in panoptic_queries(class_logits[None], mask_logits[None], 0.3, 0.6))))
        got = prediction_from_outputs(outputs, "panoptic", size, size, is_thing)
        expected_ids, expected_segments = panoptic_inference(class_logits, mask_logits, is_thing, 0.3, 0.6)
        assert [(s["category_id"], s["isthing"]) for s in got["segments"]] == [(s["category_id"], s["isthing"]) for s in expected_segments]
        assert torch.equal(got["panoptic"], expected_ids)


def test_deployable_graph_normalises_raw_pixels_like_training():
    class Probe(torch.nn.Module):
        def forward(self, images):
            self.seen = images
            return {"pred_logits": torch.zeros(1, 2, 3), "pred_masks": torch.zeros(1, 2, 4, 4)}

    probe = Probe()
    graph = DeployableMask2Former(probe, "semantic", [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    graph(torch.full((1, 3, 16, 16), 255.0))
    assert torch.allclose(probe.seen, torch.full((1, 3, 16, 16), 2.0))


def test_aoti_package_round_trips_through_aoti_load_package(export_spec):
    result = run_export(export_spec("export.format=aoti"))
    assert result.path.suffix == ".pt2" and result.path.exists()
    runner = torch._inductor.aoti_load_package(str(result.path))
    assert runner.get_metadata()["mode"] == "panoptic"
    for batch in (1, 3):
        outputs = runner(torch.zeros(batch, 3, 64, 64))
        assert [tuple(o.shape) for o in outputs][2:] == [(batch, 8), (batch, 8)]
    assert json.loads(result.report.read_text())["passed"]


def test_panoptic_semantic_map_of_pixels_no_kept_query_covers_is_the_most_confident_query_class():
    """No tie of zeros decides a pixel's class (its argmax would be query 0, here a "no object" query)."""
    num_queries, size, is_thing = 4, (6, 5), [True, False, True]
    prob_masks = torch.zeros(num_queries, *size)
    prob_masks[2, :3] = 0.7  # query 2 (class 0) covers the top half only
    prob_masks[3, :2, :2] = 0.9  # query 3 (class 1) wins its corner
    outputs = {
        "prob_masks": prob_masks,
        "pred_masks": prob_masks > 0.5,
        "pred_scores": torch.tensor([0.95, 0.2, 0.6, 0.8]),
        "pred_classes": torch.tensor([3, 2, 0, 1]),  # query 0 is "no object" (class 3 of 3), however confident
    }
    semantic = prediction_from_outputs(outputs, "panoptic", size, size, is_thing)["semantic"]
    expected = torch.full(size, 1)  # query 3 is the most confident of a real class
    expected[:3] = 0
    expected[:2, :2] = 1
    assert torch.equal(semantic, expected)
    outputs["prob_masks"] = torch.zeros(num_queries, *size)  # nothing kept: one class everywhere
    assert torch.equal(prediction_from_outputs(outputs, "panoptic", size, size, is_thing)["semantic"], torch.full(size, 1))
