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
        from omegaconf import OmegaConf

        from model.checkpoint import load_weights
        from model.export import OUTPUT_NAMES, DeployableMask2Former
        from model.mask2former import build_model

        settings = json.loads(open(context.artifacts["settings"]).read())
        network = build_model(OmegaConf.create(settings["model"]))
        load_weights(network, context.artifacts["checkpoint"])
        model = settings["model"]
        self.graph = DeployableMask2Former(
            network.eval(), model["mode"], settings["pixel_mean"], settings["pixel_std"],
            object_mask_threshold=model["object_mask_threshold"], overlap_threshold=model["overlap_threshold"],
            test_topk_per_image=model["test_topk_per_image"],
        ).eval()
        self.names = OUTPUT_NAMES[model["mode"]]

    def predict(self, context, model_input, params=None):
        images = model_input["inputs"] if isinstance(model_input, dict) else model_input
        with torch.inference_mode():
            outputs = self.graph(torch.as_tensor(np.asarray(images, np.float32)))
        return {name: value.numpy() for name, value in zip(self.names, outputs)}


mlflow.models.set_model(Mask2FormerPyfunc())
