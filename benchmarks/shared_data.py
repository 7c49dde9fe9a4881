"""What a sweep's shared data saves each trial: the time to decode the label map and the train/val annotations.

A trial given the driver's decoded data (automl/shared_data.py) skips this; without it every
trial pays it before its first step. Writes synthetic COCO panoptic data of each --num-images
(before timing), then times `decode_data` (what each trial did before) against reading the
shared copy (unpickling what Ray's object store holds; what each trial does now), medians of
--repeats, and prints a table and writes JSON.

    python benchmarks/shared_data.py --num-images 100 1000 --out /tmp/shared_data.json
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _median_s(function: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--num-images", type=int, nargs="+", default=[100, 1000], help="images per dataset (a quarter for validation)")
    p.add_argument("--size", type=int, default=64, help="image size (decoding the annotations does not read pixels)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--work", type=Path, default=ROOT / "results" / "shared_data")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "shared_data.json")
    args = p.parse_args(argv)

    from automl.shared_data import decode_data
    from automl.spec import load_spec
    from automl.training import build_label_map
    from benchmarks.sweep_throughput import data_overrides
    from model.data import write_synthetic_dataset

    rows = []
    for num_images in args.num_images:
        data = args.work / f"data{num_images}"
        if not (data / "label_map.json").exists():
            write_synthetic_dataset(data, num_images=num_images, size=(args.size, args.size), seed=0)
        spec = load_spec(ROOT / "experiments" / "synthetic_smoke.yaml", [*data_overrides(data), f"results_dir={args.work / 'results'}"], action="train")
        decode_s = _median_s(lambda spec=spec: decode_data(spec, build_label_map(spec)), args.repeats)
        stored = pickle.dumps(decode_data(spec, build_label_map(spec)))  # what the object store holds
        read_s = _median_s(lambda stored=stored: pickle.loads(stored), args.repeats)
        rows.append({"num_images": num_images, "decode_s": decode_s, "read_shared_s": read_s, "saved_per_trial_s": decode_s - read_s, "stored_mib": len(stored) / 2**20})
    print("| images | decode (s) | read the shared copy (s) | saved per trial (s) | stored MiB |\n|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['num_images']} | {row['decode_s']:.4f} | {row['read_shared_s']:.4f} | {row['saved_per_trial_s']:.4f} | {row['stored_mib']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
