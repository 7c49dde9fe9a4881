"""Where runs are tracked: a user's tracking URI is checked up front; the default store stays in results_dir."""

from pathlib import Path

import pytest

from automl.spec import load_spec
from automl.tracking import Tracker, tracking_uri
from model.errors import UserError


@pytest.mark.parametrize("uri", ["bogus://x", "mlflow.example.com:5000", "s3://bucket/mlruns"])
def test_a_tracking_uri_mlflow_cannot_open_is_refused_by_name(uri):
    with pytest.raises(UserError, match=rf"^automl.tracking_uri: '{uri}' is not a store MLflow opens; expected sqlite:///PATH"):
        tracking_uri(load_spec(None, [f"automl.tracking_uri={uri}"]))


@pytest.mark.parametrize(
    "uri", ["sqlite:////tmp/mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns", "http://127.0.0.1:5000", "https://mlflow.example.com", "databricks", "postgresql+psycopg2://u@h/db"]
)
def test_stores_mlflow_opens_are_kept_as_given(uri):
    assert tracking_uri(load_spec(None, [f"automl.tracking_uri={uri}"])) == uri


@pytest.mark.parametrize("name", ["run?v=2", "run#1", "run%20a", "my run"])
def test_the_default_store_stays_inside_a_results_dir_with_url_characters(tmp_path, name):
    results = tmp_path / name
    results.mkdir()
    Tracker(tracking_uri(load_spec(None, [f"results_dir={results}"])), "x")
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("mlflow.db")] == [Path(name) / "mlflow.db"]
