"""Where a training step's peak GPU memory goes: the blocks alive at the peak, by the line that allocated them.

Runs a few training steps of a spec (`automl.training.run_training`, as a trial does) under PyTorch's
allocation history (`torch.cuda.memory._record_memory_history`, Python frames), replays the history to
find the moment the most memory was allocated, and groups the blocks alive then by the innermost
frames of this repository (or torch.nn.functional) that allocated them. Prints the groups and the
largest single blocks; writes them to --out as JSON. (It found the 33 GiB cuDNN FFT workspace of the
float32 FPN convolution at 512x512 batch 8: `benchmarks/NOTES.md`.)

    python benchmarks/memory_history.py -e experiments/synthetic_swin_t.yaml --data data/synthetic512 \\
        dataset.train.batch_size=8 --out $OUT/memory_history_b8.json
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from automl.spec import load_spec  # noqa: E402
from automl.synthetic_data import data_overrides  # noqa: E402
from automl.training import run_training  # noqa: E402
from benchmarks._common import write_json  # noqa: E402

# Frames that name where an allocation comes from (the rest is Lightning and PyTorch plumbing).
OWN_FRAMES = ("/model/", "/automl/", "torch/nn/functional")
FRAMES_SHOWN = 5
MAX_ENTRIES = 400_000  # allocation events kept by PyTorch (a few steps of Swin-T need ~100k)


def origin(frames: Sequence[dict[str, Any]]) -> str:
    """'file.py:line:function <- ...' of the innermost frames of interest (else of any frame)."""
    own = [f for f in frames if any(part in f["filename"] for part in OWN_FRAMES)] or list(frames)
    return " <- ".join(f"{Path(f['filename']).name}:{f['line']}:{f['name']}" for f in own[:FRAMES_SHOWN])


def blocks_at_peak(trace: Sequence[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    """Replay one device's allocation events: (the largest total allocated, the blocks alive at that moment)."""
    live: dict[int, dict[str, Any]] = {}
    total = peak = 0
    at_peak: list[dict[str, Any]] = []
    for event in trace:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            total += event["size"]
            if total > peak:
                peak, at_peak = total, list(live.values())
        elif event["action"] == "free_completed" and event["addr"] in live:
            total -= live.pop(event["addr"])["size"]
    return peak, at_peak


def summarise(blocks: Sequence[dict[str, Any]], top: int) -> dict[str, list[dict[str, Any]]]:
    """The top groups by bytes (blocks of one origin) and the top single blocks."""
    size: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for block in blocks:
        where = origin(block.get("frames", []))
        size[where] += block["size"]
        count[where] += 1
    groups = [{"gib": b / 2**30, "blocks": count[where], "origin": where} for where, b in size.most_common(top)]
    largest = sorted(blocks, key=lambda b: -b["size"])[:top]
    return {"groups": groups, "largest": [{"gib": b["size"] / 2**30, "origin": origin(b.get("frames", []))} for b in largest]}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-e", "--spec", default=str(ROOT / "experiments" / "synthetic_swin_t.yaml"))
    p.add_argument("overrides", nargs="*", help="dotted spec overrides (e.g. dataset.train.batch_size=2)")
    p.add_argument("--data", type=Path, required=True, help="an `automl data synth` folder (written there when missing)")
    p.add_argument("--num-images", type=int, default=48, help="images when the data is written")
    p.add_argument("--size", type=int, default=512, help="image size when the data is written")
    p.add_argument("--steps", type=int, default=2, help="training steps recorded")
    p.add_argument("--top", type=int, default=20, help="groups and single blocks listed")
    p.add_argument("--out", default=str(ROOT / "results" / "memory_history.json"))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("memory_history.py needs a CUDA GPU (it reads PyTorch's CUDA allocation history)")

    if not (args.data / "label_map.json").exists():
        from model.data import write_synthetic_dataset

        write_synthetic_dataset(args.data, num_images=args.num_images, size=(args.size, args.size), seed=0)
    spec = load_spec(args.spec, [*data_overrides(args.data.resolve()), f"results_dir={ROOT / 'results' / 'memory_history'}", *args.overrides])
    torch.cuda.memory._record_memory_history(max_entries=MAX_ENTRIES, stacks="python")
    run_training(spec, progress=False, keep_checkpoints=False, max_epochs=1, limit_train_batches=args.steps,
                 limit_val_batches=0, num_sanity_val_steps=0, logger=False)  # fmt: skip
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)

    peak, blocks = blocks_at_peak(snapshot["device_traces"][torch.cuda.current_device()])
    record: dict[str, Any] = {
        "spec": args.spec, "overrides": args.overrides, "steps": args.steps, "gpu": torch.cuda.get_device_name(),
        "max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30, "max_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "peak_live_gib": peak / 2**30, "blocks_at_peak": len(blocks), **summarise(blocks, args.top),
    }  # fmt: skip
    print(f"peak allocated {record['max_allocated_gib']:.2f} GiB (reserved {record['max_reserved_gib']:.2f}); "
          f"{record['peak_live_gib']:.2f} GiB in {len(blocks)} blocks at the peak of the history")  # fmt: skip
    print("| GiB | blocks | allocated at |\n|---:|---:|---|")
    for group in record["groups"]:
        print(f"| {group['gib']:.2f} | {group['blocks']} | {group['origin']} |")
    print("largest blocks: " + "; ".join(f"{b['gib']:.2f} GiB {b['origin'].split(' <- ')[0]}" for b in record["largest"][:5]))
    write_json(record, args.out)
    return record


if __name__ == "__main__":
    main()
