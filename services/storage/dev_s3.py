"""A throwaway S3 server on loopback (moto's server mode) for tests, the benchmark and local trials.

Production runs MinIO (k8s manifests); no MinIO binary can be installed everywhere, moto's can (``moto[server]``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

ACCESS_KEY = "claas-dev"
SECRET_KEY = "claas-dev-secret"
REGION = "us-east-1"


@dataclass(frozen=True)
class DevS3:
    endpoint: str

    def fields(self, bucket: str) -> dict[str, str]:
        """``ObjectStoreSettings`` fields pointing an object store at ``bucket`` of this server."""
        return {
            "store_url": f"s3://{bucket}",
            "s3_endpoint": self.endpoint,
            "s3_access_key": ACCESS_KEY,
            "s3_secret_key": SECRET_KEY,
            "s3_region": REGION,
        }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(port: int, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"moto server not listening on port {port} after {timeout_s:.0f}s")


@contextmanager
def dev_s3_server(timeout_s: float = 30.0) -> Iterator[DevS3]:
    """Run ``python -m moto.server`` on a free loopback port until the block ends."""
    port = _free_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_listening(port, process, timeout_s)
        yield DevS3(endpoint=f"127.0.0.1:{port}")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
