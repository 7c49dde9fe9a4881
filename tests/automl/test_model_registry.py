"""`automl.export_best` in a 2-trial CPU sweep: the winner leaves an ONNX file that passed the parity check, logged
with the sweep's run, and a registered MLflow model with alias `champion` that a fresh process loads and runs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from mlflow.tracking import MlflowClient

from automl.spec import load_spec
from automl.sweep import run_sweep
from automl.tracking import REGISTERED_MODEL, tracking_uri
from tests.conftest import SMOKE_SPEC, data_overrides

SWEEP = ["automl.num_samples=2", "automl.max_concurrent=2", "automl.max_epochs=2", "train.iters_per_epoch=1", "train.validation_interval=1", "automl.grace_period=1",
         "automl.export_best=true", "export.input_height=128", "export.input_width=128"]

LOAD = """
import sys, mlflow, numpy as np
mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_registry_uri(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/{name}@champion")
outputs = model.predict(np.zeros((2, 3, 128, 128), np.float32))
print(sorted((k, v.shape) for k, v in outputs.items()))
"""


def test_export_best_ships_a_checked_onnx_and_a_champion_model_loadable_in_a_fresh_process(synthetic_data, tmp_path):
    spec = load_spec(SMOKE_SPEC, [*data_overrides(synthetic_data), f"results_dir={tmp_path / 'results'}", *SWEEP], action="train")
    result = run_sweep(spec, SMOKE_SPEC)

    onnx_file = Path(spec.results_dir) / "best" / "model.onnx"
    report = json.loads(onnx_file.with_name("model.onnx.parity.json").read_text())
    assert report["passed"] and report["checkpoint"] == str(result.best.checkpoint)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["prob_masks", "pred_masks", "pred_scores", "pred_classes"]
    session.run(None, {"inputs": np.zeros((1, 3, 128, 128), np.float32)})

    uri = tracking_uri(spec)
    client = MlflowClient(uri, registry_uri=uri)
    logged = {a.path for a in client.list_artifacts(result.parent_run_id, "best")}
    assert {"best/model.onnx", "best/model.onnx.parity.json"} <= logged
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
    assert champion.run_id == result.parent_run_id

    done = subprocess.run([sys.executable, "-c", LOAD.format(name=REGISTERED_MODEL), uri], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "('pred_classes', (2, 16))" in done.stdout and "('prob_masks', (2, 16, 128, 128))" in done.stdout
