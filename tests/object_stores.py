"""Local object-store servers for tests, started as real processes: moto's S3 server and
gcp-storage-emulator's GCS server, each on a free port, found by the clients the standard way
(`AWS_ENDPOINT_URL` + AWS keys and region; `STORAGE_EMULATOR_HOST`).

`python tests/object_stores.py gcs PORT BUCKET` runs the GCS emulator with one bucket. Its
HTTP server is single-threaded and listens with Python's default backlog of 5 connections;
gcsfs opens many at once (concurrent range reads), the kernel drops the connections past the
backlog and the client retries each after a second. The launcher raises the backlog; the
emulator itself is unchanged.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Iterator

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, what: str) -> None:
  deadline = time.time() + 60
  while time.time() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f"{what} exited with {proc.returncode}")
    try:
      urllib.request.urlopen(url, timeout=2)
      return
    except urllib.error.HTTPError:
      return  # answering, even if not this path
    except OSError:
      time.sleep(0.2)
  raise RuntimeError(f"{what} did not start in 60 s")


@contextlib.contextmanager
def server(kind: str, bucket: str, log_dir: str) -> Iterator[tuple[str, dict[str, str]]]:
  """('s3://BUCKET' or 'gs://BUCKET', environment for the clients) while the server runs."""
  port = free_port()
  log = open(os.path.join(log_dir, f"{kind}-server.log"), "w")
  if kind == "s3":
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
  else:
    cmd = [sys.executable, os.path.abspath(__file__), "gcs", str(port), bucket]
    env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}
  proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
  try:
    _wait_until_up(f"http://127.0.0.1:{port}/", proc, f"the {kind} server")
    if kind == "s3":
      import boto3  # pylint: disable=g-import-not-at-top - moto's dependency, tests only
      boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                   aws_access_key_id="testing",
                   aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    yield f"{'s3' if kind == 's3' else 'gs'}://{bucket}", env
  finally:
    proc.kill()
    proc.wait()
    log.close()


def _run_gcs(port: int, bucket: str) -> None:
  from http import server as http_server  # pylint: disable=g-import-not-at-top
  http_server.HTTPServer.request_queue_size = 1024
  from gcp_storage_emulator.server import create_server  # pylint: disable=g-import-not-at-top
  create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
  _run_gcs(int(sys.argv[2]), sys.argv[3])
