"""Hyperparameter search: the train schema -> a search space -> Optuna samplers and Ray Tune schedulers."""

from automl.search.algorithms import ALGORITHMS, RESUMING_SCHEDULERS, SCHEDULERS, build_scheduler, build_searcher, check_combination
from automl.search.parameter import Parameter
from automl.search.space import SearchSpace, resolve_search_space

__all__ = [
    "ALGORITHMS",
    "RESUMING_SCHEDULERS",
    "SCHEDULERS",
    "Parameter",
    "SearchSpace",
    "build_scheduler",
    "build_searcher",
    "check_combination",
    "resolve_search_space",
]
