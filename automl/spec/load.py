"""Load a spec: YAML file + dotted overrides -> a validated, typed `DictConfig`.

OmegaConf does the parsing, merging and type conversion against the dataclasses; this module
turns its failures into messages that name the file and key, and adds what OmegaConf does not
check (bounds, enums, math conditions, relations, paths each action needs).
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from automl.spec.conditions import compare, parse_math_cond, parse_relation
from automl.spec.config import ACTIONS, ExperimentConfig
from automl.spec.fields import section_type, spec_leaves
from automl import storage
from model.data.files import is_remote
from model.errors import UserError
from model.metrics import METRIC_NAMES  # validation logs these; the search can optimise any of them
from model.presets import SWIN_PRESETS

log = logging.getLogger(__name__)

# Sections that reference specs carry and this platform accepts but does not use.
IGNORED_KEYS = ("wandb", "encryption_key")
# Placeholder of the reference templates for "must be given".
MISSING = "???"
# Values of a checkpoint key that name a checkpoint of this results_dir rather than a file.
CHECKPOINT_KEYWORDS = ("best", "latest")

# Inputs that each dataset type needs, per split (model.data.build.REQUIRED_PATHS, kept here so
# that loading a spec does not import torch).
SPLIT_PATHS = {
    "coco_panoptic": ("img_dir", "panoptic_json", "panoptic_dir"),
    "coco": ("img_dir", "instance_json"),
    "ade": ("root_dir",),
}
# Which data formats can supervise which mode.
MODE_DATASET_TYPES = {
    "panoptic": ("coco_panoptic",),
    "instance": ("coco_panoptic", "coco"),
    "semantic": ("coco_panoptic", "coco", "ade"),
}


class _SpecLoader(yaml.SafeLoader):
    """YAML with only true/false as booleans (YAML 1.1 would read `policy: off` as False) and each
    key once per mapping (YAML would keep the last value without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then a key overriding it is intended
                continue
            key = self.construct_object(key_node)
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first at line {first_line[key] + 1})", key_node.start_mark
                )
            first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def parse_yaml(text: Any) -> Any:
    return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 (a SafeLoader subclass)


def load_spec(
    path: str | os.PathLike | None, overrides: Sequence[str] = (), action: str | None = None, need_checkpoint: bool = True
) -> DictConfig:
    """Read `path` (or only defaults when None), apply `key=value` overrides and validate.

    With `action` set, the inputs that action needs (data paths, and its checkpoint unless
    need_checkpoint is False) are checked too.
    Raises UserError naming the file/key and what was expected.
    """
    source = str(path) if path is not None else "<defaults>"
    user = read_yaml(path) if path is not None else {}
    for key in IGNORED_KEYS:
        if key in user:
            log.warning("%s: '%s' is accepted for compatibility and ignored", source, key)
    layers = [(_drop_missing_markers(user), source), (parse_overrides(overrides), "command line")]
    return build_spec(layers, action, need_checkpoint)


def apply_values(base: dict, values: dict[str, Any]) -> DictConfig:
    """A resolved spec (as a plain dict) with dotted-key values applied, validated again."""
    return build_spec([(base, "spec"), (nest(values), "trial values")])


def build_spec(layers: Sequence[tuple[dict, str]], action: str | None = None, need_checkpoint: bool = True) -> DictConfig:
    """Defaults, then each (mapping, where it came from) layer in order; then every check."""
    for layer, where in layers:
        check_keys(layer, ExperimentConfig, where)
    spec = OmegaConf.structured(ExperimentConfig)
    for layer, where in layers:
        try:
            spec = OmegaConf.merge(spec, layer)
        except OmegaConfBaseException as err:
            raise UserError(f"{where}: {_describe(err)}") from None
    if not spec.results_dir:  # reference templates leave it empty
        spec.results_dir = "results"
    _apply_swin_preset(spec, layers)
    _make_paths_absolute(spec)
    errors = list(validate(spec))
    if action is not None and not errors:  # an action's inputs are looked up from a valid spec only
        errors = list(check_action_inputs(spec, action, need_checkpoint))
    if errors:
        raise UserError("\n".join(f"{layers[0][1]}: {error}" for error in errors))
    return spec


def read_yaml(path: str | os.PathLike) -> dict:
    """Parse a YAML mapping (UTF-8, each key once per mapping); a syntax error names the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            data = parse_yaml(f)
    except FileNotFoundError:
        raise UserError(f"{path}: spec file not found") from None
    except OSError as err:  # a directory, no permission
        raise UserError(f"{path}: cannot read the spec file ({err.strerror}); expected a YAML file") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: byte {err.start} is not UTF-8 ({err.reason}); save the spec as UTF-8 text") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of spec sections at the top level, got {type(data).__name__}")
    return data


def parse_overrides(overrides: Iterable[str]) -> dict:
    """`["train.optim.lr=1e-4", "model.mode=instance"]` -> nested dict (values parsed as YAML)."""
    values = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise UserError(f"command line: override '{item}' must look like section.key=value")
        try:
            values[key] = parse_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            values[key] = raw
    return nest(values)


def nest(values: dict[str, Any]) -> dict:
    """{"a.b": 1, "a.c": 2} -> {"a": {"b": 1, "c": 2}}."""
    nested: dict = {}
    for key, value in values.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"'{key}' sets a value and one of its sub-keys")
        node[leaf] = value
    return nested


def check_keys(data: dict, cls: type, source: str) -> None:
    """Refuse keys the dataclass `cls` does not have (all of them at once), suggesting the closest."""
    problems = list(_unknown_keys(data, cls))
    if problems:
        raise UserError(f"{source}: " + f"\n{source}: ".join(problems))


def _unknown_keys(data: dict, cls: type, prefix: str = "") -> Iterator[str]:
    known = {f.name for f in fields(cls)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(prefix + c for c in close)}?" if close else ""
            yield f"unknown key '{dotted}'{hint}"
            continue
        sub = section_type(cls, key)
        if sub is None:
            continue
        if isinstance(value, dict):
            yield from _unknown_keys(value, sub, dotted + ".")
        else:
            yield f"'{dotted}' is a section; expected a mapping, got {value!r}"


def validate(spec: DictConfig) -> Iterator[str]:
    """Every metadata rule of every field: bounds, enums, math conditions, relations."""
    for key, meta, value in iter_fields(spec):
        yield from _check_value(spec, key, meta, value)
    if is_remote(spec.results_dir):
        yield f"results_dir: {spec.results_dir} is a URI; expected a local folder (put the sweep's checkpoints in object storage with automl.storage_uri)"
    metric = spec.automl.metric
    if metric and metric.split("/")[-1] not in METRIC_NAMES:
        yield f"automl.metric: '{metric}' is not a metric this platform computes; expected one of {sorted(METRIC_NAMES)}"


def check_action_inputs(spec: DictConfig, action: str, need_checkpoint: bool = True) -> Iterator[str]:
    """The inputs `action` reads must be set (and, for data, exist) before any work starts.

    Object-storage URIs are checked against the store (automl.s3_endpoint_url, which this process
    and the ones it starts use from now on); the first unreadable one raises at once.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action}")
    storage.use_endpoint(spec.automl.s3_endpoint_url)
    yield from check_writable("results_dir", spec.results_dir)
    if spec[action].results_dir:
        yield from check_writable(f"{action}.results_dir", spec[action].results_dir)
    if action == "train":  # the starting weights and the sweep's storage, when given
        for key in ("model.backbone.pretrained_weights", "train.pretrained_model_path", "train.resume_training_checkpoint_path"):
            if OmegaConf.select(spec, key) not in ("", *CHECKPOINT_KEYWORDS):
                yield from _check_path(spec, key)
        if is_remote(spec.automl.storage_uri):
            storage.check_writable(spec.automl.storage_uri, "automl.storage_uri")
    splits = {"train": ("train", "val"), "evaluate": ("val",)}.get(action, ())
    if splits or action == "inference":
        yield from _check_path(spec, "dataset.label_map")
    for split in splits:
        yield from _check_split(spec, split)
    if action == "inference":
        yield from _check_path(spec, "dataset.test.img_dir")
    checkpoint_key = {
        "evaluate": "evaluate.checkpoint",
        "inference": "inference.checkpoint",
        "export": "export.checkpoint",
        "quantize": "quantize.model_path",
        "gen_trt_engine": "gen_trt_engine.onnx_file",
    }.get(action)
    if checkpoint_key and need_checkpoint:
        engine_key = f"{action}.trt_engine" if action in ("evaluate", "inference") else None
        if not OmegaConf.select(spec, checkpoint_key) and not (engine_key and OmegaConf.select(spec, engine_key)):
            yield f"{checkpoint_key}: required for {action} (a file, or 'best'/'latest' of this results_dir)"


def iter_fields(spec: DictConfig) -> Iterator[tuple[str, dict, Any]]:
    """(dotted key, metadata, value) of every leaf field of the spec."""
    for leaf in spec_leaves(ExperimentConfig):
        yield leaf.key, leaf.meta, OmegaConf.select(spec, leaf.key)


def _check_value(spec: DictConfig, key: str, meta: dict, value: Any) -> Iterator[str]:
    is_list = isinstance(value, (list, tuple)) or OmegaConf.is_list(value)
    items = list(value) if is_list else list(value.values()) if OmegaConf.is_dict(value) else [value]
    numbers = [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not all(math.isfinite(v) for v in numbers):  # NaN passes every comparison below
        yield f"{key}: {_plain(value)!r} is not finite; expected a number (not NaN or infinity)"
        return
    length = meta.get("length")
    if is_list and length is not None and len(items) != length:
        yield f"{key}: {_plain(value)!r} has {len(items)} items; expected {length}"
    # A list is reported by its first bad item: one line per key.
    low, high = meta.get("valid_min"), meta.get("valid_max")
    out_of_bounds = [v for v in numbers if (low is not None and v < low) or (high is not None and v > high)]
    if out_of_bounds:
        expected = f"{low} <= value <= {high}" if low is not None and high is not None else f"value >= {low}" if low is not None else f"value <= {high}"
        yield f"{key}: {out_of_bounds[0]!r} is out of bounds; expected {expected}"
    options = meta.get("valid_options")
    if options is not None and value is not None and value not in options:
        yield f"{key}: {value!r} is not one of {options}"
    cond = parse_math_cond(meta["math_cond"]) if meta.get("math_cond") else None
    broken = [v for v in numbers if cond and not cond.holds(v)]
    if broken:
        yield f"{key}: {broken[0]!r} breaks the condition '{meta['math_cond']}' ({cond.describe()})"
    for relation in map(parse_relation, meta.get("depends_on") or ()):
        if relation.is_activation or value is None:
            continue
        other = OmegaConf.select(spec, relation.other)
        if other is not None and not compare(value, relation.op, other):
            yield f"{key}: {value!r} must be {relation.op} {relation.other} ({other!r})"


def _check_split(spec: DictConfig, split: str) -> Iterator[str]:
    cfg = spec.dataset[split]
    allowed = MODE_DATASET_TYPES[spec.model.mode]
    if cfg.type not in allowed:
        yield f"dataset.{split}.type: '{cfg.type}' data cannot train or score model.mode '{spec.model.mode}'; expected one of {list(allowed)}"
    for name in SPLIT_PATHS[cfg.type]:
        yield from _check_path(spec, f"dataset.{split}.{name}", why=f"for dataset.{split}.type '{cfg.type}'")
    if cfg.type == "ade" and cfg.annot_file and cfg.root_dir:
        annot = os.path.join(cfg.root_dir, cfg.annot_file)  # a URI's '/' joins alike
        if is_remote(annot):
            storage.check_uri(annot, f"dataset.{split}.annot_file")
        elif not os.path.exists(annot):
            yield f"dataset.{split}.annot_file: {annot} does not exist"


def _check_path(spec: DictConfig, key: str, why: str = "") -> Iterator[str]:
    value = OmegaConf.select(spec, key)
    if not value:
        yield f"{key}: required{' ' + why if why else ''}"
    elif is_remote(value):
        storage.check_uri(value, key)  # raises: an unreachable store or refused credentials would fail every URI alike
    elif not os.path.exists(value):
        yield f"{key}: {value} does not exist"


def check_writable(key: str, folder: str) -> Iterator[str]:
    """`folder` (set by `key`) is a writable folder, or can be made one (its nearest existing parent is a writable folder)."""
    if "://" in folder:  # object storage: its own permissions
        return
    path = Path(folder)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is under the file {existing}"
        yield f"{key}: {folder} {where}; expected a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        yield f"{key}: {existing} is not writable; expected a folder this user can write in"


def _apply_swin_preset(spec: DictConfig, layers: Sequence[tuple[dict, str]]) -> None:
    """A named Swin size decides embed_dim/depths/num_heads; a differing explicit value is an error."""
    swin = spec.model.backbone.swin
    preset = SWIN_PRESETS.get(swin.type)
    if preset is None:
        return
    for layer, where in layers:
        given = layer.get("model", {}).get("backbone", {}).get("swin", {})
        for name, expected in zip(("embed_dim", "depths", "num_heads"), (preset[0], list(preset[1]), list(preset[2]))):
            if name in given and given[name] != expected:
                raise UserError(
                    f"{where}: model.backbone.swin.{name}={given[name]!r} conflicts with swin.type "
                    f"'{swin.type}' ({expected!r}); set model.backbone.swin.type: custom to build your own"
                )
    swin.embed_dim, swin.depths, swin.num_heads = preset[0], list(preset[1]), list(preset[2])


def _make_paths_absolute(spec: DictConfig) -> None:
    for leaf in (leaf for leaf in spec_leaves(ExperimentConfig) if leaf.meta.get("is_path")):
        value = OmegaConf.select(spec, leaf.key)
        if value and value not in CHECKPOINT_KEYWORDS and "://" not in value:
            OmegaConf.update(spec, leaf.key, os.path.abspath(os.path.expanduser(value)))


def _drop_missing_markers(data: Any) -> Any:
    """The reference templates write '???' for required values: treat them as unset."""
    if isinstance(data, dict):
        return {k: _drop_missing_markers(v) for k, v in data.items() if v != MISSING}
    return data


def _plain(value: Any) -> Any:
    """A list or mapping of the spec as plain Python, for messages."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
    message = str(getattr(err, "msg", None) or err).splitlines()[0]
    return f"{key}: {message}"

