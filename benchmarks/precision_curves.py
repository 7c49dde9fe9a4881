"""Validation curves of one spec trained under several numeric settings: the accuracy evidence
beside a lower-precision choice (TF32, bf16, CUDA graphs).

Each setting is a plain run (`automl launch --policy off`, its own results_dir) with the same
data and seed; its `val/*` metric history is read back from the run's MLflow store.

    python benchmarks/precision_curves.py -e experiments/synthetic_swin_t.yaml --epochs 12 \
        --settings strict=train.precision=fp32,train.allow_tf32=false tf32=train.precision=fp32,train.allow_tf32=true
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mlflow.tracking import MlflowClient  # noqa: E402

from automl.spec import load_spec  # noqa: E402
from automl.tracking import experiment_name, tracking_uri  # noqa: E402
from benchmarks._common import cell, write_json  # noqa: E402

METRICS = ("val/PQ", "val/mIoU", "val/AP")


def parse_setting(text: str) -> tuple[str, list[str]]:
    """'name=key=value,key=value' -> (name, ['key=value', ...])."""
    name, _, overrides = text.partition("=")
    if not name or not overrides:
        raise SystemExit(f"--settings: '{text}' is not NAME=key=value[,key=value...]")
    return name, overrides.split(",")


def curves(spec_path: Path, overrides: list[str]) -> dict[str, list[dict[str, float]]]:
    """The `val/*` histories of the latest plain run of this spec (step, value)."""
    spec = load_spec(spec_path, overrides, action="train")
    client = MlflowClient(tracking_uri(spec))
    experiment = client.get_experiment_by_name(experiment_name(spec, spec_path))
    [run] = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    return {
        metric: [{"step": m.step, "value": m.value} for m in sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step)]
        for metric in METRICS
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-e", "--spec", type=Path, default=ROOT / "experiments" / "synthetic_swin_t.yaml")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--settings", nargs="+", required=True, help="NAME=key=value[,key=value...] per setting")
    p.add_argument("--run-s", type=float, default=240.0, help="wall-time limit of each run")
    p.add_argument("--work", type=Path, default=Path("/tmp/precision_curves"))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "precision_curves.json")
    args = p.parse_args()

    result: dict[str, Any] = {"spec": str(args.spec), "epochs": args.epochs, "settings": {}}
    for name, overrides in map(parse_setting, args.settings):
        overrides = [*overrides, f"train.num_epochs={args.epochs}", "train.checkpoint_interval=1000", f"results_dir={args.work / name}"]
        start = time.perf_counter()
        command = [sys.executable, "-m", "automl.cli", "launch", "-e", str(args.spec), "--policy", "off", *overrides]
        try:
            returncode = subprocess.run(command, cwd=ROOT, timeout=args.run_s).returncode
        except subprocess.TimeoutExpired:
            returncode = "timeout"
        result["settings"][name] = {
            "overrides": overrides, "returncode": returncode, "wall_s": round(time.perf_counter() - start, 1),
            "curves": curves(args.spec, overrides),
        }
        write_json(result, args.out)

    names = list(result["settings"])
    print("\nval/PQ by step: " + " | ".join(names))
    steps = sorted({point["step"] for s in result["settings"].values() for point in s["curves"]["val/PQ"]})
    for step in steps:
        values = [next((pt["value"] for pt in result["settings"][n]["curves"]["val/PQ"] if pt["step"] == step), None) for n in names]
        print(f"{step:>6} " + " ".join(f"{cell(v):>8}" for v in values))


if __name__ == "__main__":
    main()
