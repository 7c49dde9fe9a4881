"""Data, sweep storage and MLflow artifacts in object storage, against a real S3 server (SeaweedFS) on 127.0.0.1.

Data URIs are downloaded once into the results' cache; bad buckets, keys, credentials and endpoints
are one-line errors naming the URI before any work; a sweep whose data and storage live in the
bucket runs, is interrupted, resumes, and leaves its MLflow artifacts in the bucket; the secret
key appears in no log, MLflow value or stored file.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from automl.spec import load_spec
from automl.trial import CHECKPOINT_FILE
from model.data.archives import resolve_dir, resolve_file
from model.errors import UserError
from tests.conftest import SMOKE_SPEC
from tests.s3_server import ACCESS_KEY, SECRET_KEY


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The server's credentials and endpoint in this process's environment (restored afterwards)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.setenv(name, s3_server.endpoint_url)
    return s3_server


@pytest.fixture
def bucket(s3):
    """A fresh bucket for one test."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=name)
    return name


def upload(s3, bucket: str, local: Path, prefix: str) -> None:
    client = s3.client()
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")


def bucket_data_overrides(bucket: str, prefix: str = "data") -> list[str]:
    """The smoke spec's data in the bucket: training images as an archive, the rest as folders and keys."""
    root = f"s3://{bucket}/{prefix}"
    overrides = [f"dataset.label_map={root}/label_map.json", f"dataset.train.img_dir={root}/train/images.tar.gz"]
    for split in ("train", "val"):
        overrides += [f"dataset.{split}.panoptic_json={root}/{split}/annotations_panoptic.json", f"dataset.{split}.panoptic_dir={root}/{split}/panoptic"]
    overrides += [f"dataset.val.img_dir={root}/val/images", f"dataset.test.img_dir={root}/val/images", f"dataset.val.instance_json={root}/val/annotations.json"]
    return overrides


@pytest.fixture(scope="module")
def archived_data(tmp_path_factory):
    from model.data import write_synthetic_dataset

    out = tmp_path_factory.mktemp("synthetic_archives")
    write_synthetic_dataset(out, num_images=8, size=(128, 128), seed=0, archives=True)
    return out


def test_a_folder_in_a_bucket_is_downloaded_once_and_again_when_it_changes(s3, bucket, tmp_path, monkeypatch, archived_data):
    upload(s3, bucket, archived_data / "val" / "images", "images")
    folder = resolve_dir(f"s3://{bucket}/images/", tmp_path / "cache")
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in (archived_data / "val" / "images").iterdir())
    assert (folder / "000008.png").read_bytes() == (archived_data / "val" / "images" / "000008.png").read_bytes()

    import s3fs

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    with monkeypatch.context() as patch:
        patch.setattr(s3fs.S3FileSystem, "get", no_download)
        assert resolve_dir(f"s3://{bucket}/images", tmp_path / "cache") == folder

    s3.client().put_object(Bucket=bucket, Key="images/000008.png", Body=b"changed")
    changed = resolve_dir(f"s3://{bucket}/images", tmp_path / "cache")
    assert changed != folder and (changed / "000008.png").read_bytes() == b"changed"


def test_an_archive_and_a_file_in_a_bucket_resolve_to_local_copies(s3, bucket, tmp_path, archived_data):
    upload(s3, bucket, archived_data / "train", "train")
    images = resolve_dir(f"s3://{bucket}/train/images.tar.gz", tmp_path / "cache")
    assert sorted(p.name for p in images.iterdir()) == sorted(p.name for p in (archived_data / "train" / "images").iterdir())
    annotations = resolve_file(f"s3://{bucket}/train/annotations_panoptic.json", tmp_path / "cache")
    assert annotations.read_bytes() == (archived_data / "train" / "annotations_panoptic.json").read_bytes()


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing bucket", "no such bucket"),
        ("missing key", "no such file or folder"),
        ("wrong credentials", "access denied"),
        ("unreachable endpoint", "cannot reach the object store"),
    ],
)
def test_bad_object_storage_is_a_one_line_error_naming_the_uri_before_any_work(s3, bucket, archived_data, tmp_path, monkeypatch, case, expected):
    upload(s3, bucket, archived_data, "data")
    overrides = [*bucket_data_overrides(bucket), f"results_dir={tmp_path / 'results'}"]
    key, uri = "dataset.label_map", f"s3://{bucket}/data/label_map.json"
    if case == "missing bucket":
        uri = "s3://no-such-bucket-here/data/label_map.json"
    elif case == "missing key":
        uri = f"s3://{bucket}/data/no_such_label_map.json"
    elif case == "wrong credentials":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    else:
        overrides.append("automl.s3_endpoint_url=http://127.0.0.1:9")  # the discard port: nothing listens
    started = time.monotonic()
    with pytest.raises(UserError) as error:
        load_spec(SMOKE_SPEC, [*overrides, f"{key}={uri}"], action="train")
    message = str(error.value)
    assert "\n" not in message and expected in message
    assert message.startswith(key) and uri in message
    assert SECRET_KEY not in message and "not-the-secret" not in message
    assert time.monotonic() - started < 30
    assert not (tmp_path / "results").exists()


def test_sweep_storage_that_cannot_be_written_is_refused_before_any_work(s3, bucket, archived_data, tmp_path):
    upload(s3, bucket, archived_data, "data")
    overrides = [*bucket_data_overrides(bucket), f"results_dir={tmp_path / 'results'}", "automl.storage_uri=s3://no-such-bucket-here/sweeps"]
    with pytest.raises(UserError, match=r"^automl.storage_uri: s3://no-such-bucket-here/sweeps: no such bucket"):
        load_spec(SMOKE_SPEC, overrides, action="train")


def test_results_dir_must_be_a_local_folder(smoke_spec):
    with pytest.raises(UserError, match="results_dir: s3://bucket/results is a URI; expected a local folder.*automl.storage_uri"):
        smoke_spec("results_dir=s3://bucket/results")


def _keys(s3, bucket: str, prefix: str = "") -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _objects(s3, bucket: str) -> dict[str, bytes]:
    client = s3.client()
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in _keys(s3, bucket)}


def _launch(s3, bucket: str, results: Path, *args: str) -> subprocess.Popen:
    overrides = [
        *bucket_data_overrides(bucket), f"results_dir={results}", f"automl.storage_uri=s3://{bucket}/sweeps", f"automl.s3_endpoint_url={s3.endpoint_url}",
        "automl.num_samples=2", "automl.max_concurrent=1", "automl.max_epochs=2", "train.iters_per_epoch=1", "train.validation_interval=1", "automl.grace_period=2",
    ]
    # Only the credentials come from the environment; the endpoint comes from the spec.
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL")}
    return subprocess.Popen(
        [sys.executable, "-m", "automl.cli", "launch", "-e", str(SMOKE_SPEC), *overrides, *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env,
    )


def test_a_sweep_with_data_and_storage_in_a_bucket_resumes_and_keeps_its_artifacts_there(s3, bucket, archived_data, tmp_path):
    upload(s3, bucket, archived_data, "data")
    results = tmp_path / "results"
    uri = f"sqlite:///{results / 'mlflow.db'}"

    first = _launch(s3, bucket, results)
    deadline = time.monotonic() + 240
    while first.poll() is None and time.monotonic() < deadline and not any("checkpoint_" in key for key in _keys(s3, bucket, "sweeps/")):
        time.sleep(1)
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C once the first trial has a checkpoint in the bucket (of 2 epochs x 2 trials)
    first_output = first.communicate(timeout=120)[0]
    assert first.returncode == 130, first_output

    second = _launch(s3, bucket, results, "--resume")
    second_output = second.communicate(timeout=300)[0]
    assert second.returncode == 0, second_output

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("synthetic_smoke")
    assert experiment.artifact_location == f"s3://{bucket}/sweeps/mlartifacts"
    [parent] = client.search_runs([experiment.experiment_id], "tags.`automl.policy` = 'on'")
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert parent.info.status == "FINISHED" and len(children) == 2 and all(r.info.status == "FINISHED" for r in children)

    stored = _objects(s3, bucket)
    artifacts = parent.info.artifact_uri.removeprefix(f"s3://{bucket}/")
    assert artifacts.startswith("sweeps/mlartifacts/")
    assert f"{artifacts}/best/mask2former_model_best.pth" in stored and f"{artifacts}/spec/synthetic_smoke.yaml" in stored, sorted(stored)
    assert sum(key.startswith("sweeps/synthetic_smoke/") and key.endswith(f"/{CHECKPOINT_FILE}") for key in stored) >= 2
    assert any(p.name.startswith("remote-") for p in (results / "cache").iterdir())  # data came from the bucket

    # The secret is nowhere: not in the output, MLflow's params and tags, local files or stored objects.
    assert SECRET_KEY not in first_output + second_output
    for run in [parent, *children]:
        assert not any(SECRET_KEY in str(v) for v in [*run.data.params.values(), *run.data.tags.values()])
    assert not [p for p in results.rglob("*") if p.is_file() and SECRET_KEY.encode() in p.read_bytes()]
    assert not [key for key, body in stored.items() if SECRET_KEY.encode() in body]
