"""Hyperparameter search: the train schema -> a search space -> Optuna samplers and Ray Tune schedulers."""

from automl.search.algorithms import ALGORITHMS, SCHEDULERS, build_scheduler, build_searcher, check_combination
from automl.search.parameter import Parameter
from automl.search.space import SearchSpace, resolve_search_space

__all__ = [
    "ALGORITHMS",
    "SCHEDULERS",
    "Parameter",
    "SearchSpace",
    "build_scheduler",
    "build_searcher",
    "check_combination",
    "resolve_search_space",
]
