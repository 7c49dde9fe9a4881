"""What every benchmark script shares: writing its JSON and formatting a table cell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(result: Any, out: str | Path, quiet: bool = False) -> Path:
    """Write `result` to `out` (folders made, values JSON cannot hold written as strings); say where unless quiet.

    Written whole each time, so a script may call it after every case: a run cut short keeps what it measured.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(result, indent=2, default=str))
    partial.replace(out)  # a reader (or a kill mid-write) never sees half a file
    if not quiet:
        print(f"wrote {out}", flush=True)
    return out


def cell(value: Any, digits: int = 1) -> str:
    """A table cell: '-' for a missing value, floats to `digits` places."""
    return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


# Host calls that wait for the GPU (or for a copy to it): where the host stops running ahead.
HOST_WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpyAsync", "cudaMemcpy")


def profile_summary(prof: Any, steps: int, wall_s: float, top: int = 12) -> dict[str, Any]:
    """Per step of a torch.profiler recording of `steps` steps taking `wall_s`: the device kernels
    launched, the copy kernels/memcpys among them, the GPU-busy ms (union of the kernels'
    intervals: gaps are the GPU waiting for the host), the `top` kernels by device time, the
    host's waits for the GPU (HOST_WAITS) and the `top` host operators by their own CPU time."""
    import torch

    events = prof.events()
    # device events less the GPU-side ranges of annotations such as Optimizer.step (not work themselves)
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
    busy_us, end = 0.0, float("-inf")
    for start, stop in sorted((e.time_range.start, e.time_range.end) for e in kernels):
        if stop > end:
            busy_us += stop - max(start, end)
            end = stop
    per_name: dict[str, list[float]] = {}
    for e in kernels:
        entry = per_name.setdefault(e.name, [0, 0.0])
        entry[0] += 1
        entry[1] += e.time_range.elapsed_us()
    is_copy = ("copy", "Memcpy", "Memset", "fill")
    host = [a for a in prof.key_averages() if a.device_type == torch.autograd.DeviceType.CPU]
    return {
        "steps": steps,
        "wall_ms_per_step": wall_s * 1e3 / steps,
        "kernels_per_step": len(kernels) / steps,
        "copy_kernels_per_step": sum(n for name, (n, _) in per_name.items() if any(k in name for k in is_copy)) / steps,
        "gpu_busy_ms_per_step": busy_us / 1e3 / steps,
        "top_kernels": [
            {"name": name[:160], "calls_per_step": n / steps, "ms_per_step": us / 1e3 / steps}
            for name, (n, us) in sorted(per_name.items(), key=lambda kv: -kv[1][1])[:top]
        ],
        "host_waits": [
            {"name": a.key, "calls_per_step": a.count / steps, "ms_per_step": a.cpu_time_total / 1e3 / steps} for a in host if a.key in HOST_WAITS
        ],
        "top_host_ops": [
            {"name": a.key[:160], "calls_per_step": a.count / steps, "self_ms_per_step": a.self_cpu_time_total / 1e3 / steps}
            for a in sorted(host, key=lambda a: -a.self_cpu_time_total)[:top]
        ],
    }
