"""`automl gen_trt_engine` where TensorRT is not installed: one clear line naming the install, before any work."""

import subprocess
import sys

import pytest

from automl.actions.gen_trt_engine import run_gen_trt_engine
from automl.spec import load_spec
from model.errors import UserError
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(subprocess.run([sys.executable, "-c", "import tensorrt"], capture_output=True).returncode == 0,
                                reason="tensorrt is installed here: the missing-package path cannot be taken")


def test_without_tensorrt_the_action_names_the_package_to_install(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    spec = load_spec(None, [f"results_dir={tmp_path}", f"gen_trt_engine.onnx_file={tmp_path / 'model.onnx'}"], action="gen_trt_engine")
    with pytest.raises(UserError, match=r"TensorRT is not installed in this environment: pip install tensorrt"):
        run_gen_trt_engine(spec)
    assert not (tmp_path / "gen_trt_engine").exists()


def test_cli_prints_the_missing_package_on_one_line_without_traceback(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    done = subprocess.run(
        [sys.executable, "-m", "automl.cli", "gen_trt_engine", "-e", str(ROOT / "experiments" / "synthetic_smoke.yaml"),
         f"results_dir={tmp_path}", f"gen_trt_engine.onnx_file={tmp_path / 'model.onnx'}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "pip install tensorrt" in done.stderr and len(done.stderr.strip().splitlines()) <= 2
