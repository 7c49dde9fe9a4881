"""Data check benchmark: the pre-flight of `automl launch` against the full pass of `automl data check`.

Writes a synthetic COCO panoptic dataset (`model.data.write_synthetic_dataset`; with `--jpeg` its images
re-encoded as JPEG, as COCO's are), builds its train split as training does, and times a pass of
`check_files` (the pre-flight: headers and PNG checksums of every image and panoptic PNG) and of
`check_dataset` (every image and PNG decoded, the ground truth checked and counted). It prints one row
per check with the median of `--repeats` passes and images/s, and writes the numbers to JSON. Building
the dataset (parsing the JSON, which both share) is not timed. Nothing is asserted.

    python benchmarks/data_preflight.py                          # 400 images of 512x512, PNG
    python benchmarks/data_preflight.py --jpeg --out results/data_preflight_jpeg.json
    python benchmarks/data_preflight.py --num-images 16 --size 64 64 --repeats 1   # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: `model` is the repo's package
    sys.path.insert(0, str(ROOT))

from model.data import LabelMap, build_dataset, build_transform, check_dataset, check_files, write_synthetic_dataset  # noqa: E402

CHECKS = {"check_files": check_files, "check_dataset": check_dataset}


def reencode_as_jpeg(split: dict) -> None:
    """Replace the split's PNG images by JPEGs and point its panoptic JSON at them."""
    json_path = Path(split["panoptic_json"])
    data = json.loads(json_path.read_text())
    for entry in data["images"]:
        png = Path(split["img_dir"]) / entry["file_name"]
        entry["file_name"] = png.with_suffix(".jpg").name
        Image.open(png).convert("RGB").save(png.with_suffix(".jpg"), quality=90)
        png.unlink()
    json_path.write_text(json.dumps(data))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=400, help="Images in all (a quarter go to val, which is not timed).")
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--jpeg", action="store_true", help="Store the images as JPEG.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results/benchmark_data_preflight.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_synthetic_dataset(tmp, num_images=args.num_images, size=tuple(args.size))
        if args.jpeg:
            reencode_as_jpeg(paths["train"])
        dataset = build_dataset(
            "coco_panoptic", task="panoptic", label_map=LabelMap.from_file(paths["label_map"], True),
            transform=build_transform(False, test_min_size=args.size[0], test_max_size=max(args.size)),  # not applied by the checks
            cache_root=Path(tmp) / "cache", **{k: paths["train"][k] for k in ("img_dir", "panoptic_json", "panoptic_dir")},
        )
        rows = []
        for name, check in CHECKS.items():
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                check(dataset)
                seconds.append(time.perf_counter() - start)
            median = statistics.median(seconds)
            rows.append({"check": name, "images": len(dataset), "median_s": median, "images_per_s": len(dataset) / median, "all_s": seconds})

    full = rows[-1]["median_s"]
    print(f"{'check':<14} {'images':>7} {'median s':>9} {'images/s':>9} {'time / check_dataset':>21}")
    for row in rows:
        print(f"{row['check']:<14} {row['images']:>7} {row['median_s']:>9.3f} {row['images_per_s']:>9.0f} {row['median_s'] / full:>21.3f}")
    result = {
        "settings": {"num_images": args.num_images, "size": list(args.size), "format": "jpeg" if args.jpeg else "png", "repeats": args.repeats},
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
