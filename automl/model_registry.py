"""The sweep's winner shipped: exported to ONNX (with `automl.export_best`), logged as a real MLflow model, registered.

The MLflow model is a pyfunc (`automl/mlflow_models/mask2former_pyfunc.py`, logged as code with the `model`
package) whose `predict` takes images and returns the mode's outputs, with a tensor signature, so that
`mlflow.pyfunc.load_model("models:/mask2former@champion")` works in a fresh process. The registry alias
CHAMPION goes to the new version only once its ONNX export passed the parity check.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from rich.console import Console

from automl.spec.model_args import model_kwargs
from automl.tracking import REGISTERED_MODEL, Tracker
from model.errors import UserError

log = logging.getLogger(__name__)
console = Console()
CHAMPION = "champion"
PYFUNC_FILE = Path(__file__).parent / "mlflow_models" / "mask2former_pyfunc.py"
MODEL_PACKAGE = Path(__file__).resolve().parents[1] / "model"
OUTPUT_DTYPES = {"pred_masks": None, "prob_masks": np.float32, "pred_scores": np.float32, "pred_classes": np.int64}


def signature(mode: str):
    """Input `inputs` (B, 3, H, W) float32; the mode's outputs with their dtypes (batch and sizes variable)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from model.export import INPUT_NAME, OUTPUT_NAMES

    outputs = []
    for name in OUTPUT_NAMES[mode]:
        dtype = OUTPUT_DTYPES[name] or (np.float32 if mode == "semantic" else np.bool_)
        rank = 2 if name in ("pred_scores", "pred_classes") else 4
        outputs.append(TensorSpec(np.dtype(dtype), (-1,) * rank, name))
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1), INPUT_NAME)]), outputs=Schema(outputs))


def log_pyfunc(tracker: Tracker, run_id: str, spec: DictConfig, checkpoint: Path, artifact_path: str = "model") -> None:
    """Save the checkpoint's pyfunc (weights, settings, the `model` package) and log it as `artifact_path` of the run."""
    import mlflow

    from automl.actions.evaluate import spec_for_checkpoint
    from model.checkpoint import read_checkpoint

    spec = spec_for_checkpoint(spec, read_checkpoint(checkpoint))
    network = {**model_kwargs(spec.model), "backbone_weights": ""}  # the checkpoint holds every weight
    model = spec.model
    postprocess = {"object_mask_threshold": model.object_mask_threshold, "overlap_threshold": model.overlap_threshold, "test_topk_per_image": model.test_topk_per_image}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Path(tmp) / "settings.json"
        content = {"network": network, "task": model.mode, "postprocess": postprocess, "pixel_mean": list(spec.dataset.pixel_mean), "pixel_std": list(spec.dataset.pixel_std)}
        settings.write_text(json.dumps(content, default=list))
        saved = Path(tmp) / artifact_path
        mlflow.pyfunc.save_model(
            str(saved), python_model=str(PYFUNC_FILE), artifacts={"checkpoint": str(checkpoint), "settings": str(settings)},
            code_paths=[str(MODEL_PACKAGE)], signature=signature(spec.model.mode), pip_requirements=_requirements(),
        )
        tracker.client.log_artifacts(run_id, str(saved), artifact_path)


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "torch", "timm", "omegaconf", "numpy")]


def publish_winner(tracker: Tracker, run_id: str, spec: DictConfig, checkpoint: Path) -> int:
    """Export (with automl.export_best) and register the winner's checkpoint; returns the model version.

    The ONNX file and its parity report are logged under `best/` of the run; alias CHAMPION is set only when the
    export's parity check passed (a failed export is reported and leaves the alias where it was).
    """
    passed = False
    if spec.automl.export_best:
        from automl.actions.export import run_export

        out = checkpoint.parent / "model.onnx"
        try:
            result = run_export(spec, checkpoint=str(checkpoint), fmt="onnx", out=out)
            passed = True
        except UserError as err:
            console.print(f"[bold red]export of the winner failed:[/] {err}", highlight=False)
        for path in (out, out.with_name(out.name + ".parity.json")):
            if path.exists():
                tracker.log_artifact(run_id, path, "best")
        if passed:
            tracker.set_tags(run_id, {"export.parity": "passed", "export.onnx": f"best/{result.path.name}"})
    log_pyfunc(tracker, run_id, spec, checkpoint)
    version = tracker.register(run_id, "model")
    if passed:
        tracker.client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, str(version))
    console.print(
        f"registered as MLflow model '{REGISTERED_MODEL}' version {version}"
        + (f", alias '{CHAMPION}' (load it with mlflow.pyfunc.load_model('models:/{REGISTERED_MODEL}@{CHAMPION}'))" if passed else ""),
        highlight=False,
    )
    return version
