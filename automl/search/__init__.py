"""Hyperparameter search: the train schema -> a search space -> Optuna samplers and Ray Tune schedulers."""

from automl.search.algorithms import ALGORITHMS, SCHEDULERS, build_scheduler, build_searcher, check_combination
from automl.search.space import Parameter, SearchSpace, format_space, resolve_search_space, tao_space_yaml

__all__ = [
    "ALGORITHMS",
    "SCHEDULERS",
    "Parameter",
    "SearchSpace",
    "build_scheduler",
    "build_searcher",
    "check_combination",
    "format_space",
    "resolve_search_space",
    "tao_space_yaml",
]
