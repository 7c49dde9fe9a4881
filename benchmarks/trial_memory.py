"""Peak GPU memory of a trial's first training steps (and one validation batch), under spec variants.

What `automl.resources_per_trial: {gpu: auto}` packs by: each case runs the packer's own probe
(`automl.packing.probe_memory`: a few training steps in a fresh process) on the spec with the case's
values and reports PyTorch's peak allocated and reserved memory. The default cases separate training
from validation, the batch, the crop, the cuDNN flags, the allocator's expandable segments and its cap
(the fraction of the GPU it may take, as the packer's probe and packed trials run), and
`model.sem_seg_head.fpn_autocast` (the FPN convolutions in bf16 instead of float32).

    python benchmarks/trial_memory.py --data data/synthetic512 --out $OUT/trial_memory.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from automl.packing import probe_memory  # noqa: E402
from automl.spec import load_spec  # noqa: E402
from automl.synthetic_data import data_overrides  # noqa: E402
from benchmarks._common import cell, write_json  # noqa: E402

EXPANDABLE = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
# name -> (the trial's values, validate one batch, extra environment, allocator cap)
CASES: dict[str, tuple[dict[str, Any], bool, dict[str, str], float]] = {
    "train + 1 val batch": ({}, True, {}, 1.0),
    "train + 1 val batch, capped at 1/4": ({}, True, {}, 0.25),
    "train only": ({}, False, {}, 1.0),
    "train only, cudnn.deterministic=false": ({"train.cudnn.deterministic": False}, False, {}, 1.0),
    "train + val, cudnn.deterministic=false": ({"train.cudnn.deterministic": False}, True, {}, 1.0),
    "train + val, val batch 1": ({"dataset.val.batch_size": 1}, True, {}, 1.0),
    "train only, batch 2": ({"dataset.train.batch_size": 2}, False, {}, 1.0),
    "train only, crop 256": ({"dataset.augmentation.train_crop_size": [256, 256]}, False, {}, 1.0),
    "train + val, expandable segments": ({}, True, EXPANDABLE, 1.0),
    "train + 1 val batch, fpn_autocast": ({"model.sem_seg_head.fpn_autocast": True}, True, {}, 1.0),
    "train only, batch 2, fpn_autocast": ({"model.sem_seg_head.fpn_autocast": True, "dataset.train.batch_size": 2}, False, {}, 1.0),
}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-e", "--spec", default=str(ROOT / "experiments" / "synthetic_swin_t.yaml"))
    p.add_argument("--data", type=Path, required=True, help="an `automl data synth` folder (written there when missing)")
    p.add_argument("--num-images", type=int, default=48, help="images when the data is written")
    p.add_argument("--size", type=int, default=512, help="image size when the data is written")
    p.add_argument("--steps", type=int, default=3, help="training steps per case (the packer's probe takes 3)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("overrides", nargs="*", help="dotted spec overrides for every case")
    p.add_argument("--out", default=str(ROOT / "results" / "trial_memory.json"))
    args = p.parse_args(argv)

    if not (args.data / "label_map.json").exists():
        from model.data import write_synthetic_dataset

        write_synthetic_dataset(args.data, num_images=args.num_images, size=(args.size, args.size), seed=0)
    spec = load_spec(args.spec, [*data_overrides(args.data.resolve()), f"results_dir={ROOT / 'results' / 'trial_memory'}", *args.overrides])
    base = OmegaConf.to_container(spec, resolve=True)
    record: dict[str, Any] = {"spec": args.spec, "overrides": args.overrides, "data": str(args.data), "steps": args.steps, "cases": []}
    print("| case | allocated GiB | reserved GiB | wall s (process start included) |\n|---|---:|---:|---:|", flush=True)
    for name in args.cases:
        values, validate, env, cap = CASES[name]
        row: dict[str, Any] = {"case": name, "values": values, "validate": validate, "env": env, "cap": cap}
        started = time.monotonic()
        try:
            peaks = probe_memory(base, values, steps=args.steps, validate=validate, env=env, cap=cap)
            row.update(allocated_gib=peaks["allocated"] / 2**30, reserved_gib=peaks["reserved"] / 2**30)
        except RuntimeError as err:
            row["error"] = str(err)
        row["wall_s"] = time.monotonic() - started
        record["cases"].append(row)
        print(f"| {name} | {cell(row.get('allocated_gib'), 2)} | {cell(row.get('reserved_gib'), 2)} | {cell(row['wall_s'], 1)} |" + (f" {row['error']}" if "error" in row else ""), flush=True)
        write_json(record, args.out, quiet=True)
    write_json(record, args.out)
    return record


if __name__ == "__main__":
    main()
