"""Resume only from state this platform wrote: keyed digests of the Tune experiment's state files.

`Tuner.restore` unpickles the files Tune keeps at the top of the experiment folder
(`tuner.pkl`, `searcher-state-*.pkl`, the cloudpickled parts of `experiment_state-*.json`): a
crafted file there runs code. While a sweep runs, `ResumeGuard` records an HMAC-SHA256 of every
version of those files Tune writes, keyed by a secret of this installation kept outside
`results_dir` (`$XDG_CONFIG_HOME/mask2former-automl/resume.key`, mode 0600). `--resume` checks
every such file against the record before Ray reads any of them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from ray import tune

from automl.files import write_json
from model.errors import UserError

KEEP_VERSIONS = 8  # digests kept per file: the on-disk copy may lag the newest by a sync or two
STATE_PATTERNS = ("*.pkl", "*.json")  # what Tune's restore reads from the experiment folder's top


def key_file() -> Path:
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "mask2former-automl" / "resume.key"


def installation_key() -> bytes:
    """The secret of this installation, created (0600, in a 0700 folder) on first use."""
    path = key_file()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it meanwhile
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
        f.flush()
        os.fsync(f.fileno())
    return path.read_bytes()


def state_files(experiment: Path) -> list[Path]:
    return sorted(p for pattern in STATE_PATTERNS for p in experiment.glob(pattern) if p.is_file())


def _digest(key: bytes, path: Path) -> str:
    return hmac.new(key, path.read_bytes(), hashlib.sha256).hexdigest()


class ResumeGuard(tune.Callback):
    """Records the keyed digest of each new version of the experiment's state files, after every
    step of the Tune loop (so a kill -9 leaves the newest state recorded) and at the end.

    Pickled with the experiment by Tune; it holds paths only, never the key.
    """

    def __init__(self, experiment: Path, record: Path):
        self.experiment, self.record = Path(experiment), Path(record)
        self.seen: dict[str, tuple[int, int]] = {}  # name -> (mtime_ns, size) last recorded

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.sign()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.sign()

    def sign(self) -> None:
        changed = {}
        for path in state_files(self.experiment):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if self.seen.get(path.name) != (stat.st_mtime_ns, stat.st_size):
                changed[path] = (stat.st_mtime_ns, stat.st_size)
        if not changed:
            return
        key = installation_key()
        record = _read_record(self.record)
        for path, seen in changed.items():
            digests = record.setdefault(path.name, [])
            digest = _digest(key, path)
            if digest not in digests:
                digests.append(digest)
                del digests[:-KEEP_VERSIONS]
            self.seen[path.name] = seen
        write_json(self.record, record)


def verify(experiment: Path, record: Path) -> None:
    """Raises a UserError unless every state file of `experiment` is a version a sweep of this
    installation recorded in `record`."""
    signed = _read_record(record)
    if not signed:
        raise UserError(f"--resume: {experiment} has no record of its state in {record}; only a sweep this installation ran can be resumed")
    key = installation_key()
    for path in state_files(experiment):
        if _digest(key, path) not in signed.get(path.name, []):
            raise UserError(
                f"--resume: {path} was not written by a sweep of this installation (its keyed digest is not in {record}); "
                "refusing to load it. Start a new sweep in another results_dir"
            )


def _read_record(path: Path) -> dict[str, list[str]]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
