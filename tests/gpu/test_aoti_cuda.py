"""An AOTInductor package compiled for CUDA loads and gives PyTorch's outputs (GPU only).

The deploy benchmark's Swin-T package ended its process after the compile; this test takes the
same steps (export_aoti on CUDA, then `AotiPredictor`) on a tiny network, batch 1 and 3.
"""

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from automl.actions.export import deployable, export_aoti, load_network, parity  # noqa: E402
from automl.actions.predictors import AotiPredictor  # noqa: E402
from automl.spec import load_spec  # noqa: E402
from tests.automl.test_export import KEEP_ALL_QUERIES, SIZE, TINY_MODEL, tiny_checkpoint  # noqa: E402
from tests.conftest import SMOKE_SPEC, data_overrides  # noqa: E402


def test_cuda_package_matches_pytorch_for_batch_1_and_3(synthetic_data, tmp_path):
    spec = load_spec(SMOKE_SPEC, [*data_overrides(synthetic_data), f"results_dir={tmp_path}", *TINY_MODEL, *SIZE, *KEEP_ALL_QUERIES])
    spec, network = load_network(spec, tiny_checkpoint(spec, tmp_path / "tiny.pth"))
    graph = deployable(spec, network).cuda()
    torch.manual_seed(0)
    export_aoti(graph, torch.rand(2, 3, 64, 64, device="cuda") * 255, tmp_path / "model.pt2", dynamic_batch=True)
    predictor = AotiPredictor(tmp_path / "model.pt2")
    assert predictor.device.type == "cuda" and predictor.task == "panoptic"
    for batch in (1, 3):
        images = torch.rand(batch, 3, 64, 64, device="cuda") * 255
        with torch.inference_mode():
            expected = graph(images)
        got = predictor(images)
        report = parity({name: value.cpu() for name, value in zip(got, expected)}, {name: value.cpu().numpy() for name, value in got.items()})
        assert all(row["difference"] <= row["tolerance"] for row in report.values()), report
