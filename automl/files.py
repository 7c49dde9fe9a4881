"""Writing results so that a crash, a kill or a full disk never leaves a half-written file.

Every file the platform writes under `results_dir` goes through `atomic_write`: the bytes go to
a temporary file in the same folder, are flushed to disk, and the temporary file is renamed
over the target (`os.replace` is atomic on one filesystem). A reader sees the old file or the
new one, never a mix; a failed write leaves the old file and no temporary.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file object whose content replaces `path` only when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text.encode())


def write_json(path: str | os.PathLike, data: Any) -> None:
    """JSON with NaN and infinities written as null (bare NaN is not JSON)."""
    write_text(path, json.dumps(_finite(data), indent=2, default=str, allow_nan=False))


def copy_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    with open(source, "rb") as src, atomic_write(target) as dst:
        shutil.copyfileobj(src, dst)


def replace_symlink(target: str | os.PathLike, link: str | os.PathLike) -> None:
    """Point `link` at `target` (relative, so the folder can move), replacing what was there atomically."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


def _finite(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def _fsync_dir(directory: Path) -> None:
    """Makes the rename itself durable (POSIX: the folder's entry is data of the folder)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
