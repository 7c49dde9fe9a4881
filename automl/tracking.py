"""MLflow tracking: where the store is, one run per training (or per trial under a sweep's parent).

Everything goes through an explicit `MlflowClient`, never MLflow's global "active run", so the
sweep driver can write many runs from one process (the only writer of the SQLite store).
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _tracking_store_registry  # MLflow's own table of store schemes
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH
from omegaconf import DictConfig, OmegaConf

from model.data.files import is_remote
from model.errors import UserError

TRIAL_TAG = "automl.trial_id"
RESULTS_TAG = "automl.results_dir"  # the folder whose command writes the run (one writer per folder)
PARENT_TAG = "mlflow.parentRunId"
REGISTERED_MODEL = "mask2former"
# MLflow 3 opens an experiment of this kind in its classic training view (runs, charts), not the GenAI one.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# An experiment tag the UI reads as a saved runs-table layout when opened with ?viewStateShareKey=<key>.
SHARED_VIEW_TAG = "mlflow.sharedViewState."
RUNS_VIEW = "sweep"  # the share key of the runs-table layout a sweep saves
# Short names of searched keys in child run names; other keys go by their last component.
SHORT_NAMES = {
    "train.optim.lr": "lr",
    "train.optim.weight_decay": "wd",
    "train.optim.backbone_multiplier": "bb",
    "train.clip_grad_norm": "clip",
    "model.backbone.swin.drop_path_rate": "dp",
    "model.mask_former.no_object_weight": "noobj",
    "model.mask_former.class_weight": "cls",
    "model.mask_former.mask_weight": "mask",
    "model.mask_former.dice_weight": "dice",
    "model.mask_former.num_object_queries": "q",
    "model.mask_former.dec_layers": "dec",
    "dataset.augmentation.lsj_min_scale": "lsj_min",
    "dataset.augmentation.lsj_max_scale": "lsj_max",
}


def tracking_uri(spec: DictConfig) -> str:
    """`automl.tracking_uri` (a store MLflow can open), else the embedded store `sqlite:///<results_dir>/mlflow.db`."""
    uri = spec.automl.tracking_uri
    if uri:
        try:
            _tracking_store_registry.get_store_builder(uri)
        except MlflowException:
            raise UserError(
                f"automl.tracking_uri: '{uri}' is not a store MLflow opens; expected sqlite:///PATH, file:PATH, "
                f"http(s)://HOST:PORT, databricks, or a database URI such as postgresql://..."
            ) from None
        return uri
    # SQLAlchemy reads '?' as the start of a query and decodes '%XX': quote those (and '#') so the
    # database stays inside results_dir. Nothing else: MLflow also creates the folder the URI's text names.
    path = str(Path(spec.results_dir).absolute() / "mlflow.db")
    return "sqlite:///" + path.replace("%", "%25").replace("?", "%3F").replace("#", "%23")


def artifact_root(spec: DictConfig) -> str | None:
    """Where a new experiment keeps its artifacts: beside the sweep's storage when that is object
    storage, <results_dir>/mlartifacts for the embedded store, else the tracking server's default."""
    if is_remote(spec.automl.storage_uri):
        return f"{spec.automl.storage_uri.rstrip('/')}/mlartifacts"
    if tracking_uri(spec).startswith("sqlite:"):
        return str(Path(spec.results_dir) / "mlartifacts")
    return None


def experiment_name(spec: DictConfig, spec_path: str | os.PathLike | None) -> str:
    if spec.automl.experiment_name:
        return spec.automl.experiment_name
    return Path(spec_path).stem if spec_path else "mask2former"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {dotted.key: value} (lists kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def spec_params(spec: DictConfig) -> dict[str, Any]:
    """The parameters worth logging: the whole resolved spec minus sections no training reads."""
    tree = OmegaConf.to_container(spec, resolve=True)
    for unused in ("wandb", "encryption_key", "evaluate", "inference", "export", "gen_trt_engine", "quantize"):
        tree.pop(unused, None)
    return flatten(tree)


def trial_run_name(number: int, config: Mapping[str, Any]) -> str:
    """A child run's name from its values: 't03 lr=2.1e-04 wd=0.03' for the sweep's third trial."""
    values = " ".join(f"{SHORT_NAMES.get(key, key.rsplit('.', 1)[-1])}={_short_value(value)}" for key, value in config.items())
    return f"t{number:02d} {values}".strip()


def _short_value(value: Any) -> str:
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:.1e}" if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.3g}"
    return str(value)


def headline(metrics: Mapping[str, float]) -> dict[str, float]:
    """The scores over all classes (per-class values have keys 'PQ/3', 'IoU/0': metric / train id)."""
    return {k: v for k, v in metrics.items() if "/" not in k}


def per_class_rows(metrics: Mapping[str, Any], class_names: Mapping[int, str] | None = None) -> list[dict[str, Any]]:
    """Per-class values as one row per class: {"class": train id, "name": ..., "PQ": ..., "IoU": ...}."""
    rows: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        if "/" in key:
            name, cls = key.split("/", 1)
            row = rows.setdefault(cls, {"class": cls})
            if class_names is not None and cls.isdigit() and int(cls) in class_names:
                row["name"] = class_names[int(cls)]
            row[name] = None if isinstance(value, float) and math.isnan(value) else value
    return list(rows.values())


def per_class_html(rows: list[dict[str, Any]], title: str) -> str:
    """A small standalone HTML table of `per_class_rows` (what MLflow's artifact viewer shows)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cell = lambda v: "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else html.escape(str(v)))  # noqa: E731
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows)
    return (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font:14px sans-serif}td,th{padding:2px 10px;text-align:right}th{border-bottom:1px solid #999}</style>"
        f"<h3>{html.escape(title)}</h3><table><tr>{head}</tr>{body}</table>"
    )


def run_tags(spec: DictConfig) -> dict[str, str]:
    backbone = spec.model.backbone.type
    if backbone == "swin":
        backbone = f"swin_{spec.model.backbone.swin.type}"
    return {
        "mode": spec.model.mode,
        "backbone": backbone,
        "dataset": spec.dataset.train.name or spec.dataset.train.type,
        RESULTS_TAG: str(Path(spec.results_dir).resolve()),
    }


class Tracker:
    """One MLflow experiment in one store, with the few operations this platform needs."""

    def __init__(self, uri: str, experiment: str, artifact_root: str | None = None):
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.uri = uri
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            location = artifact_root if not artifact_root or is_remote(artifact_root) else Path(artifact_root).resolve().as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)

    @classmethod
    def for_spec(cls, spec: DictConfig, spec_path: str | os.PathLike | None) -> "Tracker":
        """The spec's store, its new experiments' artifacts at `artifact_root(spec)`."""
        Path(spec.results_dir).mkdir(parents=True, exist_ok=True)
        return cls(tracking_uri(spec), experiment_name(spec, spec_path), artifact_root(spec))

    def start_run(self, name: str, params: Mapping[str, Any] = (), tags: Mapping[str, str] = (), parent_id: str | None = None) -> str:
        all_tags = dict(tags)
        if parent_id:
            all_tags[PARENT_TAG] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def find_child(self, parent_id: str, trial_id: str) -> str | None:
        """The child run of `parent_id` already logging trial `trial_id` (a resumed sweep reuses it)."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'"
        )
        return runs[0].info.run_id if runs else None

    def children(self, parent_id: str) -> list:
        return list(self.client.search_runs([self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=10000))

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(key, _param_value(value)) for key, value in dict(params).items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, params=chunk)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        items = [
            Metric(_metric_key(key), float(value), now, step)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ]
        for chunk in _chunks(items, MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=chunk)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(Path(path).resolve()), artifact_path)

    def log_per_class(self, run_id: str, metrics: Mapping[str, Any], class_names: Mapping[int, str] | None, artifact_dir: str) -> None:
        """Per-class values as `<artifact_dir>/per_class.json` and `.html` (class names beside ids), not as metrics."""
        rows = per_class_rows(metrics, class_names)
        if rows:
            self.client.log_text(run_id, json.dumps(rows, indent=2), f"{artifact_dir}/per_class.json")
            self.client.log_text(run_id, per_class_html(rows, f"{artifact_dir}: per-class values"), f"{artifact_dir}/per_class.html")

    def share_runs_view(self, key: str, metric: str, mode: str, params: Iterable[str]) -> None:
        """Save a runs-table layout (the target metric and `params` as columns, best first) under `key`;
        the UI opens it at `runs_view_url`."""
        view = {
            "orderByKey": f"metrics.`{metric}`",
            "orderByAsc": mode == "min",
            "selectedColumns": [f"metrics.`{metric}`", *(f"params.`{p}`" for p in params), "tags.`status`"],
            "runsExpanded": {},
        }
        self.client.set_experiment_tag(self.experiment_id, f"{SHARED_VIEW_TAG}{key}", json.dumps(view))

    def runs_view_url(self, ui: str, key: str) -> str:
        return f"{ui.rstrip('/')}/#/experiments/{self.experiment_id}/runs?viewStateShareKey={key}"

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def end_interrupted_runs(self, results_dir: str | os.PathLike) -> list[str]:
        """Marks KILLED the runs of `results_dir` still RUNNING: their command was killed (kill -9,
        power loss, a full disk) before it could end them. Call it holding the folder's lock,
        when no other command can be writing them. Returns their ids."""
        folder = str(Path(results_dir).resolve())
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        running = self.client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=10000)
        stale = [run.info.run_id for run in running if run.data.tags.get(RESULTS_TAG) == folder]
        for run_id in stale:
            self.end_run(run_id, "KILLED")
        return stale

    def register(self, run_id: str, artifact_path: str, name: str = REGISTERED_MODEL) -> int:
        """Register an artifact of `run_id` as a new version of model `name`; returns the version."""
        if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
            self.client.create_registered_model(name)
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        return int(self.client.create_model_version(name, source, run_id=run_id).version)


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_VAL_LENGTH else text[: MAX_PARAM_VAL_LENGTH - 3] + "..."


def _metric_key(key: str) -> str:
    # MLflow keys allow letters, digits and _-./ and spaces; per-class keys may carry others.
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class MlflowCallback(Callback):
    """Logs a Lightning run into an MLflow run: every validation's scores (per-class ones as an artifact)
    and the epoch's train loss, at step = the optimiser step.

    Only the first process writes (the others of a DDP run see rank > 0).
    """

    def __init__(self, tracker: Tracker, run_id: str, class_names: Mapping[int, str] | None = None):
        self.tracker, self.run_id, self.class_names = tracker, run_id, class_names

    @rank_zero_only
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("train/") or k == "lr"}
        metrics["epoch"] = trainer.current_epoch
        self.tracker.log_metrics(self.run_id, metrics, step=trainer.global_step)

    @rank_zero_only
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = getattr(pl_module, "validation_metrics", {})
        self.tracker.log_metrics(self.run_id, {f"val/{k}": v for k, v in headline(metrics).items()}, step=trainer.global_step)
        self.tracker.log_per_class(self.run_id, metrics, self.class_names, "val")  # the latest validation's


def latest_sweep_parent(tracker: Tracker) -> str | None:
    """The most recent sweep's parent run in this experiment."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id], filter_string="tags.`automl.policy` = 'on'", order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0].info.run_id if runs else None


def leaderboard(tracker: Tracker, parent_id: str, metric: str, mode: str, top: int = 10) -> list[dict[str, Any]]:
    """The sweep's trials ranked by their best value of `metric`: trial, status, best value, params."""
    rows = []
    for run in tracker.children(parent_id):
        history = [m.value for m in tracker.client.get_metric_history(run.info.run_id, metric) if math.isfinite(m.value)]
        best = (max(history) if mode == "max" else min(history)) if history else float("nan")
        rows.append({"trial": run.data.tags.get(TRIAL_TAG, run.info.run_name), "status": run.data.tags.get("status", run.info.status), metric: best, "params": run.data.params})
    rows.sort(key=lambda r: (r[metric] != r[metric], -r[metric] if mode == "max" else r[metric]))
    return rows[:top]
