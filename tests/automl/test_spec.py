"""Loading specs: reference templates, overrides, and every kind of bad input."""

import logging
import os
from pathlib import Path

import pytest

from automl.spec import load_spec
from automl.spec.conditions import math_cond_holds
from automl.spec.load import iter_fields, parse_overrides
from model.errors import UserError

# Specs in the layout of the reference system (TAO Mask2Former), one per action.
TAO_SPECS = Path(__file__).resolve().parent / "fixtures" / "tao"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("action", ["train", "evaluate", "inference", "export", "gen_trt_engine", "quantize"])
def test_tao_specs_of_every_action_load(action):
    spec = load_spec(TAO_SPECS / f"spec_{action}.yaml")
    assert spec.model.mask_former.num_object_queries == 100
    assert spec.model.sem_seg_head.num_classes == 200


def test_tao_values_survive_and_ignored_sections_warn(caplog):
    with caplog.at_level(logging.WARNING):
        spec = load_spec(TAO_SPECS / "spec_train.yaml")
    assert spec.train.optim.milestones == [88, 96]
    assert spec.dataset.augmentation.train_crop_size == [640, 640]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "'wandb'" in warned and "'encryption_key'" in warned and "ignored" in warned


def test_overrides_are_typed_and_win_over_the_file(tmp_path):
    path = write(tmp_path, "train:\n  optim:\n    lr: 0.001\nmodel:\n  mode: semantic\n")
    spec = load_spec(path, ["train.optim.lr=1e-4", "model.mode=instance", "train.num_epochs=3", "automl.resources_per_trial.gpu=0.25"])
    assert spec.train.optim.lr == pytest.approx(1e-4)
    assert isinstance(spec.train.optim.lr, float)
    assert spec.model.mode == "instance"
    assert spec.train.num_epochs == 3
    assert spec.automl.resources_per_trial["gpu"] == 0.25


def test_parse_overrides_nests_dotted_keys():
    assert parse_overrides(["a.b.c=1", "a.b.d=x", "e=[1, 2]"]) == {"a": {"b": {"c": 1, "d": "x"}}, "e": [1, 2]}
    with pytest.raises(UserError, match="must look like section.key=value"):
        parse_overrides(["train.optim.lr"])


def test_unknown_key_in_file_suggests_the_right_one(tmp_path):
    path = write(tmp_path, "train:\n  optim:\n    learning_rate: 0.1\n    weight_decy: 0.1\n")
    with pytest.raises(UserError) as info:
        load_spec(path)
    assert "spec.yaml: unknown key 'train.optim.learning_rate'" in str(info.value)
    assert "spec.yaml: unknown key 'train.optim.weight_decy'; did you mean train.optim.weight_decay?" in str(info.value)


def test_unknown_key_on_command_line():
    with pytest.raises(UserError, match=r"command line: unknown key 'model.mask_former.num_queries'; did you mean model.mask_former.num_object_queries"):
        load_spec(None, ["model.mask_former.num_queries=50"])


def test_wrong_type_names_the_key(tmp_path):
    path = write(tmp_path, "train:\n  num_epochs: many\n")
    with pytest.raises(UserError, match=r"spec.yaml: train.num_epochs: Value 'many'.*Integer"):
        load_spec(path)


def test_section_given_a_scalar(tmp_path):
    with pytest.raises(UserError, match="'train.optim' is a section; expected a mapping"):
        load_spec(write(tmp_path, "train:\n  optim: 3\n"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.optim.lr=0.5", r"train.optim.lr: 0.5 is out of bounds; expected 1e-06 <= value <= 0.01"),
        ("model.mask_former.num_object_queries=0", r"num_object_queries: 0 is out of bounds"),
        ("dataset.augmentation.train_crop_size=[640,10]", r"train_crop_size: 10 is out of bounds"),
        ("model.mode=panoptc", r"model.mode: 'panoptc' is not one of \['panoptic', 'instance', 'semantic'\]"),
        ("model.mask_former.hidden_dim=100", r"hidden_dim: 100 breaks the condition '/ 8' \(a multiple of 8\)"),
        ("model.mask_former.nheads=6", r"nheads: 6 breaks the condition '\^ 2' \(a power of 2\)"),
        ("model.mask_former.dim_feedforward=128", r"dim_feedforward: 128 must be >= model.mask_former.hidden_dim \(256\)"),
        ("dataset.augmentation.test_max_size=320", r"test_max_size: 320 must be >= dataset.augmentation.test_min_size"),
        ("dataset.pixel_std=[1]", r"dataset.pixel_std: \[1.0\] has 1 items; expected 3"),
        ("dataset.pixel_std=[0,0,0]", r"dataset.pixel_std: 0.0 breaks the condition '> 0.0'"),
        ("dataset.pixel_mean=[123.675,116.28,103.53]", r"dataset.pixel_mean: 123.675 is out of bounds; expected 0.0 <= value <= 1.0"),
        ("dataset.augmentation.train_crop_size=[128]", r"train_crop_size: \[128\] has 1 items; expected 2"),
        ("automl.resources_per_trial.cpu=-1", r"automl.resources_per_trial: -1 is out of bounds; expected value >= 0.0"),
    ],
)
def test_bad_values_are_refused_with_the_key(override, message):
    with pytest.raises(UserError, match=message) as info:
        load_spec(None, [override])
    assert "\n" not in str(info.value)  # one bad value, one line


FLOAT_KEYS = sorted(key for key, _, value in iter_fields(load_spec(None)) if isinstance(value, float))


def test_every_float_field_is_checked_for_finiteness():
    assert {"train.clip_grad_norm", "train.optim.lr", "automl.trial_timeout_minutes", "model.mask_former.no_object_weight"} <= set(FLOAT_KEYS)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_non_finite_floats_are_refused_everywhere(key, value):
    with pytest.raises(UserError, match=rf"^<defaults>: {key}: -?(nan|inf) is not finite; expected a number"):
        load_spec(None, [f"{key}={value}"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("dataset.pixel_std=[0.2,.nan,0.2]", r"dataset.pixel_std: \[0.2, nan, 0.2\] is not finite"),
        ("automl.resources_per_trial.cpu=.nan", r"automl.resources_per_trial: \{'cpu': nan\} is not finite"),
    ],
)
def test_non_finite_items_of_lists_and_mappings_are_refused(override, message):
    with pytest.raises(UserError, match=message):
        load_spec(None, [override])


@pytest.mark.parametrize("action", ["train", "evaluate"])
@pytest.mark.parametrize(
    "override, message",
    [
        ("model.mode=panoptik", r"model.mode: 'panoptik' is not one of \['panoptic', 'instance', 'semantic'\]"),
        ("dataset.train.type=cocoo", r"dataset.train.type: 'cocoo' is not one of \['coco', 'ade', 'coco_panoptic'\]"),
        ("dataset.val.type=ADE", r"dataset.val.type: 'ADE' is not one of"),
    ],
)
def test_misspelled_enum_on_an_action_path_is_one_line(action, override, message):
    with pytest.raises(UserError, match=message) as info:
        load_spec(None, [override, "evaluate.checkpoint=best"], action=action)
    assert "\n" not in str(info.value)


def test_all_errors_reported_together():
    with pytest.raises(UserError) as info:
        load_spec(None, ["train.optim.lr=2", "model.mode=x"])
    assert "train.optim.lr" in str(info.value) and "model.mode" in str(info.value)


def test_yaml_syntax_error_gives_the_line(tmp_path):
    path = write(tmp_path, "train:\n  num_epochs: 3\n  optim: [lr: 1\n")
    with pytest.raises(UserError, match=r"spec.yaml:\d+:\d+: YAML syntax error"):
        load_spec(path)


def test_duplicate_key_is_refused_with_its_line(tmp_path):
    path = write(tmp_path, "train:\n  num_epochs: 3\n  optim:\n    lr: 0.001\n  num_epochs: 30\n")
    with pytest.raises(UserError, match=r"spec.yaml:5:3: YAML syntax error: duplicate key 'num_epochs' \(first at line 2\)"):
        load_spec(path)


def test_a_merge_key_may_be_overridden(tmp_path):
    text = "train:\n  optim: &base\n    lr: 0.001\n    gamma: 0.2\nevaluate:\n  num_gpus: 1\nquantize:\n  backend_kwargs:\n    <<: *base\n    lr: 0.002\n"
    assert load_spec(write(tmp_path, text)).quantize.backend_kwargs == {"lr": 0.002, "gamma": 0.2}


def test_spec_path_that_is_a_directory(tmp_path):
    with pytest.raises(UserError, match=rf"^{tmp_path}: cannot read the spec file \(Is a directory\); expected a YAML file$"):
        load_spec(tmp_path)


def test_spec_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model_name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.yaml: byte 15 is not UTF-8 \(invalid continuation byte\); save the spec as UTF-8 text"):
        load_spec(path)


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(UserError, match="expected a mapping"):
        load_spec(write(tmp_path, "- 1\n- 2\n"))


def test_missing_spec_file():
    with pytest.raises(UserError, match="nope.yaml: spec file not found"):
        load_spec("nope.yaml")


def test_train_needs_data_paths_for_its_dataset_type(tmp_path):
    path = write(tmp_path, "dataset:\n  train:\n    type: coco_panoptic\n    img_dir: /does/not/exist\n  val:\n    type: ade\n")
    with pytest.raises(UserError) as info:
        load_spec(path, action="train")
    text = str(info.value)
    assert "dataset.label_map: required" in text
    assert "dataset.train.img_dir: /does/not/exist does not exist" in text
    assert "dataset.train.panoptic_json: required for dataset.train.type 'coco_panoptic'" in text
    assert "dataset.val.type: 'ade' data cannot train or score model.mode 'panoptic'" in text


@pytest.mark.parametrize("key", ["model.backbone.pretrained_weights", "train.pretrained_model_path", "train.resume_training_checkpoint_path"])
def test_train_refuses_starting_weights_that_do_not_exist(tmp_path, key):
    with pytest.raises(UserError, match=rf"<defaults>: {key}: {tmp_path}/nope.pth does not exist"):
        load_spec(None, [f"{key}={tmp_path / 'nope.pth'}"], action="train")


def test_semantic_ade_split_needs_root_dir_only(tmp_path):
    (tmp_path / "ade").mkdir()
    (tmp_path / "labels.json").write_text("[]")
    overrides = ["model.mode=semantic", f"dataset.label_map={tmp_path / 'labels.json'}"]
    for split in ("train", "val"):
        overrides += [f"dataset.{split}.type=ade", f"dataset.{split}.root_dir={tmp_path / 'ade'}"]
    spec = load_spec(None, overrides, action="train")
    assert spec.dataset.val.root_dir == str(tmp_path / "ade")


@pytest.mark.parametrize("action, key", [("evaluate", "evaluate.checkpoint"), ("export", "export.checkpoint"), ("quantize", "quantize.model_path")])
def test_actions_need_their_checkpoint(action, key):
    with pytest.raises(UserError, match=rf"{key}: required for {action}"):
        load_spec(None, action=action)


def test_tao_missing_marker_counts_as_unset():
    with pytest.raises(UserError, match="export.checkpoint: required for export"):
        load_spec(TAO_SPECS / "spec_export.yaml", action="export")


def test_named_swin_fixes_the_architecture_and_conflicts_are_refused(tmp_path):
    spec = load_spec(None, ["model.backbone.swin.type=base"])
    assert (spec.model.backbone.swin.embed_dim, list(spec.model.backbone.swin.depths)) == (128, [2, 2, 18, 2])
    with pytest.raises(UserError, match=r"swin.embed_dim=64 conflicts with swin.type 'tiny' \(96\)"):
        load_spec(write(tmp_path, "model:\n  backbone:\n    swin:\n      embed_dim: 64\n"))
    custom = load_spec(None, ["model.backbone.swin.type=custom", "model.backbone.swin.embed_dim=32", "model.backbone.swin.depths=[1,1,1,1]"])
    assert custom.model.backbone.swin.embed_dim == 32 and list(custom.model.backbone.swin.depths) == [1, 1, 1, 1]


def test_paths_become_absolute_but_keywords_stay(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(None, ["results_dir=out", "export.checkpoint=best", "dataset.label_map=labels.json"])
    assert spec.results_dir == str(tmp_path / "out")
    assert spec.dataset.label_map == str(tmp_path / "labels.json")
    assert spec.export.checkpoint == "best"


def test_empty_results_dir_means_results(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert load_spec(None, ["results_dir="]).results_dir == str(tmp_path / "results")


def test_unknown_metric_is_refused():
    with pytest.raises(UserError, match="automl.metric: 'PQQ' is not a metric"):
        load_spec(None, ["automl.metric=PQQ"])


@pytest.mark.parametrize(
    "cond, value, holds",
    [("/ 8", 64, True), ("/ 8", 60, False), ("^ 2", 16, True), ("^ 2", 12, False), ("^ 2", 1, True), ("> 0.0", 0.0, False), (">0", 1, True), (">= 1", 1, True)],
)
def test_math_conditions(cond, value, holds):
    assert math_cond_holds(cond, value) is holds


def test_on_and_off_stay_words(tmp_path):
    spec = load_spec(write(tmp_path, "automl:\n  policy: off\ntrain:\n  cudnn:\n    benchmark: true\n"), ["automl.policy=on"])
    assert spec.automl.policy == "on"
    assert load_spec(write(tmp_path, "automl:\n  policy: off\n")).automl.policy == "off"
    assert spec.train.cudnn.benchmark is True


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).resolve().parents[2] / "experiments").glob("*.yaml")))
def test_bundled_experiment_specs_load(name):
    spec = load_spec(Path(__file__).resolve().parents[2] / "experiments" / name)
    assert spec.model.sem_seg_head.num_classes > 0


@pytest.mark.parametrize("action", ["train", "export"])
def test_results_dir_that_is_a_file_or_under_one(tmp_path, action):
    (tmp_path / "afile").write_text("")
    with pytest.raises(UserError, match=rf"^<defaults>: results_dir: {tmp_path}/afile is a file; expected a folder"):
        load_spec(None, [f"results_dir={tmp_path / 'afile'}", "export.checkpoint=best"], action=action)
    with pytest.raises(UserError, match=rf"^<defaults>: results_dir: {tmp_path}/afile/run is under the file {tmp_path}/afile; expected a folder"):
        load_spec(None, [f"results_dir={tmp_path / 'afile' / 'run'}", "export.checkpoint=best"], action=action)
    with pytest.raises(UserError, match=rf"^<defaults>: {action}.results_dir: {tmp_path}/afile is a file"):
        load_spec(None, [f"results_dir={tmp_path}", f"{action}.results_dir={tmp_path / 'afile'}", "export.checkpoint=best"], action=action)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_results_dir_is_refused_before_any_work(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(UserError, match=rf"^<defaults>: results_dir: {locked} is not writable; expected a folder this user can write in$"):
        load_spec(None, [f"results_dir={locked / 'run'}", "export.checkpoint=best"], action="export")
