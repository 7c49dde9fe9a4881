"""Object storage for the platform: the S3 endpoint, early checks of every URI, the sweep's storage filesystem.

Data paths, `automl.storage_uri` (where Ray Tune keeps trials' checkpoints and results) and MLflow
artifacts may live in object storage: `s3://bucket/...` or any other fsspec URI. Credentials are
never part of the spec: the storage libraries read them from their usual places
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, ~/.aws, an instance role).
`automl.s3_endpoint_url` points every library at an S3-compatible store (MinIO, SeaweedFS, Ceph)
through the environment variables each of them reads.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pyarrow.fs

from model.data.files import STORAGE_ERRORS, is_remote, remote_filesystem, storage_error
from model.errors import UserError

# botocore (so s3fs, boto3 and pyarrow's S3) reads the first; MLflow's S3 artifact store the second.
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL")
# Checks before a run must fail in seconds, not after s3fs's and botocore's retries with backoff.
_CHECK_OPTIONS = {"s3": {"config_kwargs": {"connect_timeout": 5, "read_timeout": 20, "retries": {"max_attempts": 1}}}}


def use_endpoint(url: str) -> None:
    """Point this process's S3 clients, and the processes it starts, at `url` (nothing when empty)."""
    if url:
        for name in ENDPOINT_VARIABLES:
            os.environ[name] = url


def worker_env() -> dict[str, str]:
    """The endpoint variables for processes Ray starts on other machines (credentials stay with each node)."""
    return {name: os.environ[name] for name in ENDPOINT_VARIABLES if name in os.environ}


def _checking_filesystem(uri: str) -> tuple[Any, str]:
    protocol = uri.split("://", 1)[0]
    return remote_filesystem(uri, skip_instance_cache=True, **_CHECK_OPTIONS.get(protocol, {}))


def check_uri(uri: str, key: str) -> None:
    """Raise a one-line UserError naming `key` and `uri` when the object or folder cannot be read
    (no such bucket or key, refused credentials, unreachable endpoint)."""
    fs, path = _checking_filesystem(uri)
    try:
        fs.info(path)
    except STORAGE_ERRORS as e:
        raise UserError(f"{key}: {storage_error(uri, e)}") from None


def check_writable(uri: str, key: str) -> None:
    """Raise a one-line UserError when nothing can be written under `uri` (writes and deletes a marker)."""
    fs, path = _checking_filesystem(uri)
    marker = f"{path.rstrip('/')}/.automl-write-check-{uuid.uuid4().hex}"
    try:
        fs.pipe_file(marker, b"")
        fs.rm_file(marker)
    except STORAGE_ERRORS as e:
        raise UserError(f"{key}: {storage_error(uri, e)}") from None


def sweep_filesystem(storage: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """Ray Tune's (storage_filesystem, storage_path) for a local folder or an fsspec URI."""
    if not is_remote(storage):
        return pyarrow.fs.LocalFileSystem(), os.path.abspath(storage)
    fs, path = remote_filesystem(storage)  # pickled to the trials by its options only: no credentials
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), path.rstrip("/")


def exists(filesystem: pyarrow.fs.FileSystem, path: str) -> bool:
    return filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound

