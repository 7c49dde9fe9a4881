"""`automl`: the command line of the platform.

Every action takes `-e/--experiment-spec SPEC.yaml` followed by dotted overrides
(`train.optim.lr=1e-4 model.mode=instance`); errors a user can cause are printed without a
traceback and exit with status 2.
"""

from __future__ import annotations

import errno
import io
import logging
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Tuple

import typer
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from rich.text import Text

from automl.lock import is_launched_worker, results_lock
from automl.spec import load_spec
from automl.spec.load import check_writable
from automl.spec.schema import DEFAULT_SCHEMA_DIR, write_schemas, write_tao_space
from model.errors import NonFiniteLossError, UserError

if TYPE_CHECKING:
    from automl.search.space import SearchSpace

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, help=__doc__.split("\n")[0])
spec_app = typer.Typer(no_args_is_help=True, help="Inspect specs.")
app.add_typer(spec_app, name="spec")
space_app = typer.Typer(no_args_is_help=True, help="Inspect search spaces.")
app.add_typer(space_app, name="space")
data_app = typer.Typer(no_args_is_help=True, help="Synthetic data and dataset checks.")
app.add_typer(data_app, name="data")
console = Console()

SpecOption = typer.Option(..., "-e", "--experiment-spec", help="The experiment spec (YAML).", exists=False)
OverridesArgument = typer.Argument(None, help="Dotted overrides, e.g. train.optim.lr=1e-4", show_default=False)


def output_folder(option: str, folder: Path) -> Path:
    """`folder` if it is, or can become, a folder this user writes in; else a UserError naming `option`."""
    problem = next(check_writable(option, str(folder.absolute())), None)
    if problem:
        raise UserError(problem)
    return folder


def load(spec: Path | None, overrides: Optional[List[str]], action: str | None = None, need_checkpoint: bool = True) -> DictConfig:
    """The one place the CLI turns `-e SPEC k=v ...` into a validated spec."""
    return load_spec(spec, overrides or [], action=action, need_checkpoint=need_checkpoint)


@spec_app.command("show")
def spec_show(spec: Path = SpecOption, overrides: Optional[List[str]] = OverridesArgument) -> None:
    """Print the resolved spec (defaults + file + overrides), validated."""
    console.print(OmegaConf.to_yaml(load(spec, overrides)), highlight=False, markup=False, end="")


@space_app.command("show")
def space_show(spec: Path = SpecOption, overrides: Optional[List[str]] = OverridesArgument) -> None:
    """Print the search space automl.search_space resolves to, checked against the train schema."""
    from automl.search import resolve_search_space

    console.print(format_space(resolve_search_space(load(spec, overrides))))


def format_space(space: SearchSpace) -> str:
    """The space as a table: what is searched, over what, under which constraints."""
    rows = space.describe()
    table = Table(title=f"{space.source}: {len(space)} searched parameter{'s' if len(space) != 1 else ''}")
    for column in rows[0]:
        table.add_column(column, no_wrap=column == "parameter", overflow="fold")
    for row in rows:
        table.add_row(*row.values())
    text = Console(file=io.StringIO(), width=160, color_system=None)
    text.print(table)
    return text.file.getvalue()


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., "--out", help="Output folder."),
    num_images: int = typer.Option(24, "--num-images", help="Images in all (a quarter go to val)."),
    size: Tuple[int, int] = typer.Option((128, 128), "--size", help="Image height and width."),
    seed: int = typer.Option(0, "--seed"),
    archives: bool = typer.Option(False, "--archives", help="Also write images.tar.gz and images_panoptic.tar.gz."),
) -> None:
    """Write the synthetic dataset in all three formats (COCO panoptic, COCO instance, ADE) with its label map."""
    from model.data import write_synthetic_dataset

    paths = write_synthetic_dataset(output_folder("--out", out), num_images=num_images, size=size, seed=seed, archives=archives)
    console.print(f"wrote {num_images} images of {size[0]}x{size[1]} under {out} (label map {paths['label_map']})", highlight=False)


@data_app.command("check")
def data_check(
    spec: Path = SpecOption,
    overrides: Optional[List[str]] = OverridesArgument,
    split: str = typer.Option("val", "--split", help="train, val or test."),
) -> None:
    """Validate a dataset split against the spec and print the counts per class."""
    from automl.spec.model_args import build_split_dataset
    from automl.training import build_label_map
    from model.data import check_dataset

    cfg = load(spec, overrides)
    if split not in ("train", "val", "test"):
        raise UserError(f"--split: '{split}' is not one of train, val, test")
    label_map = build_label_map(cfg)
    dataset = build_split_dataset(cfg, split, label_map, is_train=False)
    report = check_dataset(dataset)
    table = Table(title=f"dataset.{split}: {report['images']} images, all valid", header_style="bold")
    for column in ("id", "name", "isthing", "images", "instances", "crowd"):
        table.add_column(column, justify="right" if column in ("id", "images", "instances", "crowd") else "left")
    for row in report["classes"]:
        table.add_row(*(str(row[c]) for c in ("id", "name", "isthing", "images", "instances", "crowd")))
    console.print(table)


@app.command()
def convert(
    from_hf: Path = typer.Option(..., "--from-hf", help="A Hugging Face Mask2FormerForUniversalSegmentation folder (config.json + safetensors)."),
    out: Path = typer.Option(..., "--out", help="The checkpoint to write (.pth)."),
) -> None:
    """Import a public Mask2Former checkpoint: weights plus the matching model.* spec (fine-tune with train.pretrained_model_path)."""
    import yaml

    from automl.spec.model_args import spec_model_values
    from model.checkpoint import save_weights
    from model.convert import convert_hf_checkpoint

    state, kwargs = convert_hf_checkpoint(str(from_hf))
    model_values = spec_model_values(kwargs)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(out, state, {"model": model_values})
    console.print(f"wrote {out} ({len(state)} tensors). Its model section, for your spec:", highlight=False)
    console.print(yaml.safe_dump({"model": model_values}, sort_keys=False), highlight=False, markup=False)


@app.command()
def schema(out: Path = typer.Option(DEFAULT_SCHEMA_DIR, "--out", help="Output folder.")) -> None:
    """Write <action>.schema.json, spec templates and manifest.json (and search_spaces/tao.yaml) from the spec dataclasses."""
    written = write_schemas(output_folder("--out", out))
    if out.resolve() == DEFAULT_SCHEMA_DIR.resolve():  # the tao space is derived from the train schema
        written.append(write_tao_space())
    for path in written:
        console.print(f"wrote {path}", highlight=False)


@app.command()
def launch(
    spec: Path = SpecOption,
    overrides: Optional[List[str]] = OverridesArgument,
    policy: Optional[str] = typer.Option(None, "--policy", help="on: hyperparameter sweep (default); off: one training run."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted sweep of this spec."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow server (default: sqlite store in results_dir)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join a Ray cluster ('auto' or ray://host:port)."),
) -> None:
    """Train: a sweep over the search space (--policy on) or one plain run (--policy off), tracked in MLflow."""
    extra = [f"automl.{key}={value}" for key, value in (("policy", policy), ("tracking_uri", tracking_uri), ("ray_address", ray_address)) if value]
    cfg = load(spec, [*(overrides or []), *extra], action="train")
    with results_lock(cfg.results_dir):
        from automl.preflight import check_training_data

        if not is_launched_worker():  # the launcher checked the data before it started this worker
            check_training_data(cfg, console)
        if cfg.automl.policy == "off":
            from automl.launch import train_once

            train_once(cfg, spec)
            return
        from automl.sweep import SweepFailed, SweepInterrupted, run_sweep

        try:
            result = run_sweep(cfg, spec, resume=resume)
        except SweepInterrupted as stop:
            console.print(f"{stop}; continue it with: automl launch -e {spec} {' '.join(overrides or [])} --resume", highlight=False)
            raise typer.Exit(130)
        except SweepFailed as failure:
            Console(stderr=True).print(f"[bold red]sweep failed:[/] {failure}", highlight=False)
            raise typer.Exit(1)
    print_leaderboard(cfg, spec, result.parent_run_id)
    console.print(f"best checkpoint: {result.best.checkpoint}", highlight=False)
    _print_ui_hint(cfg)


@app.command()
def evaluate(
    spec: Path = SpecOption,
    overrides: Optional[List[str]] = OverridesArgument,
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Score these prediction files instead of a checkpoint."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Validation batch size."),
) -> None:
    """Score evaluate.checkpoint ('best', 'latest', a checkpoint, .onnx or .pt2 file) or evaluate.trt_engine on dataset.val, or --predictions of any system."""
    from automl.actions.evaluate import evaluate_checkpoint, evaluate_predictions, print_metrics, write_metrics
    from automl.training import build_label_map

    cfg = load(spec, overrides, "evaluate", need_checkpoint=predictions is None)
    with nullcontext() if predictions is not None else results_lock(cfg.results_dir):
        if predictions is not None:
            metrics = evaluate_predictions(cfg, predictions)
        else:
            model = cfg.evaluate.trt_engine or cfg.evaluate.checkpoint  # trt_engine: any deployed model (engine, .onnx, .pt2)
            metrics = evaluate_checkpoint(cfg, model, batch_size or (cfg.evaluate.batch_size if cfg.evaluate.batch_size > 0 else None))
        out = Path(cfg.evaluate.results_dir or Path(cfg.results_dir) / "evaluate")
        path = write_metrics(metrics, out, build_label_map(cfg))
    print_metrics(metrics)
    console.print(f"wrote {path}", highlight=False)


@app.command()
def inference(
    spec: Path = SpecOption,
    overrides: Optional[List[str]] = OverridesArgument,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per batch."),
) -> None:
    """Run inference.checkpoint (or a .onnx/.pt2 file, or inference.trt_engine) on dataset.test.img_dir: panoptic PNG + JSON, COCO instance results, semantic PNGs, overlays."""
    from automl.actions.inference import run_inference

    cfg = load(spec, overrides, action="inference")
    with results_lock(cfg.results_dir):
        run_inference(cfg, cfg.inference.trt_engine or cfg.inference.checkpoint, batch_size)


@app.command()
def export(spec: Path = SpecOption, overrides: Optional[List[str]] = OverridesArgument) -> None:
    """Export export.checkpoint to ONNX (export.format onnx) or an AOTInductor package (aoti), checked against PyTorch."""
    from automl.actions.export import run_export

    cfg = load(spec, overrides, action="export")
    with results_lock(cfg.results_dir):
        run_export(cfg)


@app.command()
def quantize(spec: Path = SpecOption, overrides: Optional[List[str]] = OverridesArgument) -> None:
    """Quantise quantize.model_path (torchao on a checkpoint, onnx static QDQ on an ONNX file) and report size, latency and metric deltas."""
    from automl.actions.quantize import run_quantize

    cfg = load(spec, overrides, action="quantize")
    with results_lock(cfg.results_dir):
        run_quantize(cfg)


@app.command("gen_trt_engine")
def gen_trt_engine(spec: Path = SpecOption, overrides: Optional[List[str]] = OverridesArgument) -> None:
    """Build a TensorRT engine (FP32/FP16/INT8) from gen_trt_engine.onnx_file (needs the tensorrt package and a GPU)."""
    from automl.actions.gen_trt_engine import run_gen_trt_engine

    run_gen_trt_engine(load(spec, overrides, action="gen_trt_engine"))


@app.command()
def best(
    spec: Path = SpecOption,
    overrides: Optional[List[str]] = OverridesArgument,
    top: int = typer.Option(10, "--top", help="Rows to show."),
) -> None:
    """Print the leaderboard of the latest sweep of this spec from MLflow."""
    cfg = load(spec, overrides)
    print_leaderboard(cfg, spec, None, top)


@app.command()
def report(spec: Path = SpecOption, overrides: Optional[List[str]] = OverridesArgument) -> None:
    """Write <results_dir>/report/index.html for the latest sweep of this spec: best score against GPU-hours,
    learning curves, parameter importance, parallel coordinates, the trials; logged to its MLflow parent run."""
    from automl.report import write_report
    from automl.search import resolve_search_space
    from automl.tracking import Tracker, latest_sweep_parent
    from automl.training import target_metric

    cfg = load(spec, overrides)
    tracker = Tracker.for_spec(cfg, spec)
    parent_id = latest_sweep_parent(tracker)
    if parent_id is None:
        raise UserError(f"no sweep of {spec} in {tracker.uri}; run `automl launch -e {spec}` first")
    console.print(f"wrote {write_report(cfg, tracker, parent_id, resolve_search_space(cfg), target_metric(cfg))}", highlight=False)


def print_leaderboard(cfg: DictConfig, spec: Path, parent_id: str | None, top: int = 10) -> None:
    from automl.tracking import Tracker, latest_sweep_parent, leaderboard
    from automl.training import target_metric

    tracker = Tracker.for_spec(cfg, spec)
    parent_id = parent_id or latest_sweep_parent(tracker)
    if parent_id is None:
        raise UserError(f"no sweep of {spec} in {tracker.uri}; run `automl launch -e {spec}` first")
    metric = target_metric(cfg)
    rows = leaderboard(tracker, parent_id, metric, cfg.automl.mode, top)
    table = Table(title=f"Leaderboard by {metric} ({cfg.automl.mode})", header_style="bold")
    params = sorted({k for row in rows for k in row["params"]})
    for column in ["#", "trial", "status", metric, *params]:
        table.add_column(column.rsplit(".", 1)[-1] if column in params else column, justify="right" if column in ("#", metric) else "left")
    for rank, row in enumerate(rows, 1):
        value = row[metric]
        table.add_row(str(rank), row["trial"], row["status"], "-" if value != value else f"{value:.2f}", *(_short(row["params"].get(k, "")) for k in params))
    console.print(table)


def _short(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.3g}" if not number.is_integer() else str(int(number))


def _print_ui_hint(cfg: DictConfig) -> None:
    from automl.tracking import tracking_uri

    uri = tracking_uri(cfg)
    console.print(f"compare trials:  mlflow ui --backend-store-uri {uri}   (or: automl ui -e SPEC)", highlight=False)


@app.command()
def ui(
    spec: Path = SpecOption,
    overrides: Optional[List[str]] = OverridesArgument,
    port: int = typer.Option(5000, "--port"),
) -> None:
    """Start the MLflow UI on 127.0.0.1 for this spec's tracking store."""
    import subprocess

    from automl.tracking import RUNS_VIEW, Tracker

    cfg = load(spec, overrides)
    tracker = Tracker.for_spec(cfg, spec)
    console.print(f"MLflow UI for {tracker.uri} on http://127.0.0.1:{port}", highlight=False)
    console.print(f"a sweep's trials, best first: {tracker.runs_view_url(f'http://127.0.0.1:{port}', RUNS_VIEW)}", highlight=False)
    subprocess.run([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracker.uri, "--host", "127.0.0.1", "--port", str(port)], check=False)


def _print_error(title: str, err: Exception) -> None:
    """`title message` on stderr, unwrapped (one line stays one line) and without markup (lists are not tags)."""
    Console(stderr=True, soft_wrap=True).print(Text.assemble((title, "bold red"), f" {err}"), highlight=False)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except UserError as err:
        _print_error("error:", err)
        sys.exit(2)
    except NonFiniteLossError as err:  # the last good checkpoint stays in <results_dir>/train
        _print_error("training stopped:", err)
        sys.exit(1)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # Every results file is written atomically: the last complete checkpoint stays.
        where = f" writing {err.filename}" if err.filename else ""
        Console(stderr=True).print(f"[bold red]disk full{where}:[/] {err.strerror}; free space and rerun the command: it continues from the last complete checkpoint", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
