"""The `automl` command line: help, spec show with overrides, errors without tracebacks."""

import subprocess
import sys

import yaml


def run(*args):
    return subprocess.run([sys.executable, "-m", "automl.cli", *args], capture_output=True, text=True)


def test_help_lists_the_actions():
    result = run("--help")
    assert result.returncode == 0
    for command in ("spec", "schema"):
        assert command in result.stdout


def test_spec_show_prints_the_resolved_spec(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("train:\n  num_epochs: 4\n")
    result = run("spec", "show", "-e", str(spec), "train.optim.lr=1e-3", "model.mode=semantic")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["train"]["num_epochs"] == 4
    assert resolved["train"]["optim"]["lr"] == 1e-3
    assert resolved["model"]["mode"] == "semantic"


def test_user_errors_print_a_message_and_exit_2(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("train:\n  num_epoch: 4\n")
    result = run("spec", "show", "-e", str(spec))
    assert result.returncode == 2
    assert "unknown key 'train.num_epoch'; did you mean train.num_epochs" in result.stderr.replace("\n", " ")
    assert "Traceback" not in result.stderr


def test_schema_writes_every_action(tmp_path):
    result = run("schema", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "train.schema.json").exists() and (tmp_path / "manifest.json").exists()
    assert (tmp_path / "spec_template_evaluate.yaml").exists()
