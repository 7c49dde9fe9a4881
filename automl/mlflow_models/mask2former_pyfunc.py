"""The MLflow pyfunc of a Mask2Former checkpoint, logged as "models from code": `predict(images)` -> the mode's outputs.

Loaded by `mlflow.pyfunc.load_model(...)` in any process with torch and timm: the `model` package travels with
the MLflow model (code_paths), the weights and the settings as its artifacts. Input: (B, 3, H, W) float32 RGB on
the 0..255 scale, H and W multiples of 32; output: a dict of numpy arrays named as `model.export.OUTPUT_NAMES`.
"""

import json

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel


class Mask2FormerPyfunc(PythonModel):
    def load_context(self, context):
        from model import build_mask2former
        from model.checkpoint import load_weights
        from model.export import OUTPUT_NAMES, DeployableMask2Former

        settings = json.loads(open(context.artifacts["settings"]).read())
        network = build_mask2former(**settings["network"])
        load_weights(network, context.artifacts["checkpoint"])
        self.graph = DeployableMask2Former(
            network.eval(), settings["task"], settings["pixel_mean"], settings["pixel_std"], **settings["postprocess"]
        ).eval()
        self.names = OUTPUT_NAMES[settings["task"]]

    def predict(self, context, model_input, params=None):
        images = model_input["inputs"] if isinstance(model_input, dict) else model_input
        with torch.inference_mode():
            outputs = self.graph(torch.as_tensor(np.asarray(images, np.float32)))
        return {name: value.numpy() for name, value in zip(self.names, outputs)}


mlflow.models.set_model(Mask2FormerPyfunc())
