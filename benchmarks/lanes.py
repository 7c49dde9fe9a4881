"""Run single-GPU benchmarks side by side on a machine of several GPUs: one lane a GPU.

Lane i runs its shell command with CUDA_VISIBLE_DEVICES=i on the i-th equal share of the cores
(so a benchmark sized by the cores it may use sees its share), in a process group of its own, its
output written to `<out>/lane<i>.log` as it comes. At the time limit every lane still running is
ended with its whole group (Ray workers and launchers included), so the logs always close and the
call ends on time. Lanes share the host's memory bandwidth and caches: compare within a lane.

    python benchmarks/lanes.py --out $OUT --limit-s 560 \\
        "python3 benchmarks/train_step.py --cases train" "python3 -m pytest -q tests/gpu"
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import write_json  # noqa: E402

GRACE_S = 10.0  # between SIGTERM and SIGKILL of a lane's group at the limit


def core_shares(cores: list[int], lanes: int) -> list[list[int]]:
    """`cores` cut into `lanes` equal consecutive shares (the remainder left unused)."""
    size = len(cores) // lanes
    if size == 0:
        raise SystemExit(f"{lanes} lanes but {len(cores)} cores: give fewer lanes")
    return [cores[i * size : (i + 1) * size] for i in range(lanes)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("commands", nargs="+", help="one shell command a lane (lane i gets GPU i)")
    p.add_argument("--out", type=Path, required=True, help="folder of the lane logs and lanes.json")
    p.add_argument("--limit-s", type=float, default=560.0, help="wall time of all lanes together")
    args = p.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    shares = core_shares(sorted(os.sched_getaffinity(0)), len(args.commands))
    start = time.monotonic()
    lanes = []
    for i, (command, cores) in enumerate(zip(args.commands, shares)):
        log = (args.out / f"lane{i}.log").open("w")
        process = subprocess.Popen(
            command, shell=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": str(i), "PYTHONUNBUFFERED": "1"},
            preexec_fn=lambda cores=cores: os.sched_setaffinity(0, cores),
        )  # fmt: skip
        lanes.append({"lane": i, "command": command, "cores": f"{cores[0]}-{cores[-1]}", "process": process, "log": log})
        print(f"lane {i}: GPU {i}, cores {cores[0]}-{cores[-1]}: {command}", flush=True)

    for lane in lanes:
        remaining = start + args.limit_s - time.monotonic()
        try:
            lane["process"].wait(timeout=max(remaining, 0.0))
        except subprocess.TimeoutExpired:
            lane["stopped_at_limit"] = True
            os.killpg(lane["process"].pid, signal.SIGTERM)
            try:
                lane["process"].wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(lane["process"].pid, signal.SIGKILL)
                lane["process"].wait()
        lane["wall_s"] = round(time.monotonic() - start, 1)
    for lane in lanes:  # a lane that ended on its own may have left processes in its group
        try:
            os.killpg(lane["process"].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        lane["log"].close()

    record = [
        {"lane": lane["lane"], "command": lane["command"], "cores": lane["cores"], "returncode": lane["process"].returncode,
         "stopped_at_limit": lane.get("stopped_at_limit", False), "ended_by_s": lane["wall_s"]}
        for lane in lanes
    ]  # fmt: skip
    write_json({"limit_s": args.limit_s, "lanes": record}, args.out / "lanes.json")
    for lane in record:
        print(f"=== lane {lane['lane']} (rc {lane['returncode']}{', stopped at the limit' if lane['stopped_at_limit'] else ''})")
        print((args.out / f"lane{lane['lane']}.log").read_text(errors="replace")[-2500:])


if __name__ == "__main__":
    main()
