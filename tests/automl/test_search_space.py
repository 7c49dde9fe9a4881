"""Search spaces: derived from the train schema, every draw valid for the spec, every bad entry refused."""

import collections
import copy

import numpy as np
import optuna
import pytest
from omegaconf import OmegaConf

from automl.cli import format_space
from automl.search import entries as entries_module
from automl.search.parameter import Parameter
from automl.search.space import SearchSpace, preset_names, resolve_search_space, space_from_mapping
from automl.spec.schema import TAO_SPACE_FILE, action_schema, tao_space_yaml, train_leaves
from automl.spec.load import load_spec
from model.errors import UserError

optuna.logging.set_verbosity(optuna.logging.WARNING)

SOURCE = "my_space.yaml"
LR = "train.optim.lr"
HIDDEN = "model.mask_former.hidden_dim"
FFN = "model.mask_former.dim_feedforward"
SCHEDULE = "train.optim.lr_scheduler"
GAMMA = "train.optim.gamma"
MAX_SIZE = "dataset.augmentation.train_max_size"


def space_of(entries, overrides=()):
    return space_from_mapping(entries, load_spec(None, list(overrides)), SOURCE)


def draws(space, n, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.sample(study.ask()) for _ in range(n)]


def as_overrides(config):
    return [f"{key}={value}" for key, value in config.items()]


# ---------------------------------------------------------------------------------------------
# files and presets
# ---------------------------------------------------------------------------------------------
QUERIES = "model.mask_former.num_object_queries"
DEC_LAYERS = "model.mask_former.dec_layers"
LSJ_KEYS = {"dataset.augmentation.lsj_min_scale", "dataset.augmentation.lsj_max_scale"}
FINE_TUNING_KEYS = {
    LR, "train.optim.weight_decay", "train.optim.backbone_multiplier", "train.clip_grad_norm",
    "model.backbone.swin.drop_path_rate", "model.mask_former.no_object_weight", "model.mask_former.class_weight",
    "model.mask_former.mask_weight", "model.mask_former.dice_weight",
}  # fmt: skip


def test_committed_tao_space_is_up_to_date():
    assert TAO_SPACE_FILE.read_text() == tao_space_yaml(), "search_spaces/tao.yaml is stale: run `automl schema`"


def test_tao_preset_is_the_schemas_automl_default_parameters():
    space = resolve_search_space(load_spec(None, ["automl.search_space=tao"]))
    assert space.source == "search_spaces/tao.yaml"
    assert sorted(space.keys) == sorted(action_schema("train")["automl_default_parameters"])


def test_default_space_fine_tunes_and_picks_the_architecture_from_sets_when_training_from_scratch():
    space = resolve_search_space(load_spec(None))
    assert space.source == "search_spaces/default.yaml"
    assert set(space.keys) == FINE_TUNING_KEYS | {QUERIES, DEC_LAYERS}  # the spec trains with resize_crop: no lsj keys
    for key in ("train.optim.lr", "train.optim.weight_decay", "train.optim.backbone_multiplier", "train.clip_grad_norm"):
        assert space[key].log
    drawn = draws(space, 60)
    assert {c[QUERIES] for c in drawn} == {100, 200} and {c[DEC_LAYERS] for c in drawn} == {7, 10}
    for config in drawn[:5]:  # every draw is a valid spec
        load_spec(None, as_overrides(config))


def test_default_space_searches_the_jitter_range_of_an_lsj_spec():
    space = resolve_search_space(load_spec(None, ["dataset.augmentation.train_augmentation=lsj"]))
    assert LSJ_KEYS <= set(space.keys)
    assert all(c["dataset.augmentation.lsj_min_scale"] <= 1.0 <= c["dataset.augmentation.lsj_max_scale"] for c in draws(space, 50))


def test_default_space_keeps_the_architecture_of_a_pretrained_model(tmp_path):
    weights = tmp_path / "converted.pth"
    weights.write_bytes(b"")
    space = resolve_search_space(load_spec(None, [f"train.pretrained_model_path={weights}"]))
    assert set(space.keys) == FINE_TUNING_KEYS


def test_architecture_search_over_pretrained_weights_is_refused_in_one_line(tmp_path):
    weights = tmp_path / "converted.pth"
    weights.write_bytes(b"")
    spec = load_spec(None, [f"train.pretrained_model_path={weights}"])
    with pytest.raises(UserError, match=rf"^{SOURCE}: {QUERIES} change the network's shape, but train.pretrained_model_path loads .*converted.pth") as caught:
        space_from_mapping({LR: {}, QUERIES: {"options": [100, 200]}}, spec, SOURCE)
    assert "\n" not in str(caught.value)


def test_number_options_draw_only_those_values_and_each_must_meet_the_schema():
    space = space_of({HIDDEN: {"options": [128, 256]}, FFN: {"min": 512, "max": 1024}})
    assert {c[HIDDEN] for c in draws(space, 40)} == {128, 256}
    assert space.grid()[HIDDEN] == [128, 256]
    assert space.tune_domains()[HIDDEN].categories == [128, 256]
    with pytest.raises(UserError, match=rf"{HIDDEN}: option 100 is not within the schema's \[64, 1024\] and a multiple of 8"):
        space_of({HIDDEN: {"options": [100, 256]}})
    with pytest.raises(UserError, match=rf"{FFN}: a set of values must hold for every draw of {HIDDEN}"):
        space_of({HIDDEN: {"options": [128, 512]}, FFN: {"min": 256, "max": 1024}})


def test_optional_key_that_cannot_apply_is_left_out_and_the_same_key_without_it_is_refused():
    space = space_of({LR: {}, GAMMA: {"optional": True}}, overrides=[f"{SCHEDULE}=Cosine"])
    assert space.keys == [LR]
    with pytest.raises(UserError, match=rf"{GAMMA}: only used when {SCHEDULE} == MultiStep"):
        space_of({LR: {}, GAMMA: {}}, overrides=[f"{SCHEDULE}=Cosine"])
    with pytest.raises(UserError, match=r"no key of the space applies to this spec"):
        space_of({GAMMA: {"optional": True}}, overrides=[f"{SCHEDULE}=Cosine"])


def test_presets_resolve_by_name_and_full_covers_every_automl_enabled_key():
    assert {"default", "quick", "full", "tao"} <= set(preset_names())
    quick = resolve_search_space(load_spec(None, ["automl.search_space=quick"]))
    assert set(quick.keys) == {LR, "train.optim.weight_decay", "train.optim.backbone_multiplier"}
    full = resolve_search_space(load_spec(None, ["automl.search_space=full"]))
    enabled = {key for key, leaf in train_leaves().items() if leaf.meta.get("automl_enabled") is True}
    assert set(full.keys) == enabled


def test_search_space_may_be_a_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train.optim.lr: {min: 1.0e-5, max: 1.0e-3}\n")
    space = resolve_search_space(load_spec(None, [f"automl.search_space={path}"]))
    assert space.source == str(path) and space[LR].low == pytest.approx(1e-5)


def test_search_space_may_be_inline_in_the_spec():
    space = resolve_search_space(load_spec(None, ["automl.search_space={train.optim.lr: {max: 1.0e-3}}"]))
    assert space.source == "automl.search_space (inline)" and space[LR].high == pytest.approx(1e-3)


def test_unknown_preset_names_the_setting_and_the_presets():
    with pytest.raises(UserError, match=r"automl.search_space: 'fast' is neither a preset \(default, full, quick, tao"):
        resolve_search_space(load_spec(None, ["automl.search_space=fast"]))


def test_error_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train.optim.lr: {min: 1.0e-9}\n")
    with pytest.raises(UserError, match=f"{path}: train.optim.lr: min 1e-09 is below"):
        resolve_search_space(load_spec(None, [f"automl.search_space={path}"]))


# ---------------------------------------------------------------------------------------------
# derivation from the schema
# ---------------------------------------------------------------------------------------------
def test_empty_entry_takes_the_schema_bounds_and_log_scale():
    lr = space_of({LR: {}})[LR]
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-6, 1e-2, True)


def test_entry_narrows_the_range_and_may_change_the_scale():
    space = space_of({"model.mask_former.num_object_queries": {"min": 50, "max": 200}, LR: {"log": False}})
    queries = space["model.mask_former.num_object_queries"]
    assert (queries.kind, queries.low, queries.high, queries.log) == ("int", 50, 200, False)
    assert space[LR].log is False


def test_log_scale_draws_spread_over_orders_of_magnitude():
    values = np.array([c[LR] for c in draws(space_of({LR: {}}), 400)])
    decades = np.histogram(np.log10(values), bins=[-6, -5, -4, -3, -2])[0] / len(values)
    assert np.all(np.abs(decades - 0.25) < 0.08)


def test_multiple_of_condition_rounds_the_range_inward_and_every_draw_is_a_multiple():
    space = space_of({HIDDEN: {"min": 100, "max": 300}})
    assert (space[HIDDEN].low, space[HIDDEN].high, space[HIDDEN].step) == (104, 296, 8)
    values = [c[HIDDEN] for c in draws(space, 200)]
    assert all(isinstance(v, int) and v % 8 == 0 and 104 <= v <= 296 for v in values)
    assert len(set(values)) > 10


def test_log_scaled_integers_with_a_step_stay_on_multiples_and_spread_by_magnitude():
    space = space_of({MAX_SIZE: {"min": 64, "max": 8192, "log": True}})
    values = np.array([c[MAX_SIZE] for c in draws(space, 400)])
    assert np.all(values % 32 == 0) and values.min() >= 64 and values.max() <= 8192
    assert 0.25 < np.mean(values < 724) < 0.6  # the geometric middle of [64, 8192] splits draws roughly in half
    assert space.grid()[MAX_SIZE] == [64, 736, 8192]


@pytest.fixture
def heads_searchable(monkeypatch):
    """A schema in which nheads ('^ 2') is automl-enabled, as no shipped key with a power condition is."""
    leaves = copy.deepcopy(train_leaves())
    leaves["model.mask_former.nheads"].meta["automl_enabled"] = True
    monkeypatch.setattr(entries_module, "train_leaves", lambda: leaves)


def test_power_condition_draws_only_powers_through_the_exponent(heads_searchable):
    space = space_of({"model.mask_former.nheads": {"min": 3, "max": 40}})
    heads = space["model.mask_former.nheads"]
    assert (heads.low, heads.high, heads.power_of) == (4, 32, 2)
    values = collections.Counter(c["model.mask_former.nheads"] for c in draws(space, 300))
    assert set(values) == {4, 8, 16, 32}
    assert min(values.values()) > 40  # uniform over exponents, not over values
    assert space.grid()["model.mask_former.nheads"] == [4, 16, 32]  # exponents 2, 3.5 -> 4, 5
    assert space.tune_domains()["model.mask_former.nheads"].categories == [4, 8, 16, 32]


def test_dependent_value_is_at_least_the_value_it_depends_on_in_every_draw():
    space = space_of({HIDDEN: {"min": 64, "max": 1024}, FFN: {"min": 256, "max": 2048}})
    assert space.keys.index(HIDDEN) < space.keys.index(FFN)
    configs = draws(space, 300)
    assert all(c[FFN] >= c[HIDDEN] and c[FFN] % 8 == 0 for c in configs)
    assert min(c[FFN] for c in configs) < 400  # the dependent range still reaches down


def test_dependent_order_follows_dependencies_whatever_the_file_order():
    space = space_of({FFN: {}, HIDDEN: {"min": 64, "max": 512}})
    assert space.keys == [HIDDEN, FFN]


def test_range_is_narrowed_where_a_fixed_spec_value_bounds_it(caplog):
    space = space_of({HIDDEN: {"min": 64, "max": 1024}}, overrides=[f"{FFN}=512"])
    assert space[HIDDEN].high == 512
    assert "narrowed" in caplog.text and HIDDEN in caplog.text
    assert all(c[HIDDEN] <= 512 for c in draws(space, 100))


def test_activation_condition_draws_the_key_only_when_it_holds():
    configs = draws(space_of({SCHEDULE: {}, GAMMA: {}}), 200)
    for config in configs:
        assert (GAMMA in config) == (config[SCHEDULE] == "MultiStep")
    assert any(GAMMA in c for c in configs) and not all(GAMMA in c for c in configs)


def test_activation_condition_that_the_spec_meets_always_draws():
    space = space_of({GAMMA: {}})  # the spec's lr_scheduler is MultiStep
    assert space[GAMMA].active_when == ()
    assert all(GAMMA in c for c in draws(space, 5))


def test_option_weights_from_the_schema_are_honoured():
    counts = collections.Counter(c[SCHEDULE] for c in draws(space_of({SCHEDULE: {}}), 3000))
    assert set(counts) == {"MultiStep", "Warmuppoly", "Cosine"}  # actual values, not the uniform draw behind them
    for option, weight in {"MultiStep": 0.4, "Warmuppoly": 0.2, "Cosine": 0.4}.items():
        assert counts[option] / 3000 == pytest.approx(weight, abs=0.03)


def test_option_weights_of_the_entry_are_honoured_and_zero_weight_drops_an_option():
    space = space_of({SCHEDULE: {"options": ["MultiStep", "Warmuppoly", "Cosine"], "weights": [3, 0, 1]}})
    assert space[SCHEDULE].options == ("MultiStep", "Cosine")
    counts = collections.Counter(c[SCHEDULE] for c in draws(space, 2000))
    assert counts["MultiStep"] / 2000 == pytest.approx(0.75, abs=0.03)


def test_choices_without_weights_use_optunas_categorical():
    space = space_of({"dataset.augmentation.train_augmentation": {}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    space.sample(trial)
    assert isinstance(trial.distributions["dataset.augmentation.train_augmentation"], optuna.distributions.CategoricalDistribution)


def test_explicit_values_are_the_grid_and_bound_the_range():
    space = space_of({LR: {"values": [1e-4, 3e-4, 1e-3]}})
    assert (space[LR].low, space[LR].high) == (1e-4, 1e-3)
    assert space.grid() == {LR: [1e-4, 3e-4, 1e-3]}


def test_grid_lists_options_and_three_points_per_number():
    space = space_of({SCHEDULE: {}, LR: {"min": 1e-5, "max": 1e-3}, HIDDEN: {"min": 64, "max": 512}, FFN: {"max": 4096}})
    grid = space.grid()
    assert grid[SCHEDULE] == ["MultiStep", "Warmuppoly", "Cosine"]
    assert grid[LR] == pytest.approx([1e-5, 1e-4, 1e-3])
    assert grid[HIDDEN] == [64, 288, 512]
    assert min(grid[FFN]) >= max(grid[HIDDEN]) and all(v % 8 == 0 for v in grid[FFN])  # every combination is valid
    assert space.grid_size() == 3 * 3 * 3 * 3


def test_tune_domains_match_the_ranges_and_honour_weights():
    space = space_of({LR: {}, HIDDEN: {"min": 64, "max": 512}, MAX_SIZE: {"min": 64, "max": 8192, "log": True}, SCHEDULE: {}})
    domains = space.tune_domains()
    assert (domains[LR].lower, domains[LR].upper, str(domains[LR].get_sampler())) == (1e-6, 1e-2, "LogUniform")
    hidden = domains[HIDDEN].sample(size=300, random_state=0)
    assert all(v % 8 == 0 and 64 <= v <= 512 for v in hidden)
    sizes = domains[MAX_SIZE].sample(size=300, random_state=0)
    assert all(v % 32 == 0 and 64 <= v <= 8192 for v in sizes)
    counts = collections.Counter(domains[SCHEDULE].sample(size=3000, random_state=0))
    assert counts["Warmuppoly"] / 3000 == pytest.approx(0.2, abs=0.03)


def test_tune_domain_of_a_dependent_key_starts_at_the_top_of_the_other_range():
    domains = space_of({HIDDEN: {"min": 64, "max": 512}, FFN: {}}).tune_domains()
    assert domains[FFN].lower == 512


def test_clip_brings_perturbed_values_back_into_the_space():
    space = space_of({LR: {"min": 1e-5, "max": 1e-3}, HIDDEN: {"min": 64, "max": 512}, FFN: {"max": 4096}, SCHEDULE: {}})
    clipped = space.clip({LR: 5e-3, HIDDEN: 301.2, FFN: 100, SCHEDULE: "Cosine", "other.key": 1})
    assert clipped == {LR: 1e-3, HIDDEN: 304, FFN: 304, SCHEDULE: "Cosine", "other.key": 1}


def test_draws_pass_the_specs_own_validation_as_overrides():
    space = resolve_search_space(load_spec(None, ["automl.search_space=full"]))
    for config in draws(space, 30):
        spec = load_spec(None, as_overrides(config))  # raises UserError on any invalid value
        for key, value in config.items():
            assert OmegaConf.select(spec, key) == (pytest.approx(value) if isinstance(value, float) else value)


def test_same_seed_proposes_the_same_configs_and_another_seed_differs():
    space = resolve_search_space(load_spec(None, ["automl.search_space=full"]))

    def proposals(seed):
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        configs = []
        for _ in range(14):  # past TPE's 10 random start-up trials
            trial = study.ask()
            configs.append(space.sample(trial))
            study.tell(trial, configs[-1][LR] * 1e3 - configs[-1]["model.mask_former.dec_layers"] * 0.1)
        return configs

    assert proposals(7) == proposals(7)
    assert proposals(7) != proposals(8)


def test_space_is_described_row_by_row_and_as_a_table():
    space = space_of({HIDDEN: {"min": 64, "max": 512}, FFN: {}, SCHEDULE: {}, GAMMA: {}})
    rows = {row["parameter"]: row for row in space.describe()}
    assert rows[FFN]["constraints"] == f"multiple of 8; >= {HIDDEN}"
    assert rows[SCHEDULE]["range / options"] == "MultiStep (0.40), Warmuppoly (0.20), Cosine (0.40)"
    assert rows[GAMMA]["constraints"] == f"when {SCHEDULE} == MultiStep"
    assert (rows[HIDDEN]["range / options"], rows[HIDDEN]["scale"]) == ("[64, 512]", "linear")
    text = format_space(space)
    assert all(key in text for key in rows) and f"{SOURCE}: 4 searched parameters" in text


def test_parameters_built_directly_sample_without_a_spec():
    space = SearchSpace([Parameter("b", "int", 1, 10, at_least=("a",)), Parameter("a", "float", 0.5, 5.0)])
    assert space.keys == ["a", "b"]
    assert all(c["b"] >= c["a"] for c in draws(space, 100))


# ---------------------------------------------------------------------------------------------
# refused before any trial (each message names the key)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "entries, message",
    [
        ({"train.optim.lrate": {}}, r"train.optim.lrate: not a key of the spec; did you mean train.optim.lr"),
        ({"train.optim.momentum": {}}, r"train.optim.momentum: not automl-enabled"),
        ({"dataset.augmentation.test_max_size": {}}, r"dataset.augmentation.test_max_size: not automl-enabled"),
        ({LR: {"min": 1e-7}}, r"train.optim.lr: min 1e-07 is below the schema's minimum 1e-06"),
        ({LR: {"max": 0.5}}, r"train.optim.lr: max 0.5 is above the schema's maximum 0.01"),
        ({LR: {"min": 1e-3, "max": 1e-4}}, r"train.optim.lr: min 0.001 is greater than max 0.0001"),
        ({"model.mask_former.class_weight": {"log": True}}, r"model.mask_former.class_weight: a log scale needs min > 0"),
        ({SCHEDULE: {"options": ["MultiStep", "Linear"]}}, r"train.optim.lr_scheduler: options \['Linear'\] are not in"),
        ({SCHEDULE: {"weights": [0.5, 0.5]}}, r"train.optim.lr_scheduler: weights must be a list of 3 numbers"),
        ({SCHEDULE: {"weights": [0.5, -0.1, 0.6]}}, r"train.optim.lr_scheduler: weights must be numbers >= 0"),
        ({LR: {"low": 1e-5}}, r"train.optim.lr: unknown setting low; expected some of min, max, log, options, weights, values, optional"),
        ({LR: {"weights": [1.0]}}, r"train.optim.lr: 'weights' is for categorical parameters"),
        ({LR: {"options": [1e-4], "max": 1e-3}}, r"train.optim.lr: options list the values to choose from; drop max"),
        ({LR: {"optional": "yes"}}, r"train.optim.lr: optional must be true or false"),
        ({SCHEDULE: {"min": 0}}, r"train.optim.lr_scheduler: 'min' is for numbers"),
        ({HIDDEN: {"min": 65, "max": 70}}, r"model.mask_former.hidden_dim: no value between min 65 and max 70 is a multiple of 8"),
        ({HIDDEN: {"values": [64, 100]}}, r"model.mask_former.hidden_dim: value 100 is not within \[64, 100\] and a multiple of 8"),
        ({"model.mask_former.dec_layers": {"min": 2.5}}, r"model.mask_former.dec_layers: min: expected an integer"),
        ({LR: [1e-4]}, r"train.optim.lr: expected a mapping"),
        ({}, r"the search space is empty"),
    ],
)
def test_bad_entries_are_refused_naming_the_file_and_key(entries, message):
    with pytest.raises(UserError, match=f"^{SOURCE}: .*{message}"):
        space_of(entries)


def test_dependency_that_cannot_be_met_is_refused():
    with pytest.raises(UserError, match=rf"{SOURCE}: {FFN}: range \[256, 512\] lies entirely below {HIDDEN}'s \[600, 1024\]"):
        space_of({HIDDEN: {"min": 600, "max": 1024}, FFN: {"min": 256, "max": 512}})


def test_dependency_on_a_fixed_spec_value_that_cannot_be_met_is_refused():
    with pytest.raises(UserError, match=rf"{HIDDEN}: min 600 is above {FFN} = 512 \(fixed in the spec\)"):
        space_of({HIDDEN: {"min": 600, "max": 1024}}, overrides=[f"{FFN}=512"])


def test_activation_condition_the_space_never_draws_is_refused():
    with pytest.raises(UserError, match=rf"{GAMMA}: only used when {SCHEDULE} == MultiStep, which the space never draws"):
        space_of({SCHEDULE: {"options": ["Cosine", "Warmuppoly"]}, GAMMA: {}})


def test_activation_condition_the_spec_never_meets_is_refused():
    with pytest.raises(UserError, match=rf"{GAMMA}: only used when {SCHEDULE} == MultiStep, but the spec sets {SCHEDULE} to 'Cosine'"):
        space_of({GAMMA: {}}, overrides=[f"{SCHEDULE}=Cosine"])


def test_grid_value_below_the_range_it_must_exceed_is_refused():
    space = space_of({HIDDEN: {"min": 64, "max": 512}, FFN: {"values": [256, 1024]}})
    with pytest.raises(UserError, match=rf"{FFN}: grid value 256 is below 512"):
        space.grid()
