"""Peak GPU memory of a trial's first training steps (and one validation batch), under spec variants.

What `automl.resources_per_trial: {gpu: auto}` packs by: each case runs `run_training` for a few
steps in a fresh process (as the packer's probe does) and reports PyTorch's peak allocated and
reserved memory. The default cases separate training from validation, the batch, the crop, the
cuDNN flags and the allocator's expandable segments.

    python benchmarks/trial_memory.py --data data/synthetic512 --out $OUT/trial_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import cell, write_json  # noqa: E402

EXPANDABLE = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
# name -> (spec overrides, validate one batch, extra environment)
CASES: dict[str, tuple[list[str], bool, dict[str, str]]] = {
    "train + 1 val batch": ([], True, {}),
    "train only": ([], False, {}),
    "train only, cudnn.deterministic=false": (["train.cudnn.deterministic=false"], False, {}),
    "train + val, cudnn.deterministic=false": (["train.cudnn.deterministic=false"], True, {}),
    "train + val, val batch 1": (["dataset.val.batch_size=1"], True, {}),
    "train only, batch 2": (["dataset.train.batch_size=2"], False, {}),
    "train only, crop 256": (["dataset.augmentation.train_crop_size=[256,256]"], False, {}),
    "train + val, expandable segments": ([], True, EXPANDABLE),
}
CHILD = """
import json, sys, time, torch
from automl.spec import load_spec
from automl.training import run_training
request = json.loads(sys.argv[1])
spec = load_spec(request["spec"], request["overrides"])
started = time.monotonic()
run_training(spec, progress=False, keep_checkpoints=False, max_epochs=1, limit_train_batches=request["steps"],
             limit_val_batches=1 if request["validate"] else 0, num_sanity_val_steps=0, logger=False)
print("RESULT " + json.dumps({"allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
                              "reserved_gib": torch.cuda.max_memory_reserved() / 2**30, "wall_s": time.monotonic() - started}))
"""


def measure(spec: str, overrides: list[str], validate: bool, steps: int, env: dict[str, str]) -> dict[str, Any]:
    request = {"spec": spec, "overrides": overrides, "validate": validate, "steps": steps}
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(request)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path, **env})
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return {"error": lines[-1] if lines else f"exit {done.returncode}"}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-e", "--spec", default=str(ROOT / "experiments" / "synthetic_swin_t.yaml"))
    p.add_argument("--data", type=Path, required=True, help="an `automl data synth` folder (written there when missing)")
    p.add_argument("--num-images", type=int, default=48, help="images when the data is written")
    p.add_argument("--size", type=int, default=512, help="image size when the data is written")
    p.add_argument("--steps", type=int, default=3, help="training steps per case (the packer's probe takes 3)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--out", default=str(ROOT / "results" / "trial_memory.json"))
    args = p.parse_args(argv)

    from automl.synthetic_data import data_overrides

    if not (args.data / "label_map.json").exists():
        from model.data import write_synthetic_dataset

        write_synthetic_dataset(args.data, num_images=args.num_images, size=(args.size, args.size), seed=0)
    common = [*data_overrides(args.data.resolve()), f"results_dir={ROOT / 'results' / 'trial_memory'}"]
    record: dict[str, Any] = {"spec": args.spec, "data": str(args.data), "steps": args.steps, "cases": []}
    print("| case | allocated GiB | reserved GiB | wall s |\n|---|---:|---:|---:|", flush=True)
    for name in args.cases:
        overrides, validate, env = CASES[name]
        row = {"case": name, "overrides": overrides, "validate": validate, "env": env, **measure(args.spec, [*common, *overrides], validate, args.steps, env)}
        record["cases"].append(row)
        print(f"| {name} | {cell(row.get('allocated_gib'), 2)} | {cell(row.get('reserved_gib'), 2)} | {cell(row.get('wall_s'), 1)} |" + (f" {row['error']}" if "error" in row else ""), flush=True)
        write_json(record, args.out, quiet=True)
    write_json(record, args.out)
    return record


if __name__ == "__main__":
    main()
