"""--resume loads only experiment state this installation wrote: a tampered tuner.pkl is refused."""

import os
import pickle
import stat
from pathlib import Path

import pytest

from automl.resume_guard import installation_key, key_file, verify
from automl.sweep import STATE_DIGESTS, run_sweep
from model.errors import UserError
from tests.conftest import SMOKE_SPEC


class Payload:
    """Unpickling it would create `marker`: what a crafted tuner.pkl could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture
def config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config"


def test_the_installation_key_is_created_once_readable_by_its_owner_only(config_home):
    key = installation_key()
    assert len(key) == 32 and installation_key() == key
    assert key_file().parent == config_home / "mask2former-automl"
    assert stat.S_IMODE(os.stat(key_file()).st_mode) == 0o600


def test_resume_refuses_a_tampered_tuner_pkl_before_unpickling_it(smoke_spec, config_home, tmp_path, monkeypatch):
    spec = smoke_spec("automl.num_samples=1", "automl.max_epochs=1", "automl.grace_period=1")
    run_sweep(spec, SMOKE_SPEC)
    root = Path(spec.results_dir) / "automl"
    experiment, digests = root / "synthetic_smoke", root / f"synthetic_smoke.{STATE_DIGESTS}"
    verify(experiment, digests)  # what the sweep wrote passes here...
    with monkeypatch.context() as other:  # ...and not under another installation's key
        other.setenv("XDG_CONFIG_HOME", str(tmp_path / "elsewhere"))
        with pytest.raises(UserError, match="was not written by a sweep of this installation"):
            verify(experiment, digests)

    marker = tmp_path / "code-ran"
    (experiment / "tuner.pkl").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UserError, match=r"tuner.pkl was not written by a sweep of this installation"):
        run_sweep(spec, SMOKE_SPEC, resume=True)
    assert not marker.exists()
