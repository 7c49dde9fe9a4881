"""The data pre-flight of `automl launch`: a bad file is one error naming it, before anything trains."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from automl.preflight import check_training_data
from automl.spec import load_spec
from model.errors import UserError
from tests.conftest import SMOKE_SPEC, data_overrides


@pytest.fixture
def data(synthetic_data, tmp_path) -> Path:
    """A copy of the session's synthetic data that a test may break."""
    return Path(shutil.copytree(synthetic_data, tmp_path / "data"))


def spec_on(data: Path, tmp_path: Path):
    return load_spec(SMOKE_SPEC, [*data_overrides(data), f"results_dir={tmp_path / 'results'}"], action="train")


def first_file(folder: Path) -> Path:
    return sorted(folder.iterdir())[0]


def test_good_data_passes_and_the_counts_are_printed(data, tmp_path):
    console = Console(record=True, width=200)
    check_training_data(spec_on(data, tmp_path), console)
    assert "data pre-flight: 18 train and 6 val images checked" in console.export_text()


def test_an_image_with_a_corrupt_chunk_is_named(data, tmp_path):
    image = first_file(data / "train" / "images")
    raw = bytearray(image.read_bytes())
    raw[raw.index(b"IDAT") + 8] ^= 0xFF  # a byte of the pixel data: the header still opens
    image.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=rf"^{image}: image is truncated or corrupt"):
        check_training_data(spec_on(data, tmp_path))


def test_a_truncated_panoptic_png_is_named(data, tmp_path):
    png = first_file(data / "val" / "panoptic")
    png.write_bytes(png.read_bytes()[:300])
    with pytest.raises(UserError, match=rf"^{png}: image is truncated or corrupt"):
        check_training_data(spec_on(data, tmp_path))


def test_a_panoptic_png_of_another_size_than_its_image_is_named(data, tmp_path):
    png = first_file(data / "train" / "panoptic")
    Image.open(png).resize((32, 32)).save(png)
    with pytest.raises(UserError, match=rf"^{png}: label image is 32x32 \(HxW\) but its image .* is 128x128; expected the same size$"):
        check_training_data(spec_on(data, tmp_path))


def test_an_annotation_json_that_is_a_folder_is_named(data, tmp_path):
    spec = spec_on(data, tmp_path)
    spec.dataset.train.panoptic_json = str(data / "train")
    with pytest.raises(UserError, match=rf"^{data / 'train'}: cannot read the file \(Is a directory\); expected a JSON file$"):
        check_training_data(spec)


@pytest.mark.parametrize("policy", ["on", "off"])
def test_launch_refuses_corrupt_data_before_training(data, tmp_path, policy):
    png = first_file(data / "train" / "panoptic")
    png.write_bytes(png.read_bytes()[:300])
    results = tmp_path / "results"
    command = [sys.executable, "-m", "automl.cli", "launch", "-e", str(SMOKE_SPEC), *data_overrides(data), f"results_dir={results}", "--policy", policy]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {png}: image is truncated or corrupt (Truncated File Read)"
    assert not (results / "train").exists() and not (results / "automl").exists()


def test_the_benchmark_times_both_checks(tmp_path):
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "data_preflight.py"
    spec = importlib.util.spec_from_file_location("data_preflight_benchmark", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--num-images", "8", "--size", "32", "32", "--repeats", "1", "--out", str(tmp_path / "b.json")])
    assert [row["check"] for row in result["rows"]] == ["check_files", "check_dataset"]
    assert all(row["images"] == 6 and row["median_s"] > 0 for row in result["rows"])


@pytest.mark.parametrize(("rank", "checked"), [({}, True), ({"LOCAL_RANK": "1"}, False), ({"NODE_RANK": "1"}, False)])
def test_only_the_launching_process_checks_the_data(data, tmp_path, monkeypatch, rank, checked):
    """DDP workers re-run the command: the launcher already checked every file, so they go straight to training."""
    from typer.testing import CliRunner

    import automl.launch
    import automl.preflight
    from automl.cli import app

    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in rank.items():
        monkeypatch.setenv(key, value)
    calls = []
    monkeypatch.setattr(automl.preflight, "check_training_data", lambda spec, console=None: calls.append("checked"))
    monkeypatch.setattr(automl.launch, "train_once", lambda spec, path: calls.append("trained"))
    overrides = [*data_overrides(data), f"results_dir={tmp_path / 'results'}"]
    result = CliRunner().invoke(app, ["launch", "-e", str(SMOKE_SPEC), "--policy", "off", *overrides])
    assert result.exit_code == 0, result.output
    assert calls == (["checked", "trained"] if checked else ["trained"])
