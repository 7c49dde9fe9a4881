"""Bad input a new user gives the `automl` command line: one line on stderr naming the key or file, exit 2, nothing trained.

Each case runs the CLI's `main()` in this process (the same code path as the installed command, without
a Python start per case); tests/automl/test_cli.py and test_preflight.py run the command in a subprocess.
"""

import sys
from pathlib import Path

import pytest

from automl.cli import main
from tests.conftest import SMOKE_SPEC, data_overrides

# (name, command line after `automl`, a fragment the one-line error must hold). {spec} is the smoke spec
# on the session's synthetic data, {tmp} the test's folder (holding a file `afile` and the specs below).
CASES = [
    ("misspelled mode", "launch {spec} model.mode=panoptik", "model.mode: 'panoptik' is not one of ['panoptic', 'instance', 'semantic']"),
    ("misspelled mode, evaluate", "evaluate {spec} model.mode=panoptik evaluate.checkpoint=best", "model.mode: 'panoptik' is not one of"),
    ("misspelled dataset type", "launch {spec} dataset.train.type=cocoo", "dataset.train.type: 'cocoo' is not one of"),
    ("spec is a directory", "launch -e {tmp}", "{tmp}: cannot read the spec file (Is a directory)"),
    ("spec not UTF-8", "spec show -e {tmp}/latin1.yaml", "latin1.yaml: byte 15 is not UTF-8"),
    ("duplicate key", "spec show -e {tmp}/duplicate.yaml", "duplicate.yaml:3:3: YAML syntax error: duplicate key 'num_epochs' (first at line 2)"),
    ("tab indentation", "spec show -e {tmp}/tab.yaml", "tab.yaml:2:1: YAML syntax error"),
    ("missing spec", "launch -e {tmp}/nope.yaml", "nope.yaml: spec file not found"),
    ("pixel_std of one value", "launch {spec} dataset.pixel_std=[1]", "dataset.pixel_std: [1.0] has 1 items; expected 3"),
    ("pixel_std of zeros", "launch {spec} dataset.pixel_std=[0,0,0]", "dataset.pixel_std: 0.0 breaks the condition '> 0.0'"),
    ("pixel_mean on the 0..255 scale", "launch {spec} dataset.pixel_mean=[123.7,116.3,103.5]", "dataset.pixel_mean: 123.7 is out of bounds"),
    ("NaN clip norm", "launch {spec} train.clip_grad_norm=.nan", "train.clip_grad_norm: nan is not finite"),
    ("infinite lr", "launch {spec} train.optim.lr=.inf", "train.optim.lr: inf is not finite"),
    ("NaN trial resources", "launch {spec} automl.resources_per_trial.cpu=.nan", "automl.resources_per_trial: {'cpu': nan} is not finite"),
    ("negative trial resources", "launch {spec} automl.resources_per_trial.cpu=-1", "automl.resources_per_trial: -1 is out of bounds; expected value >= 0.0"),
    ("crop of one side", "launch {spec} dataset.augmentation.train_crop_size=[128]", "train_crop_size: [128] has 1 items; expected 2"),
    ("no training sizes", "launch {spec} dataset.augmentation.train_min_size=[]", "dataset.augmentation.train_min_size: empty"),
    ("bogus tracking URI", "launch {spec} --tracking-uri bogus://x --policy off", "automl.tracking_uri: 'bogus://x' is not a store MLflow opens"),
    ("results_dir is a file", "launch {spec} results_dir={tmp}/afile", "results_dir: {tmp}/afile is a file; expected a folder"),
    ("results_dir under a file", "launch {spec} results_dir={tmp}/afile/run", "results_dir: {tmp}/afile/run is under the file {tmp}/afile"),
    ("override without '='", "launch {spec} train.num_epochs", "override 'train.num_epochs' must look like section.key=value"),
    ("override of the wrong type", "launch {spec} train.num_epochs=abc", "train.num_epochs: Value 'abc'"),
    ("unknown key", "launch {spec} train.num_epoch=3", "unknown key 'train.num_epoch'; did you mean train.num_epochs?"),
    ("section given a value", "launch {spec} train=3", "'train' is a section; expected a mapping, got 3"),
    ("unknown policy", "launch {spec} --policy maybe", "automl.policy: 'maybe' is not one of ['on', 'off']"),
    ("missing search space file", "launch {spec} automl.search_space=nope.yaml", "automl.search_space: 'nope.yaml' is neither a preset"),
    ("search space of a number", "launch {spec} automl.search_space=3", "automl.search_space: expected a preset name"),
    ("missing backbone weights", "launch {spec} model.backbone.pretrained_weights={tmp}/nope.pth", "model.backbone.pretrained_weights: {tmp}/nope.pth does not exist"),
    ("missing resume checkpoint", "launch {spec} --policy off train.resume_training_checkpoint_path={tmp}/nope.pth", "train.resume_training_checkpoint_path: {tmp}/nope.pth does not exist"),
    ("label map that is not JSON", "launch {spec} dataset.label_map={tmp}/duplicate.yaml", "duplicate.yaml: not valid JSON"),
    ("annotation JSON that is a folder", "launch {spec} dataset.train.panoptic_json={tmp}", "{tmp}: cannot read the file (Is a directory); expected a JSON file"),
    ("image folder that is a file", "launch {spec} dataset.train.img_dir={tmp}/afile", "{tmp}/afile: expected a folder or a .tar / .tar.gz / .tgz archive"),
    ("num_classes against the label map", "launch {spec} model.sem_seg_head.num_classes=3", "model.sem_seg_head.num_classes is 3, but the label map"),
    ("unknown metric", "launch {spec} automl.metric=foo", "automl.metric: 'foo' is not a metric this platform computes"),
    ("unknown split", "data check {spec} --split foo", "--split: 'foo' is not one of train, val, test"),
    ("synthetic data into a file", "data synth --out {tmp}/afile", "--out: {tmp}/afile is a file; expected a folder"),
    ("synthetic data under a file", "data synth --out {tmp}/afile/data", "--out: {tmp}/afile/data is under the file {tmp}/afile"),
    ("schemas into a file", "schema --out {tmp}/afile", "--out: {tmp}/afile is a file; expected a folder"),
    ("predictions that are not JSON", "evaluate {spec} --predictions {tmp}/afile", "{tmp}/afile: not valid JSON"),
]


@pytest.fixture
def workdir(tmp_path) -> Path:
    (tmp_path / "afile").write_text("")
    (tmp_path / "latin1.yaml").write_bytes("model_name: caf\xe9\n".encode("latin-1"))
    (tmp_path / "duplicate.yaml").write_text("train:\n  num_epochs: 3\n  num_epochs: 4\n")
    (tmp_path / "tab.yaml").write_text("train:\n\tnum_epochs: 3\n")
    return tmp_path


@pytest.mark.parametrize("command, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_and_exit_2(command, expected, workdir, synthetic_data, monkeypatch, capsys):
    results = workdir / "results"
    spec = ["-e", str(SMOKE_SPEC), *data_overrides(synthetic_data), f"results_dir={results}"]
    argv = [arg for word in command.split() for arg in (spec if word == "{spec}" else [word.replace("{tmp}", str(workdir))])]
    monkeypatch.setattr(sys, "argv", ["automl", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert expected.replace("{tmp}", str(workdir)) in err
    assert not (results / "train").exists() and not (results / "automl").exists()
