"""Generate `<action>.schema.json`, `manifest.json` and spec templates from the spec dataclasses.

The shape follows the reference schemas (properties with `minimum`/`maximum`, `enum`,
`math_cond`, ... and the top-level `automl_default_parameters`, `automl_disabled_parameters`,
`default`, `popular`), so tools written for those read ours. The files are committed under
`search_spaces/schemas/` and a test regenerates them to catch drift.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import yaml

from automl.spec.config import ACTIONS, ExperimentConfig

SCHEMA_VERSION = 1
DEFAULT_SCHEMA_DIR = Path(__file__).resolve().parents[2] / "search_spaces" / "schemas"
# Sections every action's schema holds (as in the reference), then the action's own.
COMMON_SECTIONS = ["model_name", "encryption_key", "results_dir", "wandb", "model", "dataset", "train"]
ACTION_SECTIONS = {"train": ["automl"], **{a: [a] for a in ACTIONS if a != "train"}}


def action_schema(action: str) -> dict:
    """The JSON schema of one action's spec."""
    names = COMMON_SECTIONS + ACTION_SECTIONS[action]
    defaults = dataclasses.asdict(ExperimentConfig())
    properties, default_params, disabled = {}, [], []
    popular: dict = {}
    hints = typing.get_type_hints(ExperimentConfig)
    for f in dataclasses.fields(ExperimentConfig):
        if f.name not in names:
            continue
        prop = _property(f, hints[f.name], f.name, defaults[f.name], default_params, disabled)
        properties[f.name] = prop
        if prop.get("popular_values"):
            popular[f.name] = prop.pop("popular_values")
    return {
        "automl_default_parameters": sorted(default_params),
        "automl_disabled_parameters": sorted(disabled),
        "default": {name: defaults[name] for name in names},
        "popular": popular,
        "properties": properties,
        "required": [name for name in names if name in ("model", "dataset", action)],
        "type": "object",
        "x_schema": {"action": action, "model": "mask2former", "schema_version": SCHEMA_VERSION},
    }


def manifest() -> dict:
    actions = {}
    for action in ACTIONS:
        schema = action_schema(action)
        actions[action] = {
            "automl_default_parameters": schema["automl_default_parameters"],
            "automl_disabled_parameters": schema["automl_disabled_parameters"],
            "path": f"schemas/{action}.schema.json",
            "popular": schema["popular"],
            "schema_action": action,
            "spec_template": f"schemas/spec_template_{action}.yaml",
        }
    return {"actions": actions, "automl_enabled": True, "model": "mask2former", "schema_version": SCHEMA_VERSION}


def write_schemas(out_dir: str | Path = DEFAULT_SCHEMA_DIR) -> list[Path]:
    """Write every action's schema, its spec template and the manifest; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for action in ACTIONS:
        schema = action_schema(action)
        written.append(_write(out / f"{action}.schema.json", json.dumps(schema, indent=1, sort_keys=True) + "\n"))
        template = yaml.safe_dump(schema["default"], sort_keys=False, default_flow_style=False)
        written.append(_write(out / f"spec_template_{action}.yaml", template))
    written.append(_write(out / "manifest.json", json.dumps(manifest(), indent=1, sort_keys=True) + "\n"))
    return written


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _property(f: dataclasses.Field, annotation: Any, key: str, default: Any, default_params: list, disabled: list) -> dict:
    """The schema entry of one field; collects the AutoML default/disabled keys below it."""
    meta = f.metadata
    if dataclasses.is_dataclass(annotation):
        inner_defaults, inner_disabled, props, popular = [], [], {}, {}
        hints = typing.get_type_hints(annotation)
        for child in dataclasses.fields(annotation):
            prop = _property(child, hints[child.name], f"{key}.{child.name}", default[child.name], inner_defaults, inner_disabled)
            props[child.name] = prop
            if prop.get("popular_values") is not None:
                popular[child.name] = prop.pop("popular_values")
        default_params += inner_defaults
        disabled += inner_disabled + [key]
        out = {
            "automl_default_parameters": sorted(inner_defaults),
            "automl_disabled_parameters": sorted(inner_disabled),
            "automl_enabled": False,
            "default": default,
            "description": meta.get("description", ""),
            "popular": sorted(popular),
            "properties": props,
            "type": "collection",
        }
        if popular:
            out["popular_values"] = popular
        return out

    kind = _kind(annotation, meta)
    out = {"default": default, "description": meta["description"], "title": key.rsplit(".", 1)[-1].replace("_", " "), "type": kind}
    for name, schema_name in (("valid_min", "minimum"), ("valid_max", "maximum"), ("valid_options", "enum")):
        if meta.get(name) is not None:
            out[schema_name] = meta[name]
    for name in ("option_weights", "math_cond", "depends_on"):
        if meta.get(name) is not None:
            out[name] = meta[name]
    if meta.get("length") is not None:
        out["minItems"] = out["maxItems"] = meta["length"]
    out["automl_enabled"] = bool(meta.get("automl_enabled"))
    out["log_scale"] = meta.get("log_scale", False)
    if meta.get("popular"):
        out["popular"] = True
        out["popular_values"] = default
    if meta.get("automl_default"):
        default_params.append(key)
    if meta.get("automl_enabled") is False or (kind == "list" and not meta.get("automl_enabled")):
        disabled.append(key)
    return out


def _kind(annotation: Any, meta: Any) -> str:
    """The reference's type names: int, float, bool, string, categorical, list, collection."""
    if meta.get("valid_options") is not None and len(meta["valid_options"]) > 1:
        return "categorical"
    origin = typing.get_origin(annotation)
    if origin is typing.Union:  # Optional[X]
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        origin = typing.get_origin(annotation)
    if origin in (list, typing.List):
        return "list"
    if origin in (dict, typing.Dict):
        return "collection"
    return {int: "int", float: "float", bool: "bool", str: "string"}.get(annotation, "string")
