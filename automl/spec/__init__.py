"""The experiment spec: dataclasses with schema metadata, loading and validation, JSON schemas."""

from automl.spec.config import ACTIONS, ExperimentConfig
from automl.spec.load import load_spec

__all__ = ["ACTIONS", "ExperimentConfig", "load_spec"]
