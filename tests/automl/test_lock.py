"""One writer per results folder: a second command on a held results_dir is refused at once."""

import os
import subprocess
import sys
import time

import pytest

from automl.lock import LOCK_FILE, results_lock
from model.errors import UserError
from tests.conftest import SMOKE_SPEC, data_overrides


def test_a_held_results_dir_is_refused_with_the_holders_pid(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from automl.lock import results_lock\nwith results_lock({str(tmp_path)!r}):\n    print('held', flush=True)\n    input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"results_dir {tmp_path} is in use by another automl command \(PID {holder.pid}\)"):
            with results_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with results_lock(tmp_path):  # a killed holder leaves the folder free
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_two_launches_on_one_results_dir_the_second_is_refused_fast(synthetic_data, tmp_path):
    command = [sys.executable, "-m", "automl.cli", "launch", "-e", str(SMOKE_SPEC), *data_overrides(synthetic_data), f"results_dir={tmp_path}", "--policy", "off", "train.num_epochs=1"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / LOCK_FILE).exists() or not (tmp_path / LOCK_FILE).read_text().strip():
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.2)
        started = time.time()
        second = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"})
        assert second.returncode == 2
        assert f"is in use by another automl command (PID {first.pid})" in second.stderr
        assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert time.time() - started < 30  # refused before any work (the spec load is most of it)
        assert first.wait(timeout=300) == 0, first.stdout.read()
    finally:
        first.kill()
