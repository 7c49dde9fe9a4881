"""Generated schemas: up to date with the dataclasses, in the reference's shape, with our fixes."""

import filecmp
import json

import pytest

from automl.spec.config import ACTIONS
from automl.spec.schema import DEFAULT_SCHEMA_DIR, action_schema, write_schemas


def test_committed_schemas_are_up_to_date(tmp_path):
    written = write_schemas(tmp_path)
    stale = [p.name for p in written if not (DEFAULT_SCHEMA_DIR / p.name).exists() or not filecmp.cmp(p, DEFAULT_SCHEMA_DIR / p.name, shallow=False)]
    assert not stale, f"search_spaces/schemas is out of date for {stale}: run `automl schema` and commit"


def test_schema_has_the_reference_top_level_shape():
    schema = action_schema("train")
    for key in ("automl_default_parameters", "automl_disabled_parameters", "default", "popular", "properties", "required"):
        assert key in schema
    assert schema["type"] == "object"
    assert set(schema["default"]) == set(schema["properties"])
    assert schema["properties"]["model"]["type"] == "collection"


def leaf(schema, dotted):
    node = schema
    for part in dotted.split("."):
        node = node["properties"][part]
    return node


def test_learning_rate_and_weight_decay_are_searched_on_log_scales():
    schema = action_schema("train")
    lr, wd = leaf(schema, "train.optim.lr"), leaf(schema, "train.optim.weight_decay")
    assert lr["log_scale"] and wd["log_scale"]
    assert (lr["minimum"], lr["maximum"]) == (1e-6, 1e-2)
    assert wd["minimum"] > 0
    assert "train.optim.lr" in schema["automl_default_parameters"]


def test_momentum_and_test_sizes_are_not_searched():
    schema = action_schema("train")
    for key in ("train.optim.momentum", "dataset.augmentation.test_min_size", "dataset.augmentation.test_max_size"):
        assert leaf(schema, key)["automl_enabled"] is False
        assert key in schema["automl_disabled_parameters"]
        assert key not in schema["automl_default_parameters"]


def test_every_searchable_number_has_finite_bounds():
    schema = action_schema("train")

    def walk(node, prefix=""):
        for name, prop in node["properties"].items():
            if prop["type"] == "collection" and "properties" in prop:
                yield from walk(prop, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", prop

    searchable = [(k, p) for k, p in walk(schema) if p.get("automl_enabled") and p["type"] in ("int", "float")]
    assert searchable
    for key, prop in searchable:
        assert "minimum" in prop and "maximum" in prop, key
        assert prop["maximum"] < float("inf"), key


def test_schema_metadata_carries_weights_conditions_and_dependencies():
    schema = action_schema("train")
    scheduler = leaf(schema, "train.optim.lr_scheduler")
    assert scheduler["type"] == "categorical" and len(scheduler["option_weights"]) == len(scheduler["enum"])
    assert leaf(schema, "model.mask_former.hidden_dim")["math_cond"] == "/ 8"
    assert leaf(schema, "model.mask_former.nheads")["math_cond"] == "^ 2"
    assert leaf(schema, "model.mask_former.dim_feedforward")["depends_on"] == [">= model.mask_former.hidden_dim"]


@pytest.mark.parametrize("action", ACTIONS)
def test_each_action_schema_holds_its_section(action):
    schema = action_schema(action)
    own = "automl" if action == "train" else action
    assert own in schema["properties"] and "model" in schema["properties"]


def test_manifest_lists_every_action():
    manifest = json.loads((DEFAULT_SCHEMA_DIR / "manifest.json").read_text())
    assert set(manifest["actions"]) == set(ACTIONS)
    assert manifest["actions"]["train"]["automl_default_parameters"] == action_schema("train")["automl_default_parameters"]
