"""One writer per results folder: an exclusive lock on `<results_dir>/.lock` for a whole command.

The lock is an `fcntl.flock` on an open file, so the kernel releases it on any exit, kill -9
included; the file holds the holder's PID for the message a second command prints. Commands
that only read (`best`, `evaluate --predictions`, `ui`) do not take it.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from model.errors import UserError

LOCK_FILE = ".lock"
# Where Lightning's launchers put a process's rank (read here so the CLI starts without Lightning).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def is_launched_worker() -> bool:
    """True in a DDP worker that a launcher started by re-running the command (rank or node rank > 0)."""
    rank = next((os.environ[key] for key in RANK_VARIABLES if key in os.environ), "0")
    return int(rank) != 0 or int(os.environ.get("NODE_RANK", "0")) != 0


@contextmanager
def results_lock(results_dir: str | os.PathLike) -> Iterator[None]:
    """Hold `results_dir` for this process; a second holder is refused at once with a UserError naming the PID.

    A DDP worker that Lightning starts by re-running the command (rank or node rank > 0) works
    under its launcher's lock and takes none.
    """
    if is_launched_worker():
        yield
        return
    folder = Path(results_dir)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"results_dir: {folder} is a file; expected a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UserError(f"results_dir: cannot write in {folder} ({err.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(f"results_dir {folder} is in use by another automl command (PID {holder}); wait for it or choose another results_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
