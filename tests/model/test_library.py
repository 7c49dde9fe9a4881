"""model/ stands alone: the README example runs, nothing outside the library is imported, the metric names are what the metrics return."""

import ast
import re
from pathlib import Path

import numpy as np
import torch

from model.evaluator import SegmentationEvaluator
from model.metrics import METRIC_NAMES

MODEL_DIR = Path(__file__).resolve().parents[2] / "model"


def test_the_readme_example_builds_runs_and_post_processes():
    example = re.search(r"```python\n(.*?)```", (MODEL_DIR / "README.md").read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(example, "model/README.md", "exec"), namespace)  # noqa: S102 (our own documentation)
    assert namespace["out"]["pred_logits"].shape == (1, 100, 134)
    assert namespace["panoptic_ids"].shape == (120, 160)
    assert {s["id"] for s in namespace["segments"]} <= set(namespace["panoptic_ids"].unique().tolist())


def test_model_imports_nothing_from_automl_ray_or_mlflow():
    imported = {}
    for path in MODEL_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                imported.setdefault(name.split(".")[0], []).append(path.relative_to(MODEL_DIR).as_posix())
    assert not {"automl", "ray", "mlflow"} & set(imported), {k: imported[k] for k in ("automl", "ray", "mlflow") if k in imported}


def test_metric_names_are_the_headline_scores_an_evaluation_returns():
    evaluator = SegmentationEvaluator("panoptic", is_thing=[True, False])
    semantic = np.array([[0, 1], [1, 1]])
    panoptic = np.array([[1, 2], [2, 2]])
    segments = [{"id": 1, "category_id": 0, "iscrowd": 0, "isthing": True}, {"id": 2, "category_id": 1, "iscrowd": 0, "isthing": False}]
    instances = {"masks": np.array([[[True, False], [False, False]]]), "labels": np.array([0]), "scores": np.array([0.9])}
    truth = {"semantic": semantic, "panoptic": panoptic, "segments": segments,
             "instances": {"masks": instances["masks"], "labels": np.array([0]), "iscrowd": np.array([False])}}
    prediction = {"semantic": torch.from_numpy(semantic), "panoptic": torch.from_numpy(panoptic),
                  "segments": [{"id": s["id"], "category_id": s["category_id"]} for s in segments], "instances": instances}
    evaluator.update(prediction, truth)
    headline = {name for name in evaluator.compute() if "/" not in name}
    assert headline == set(METRIC_NAMES)
