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
